//! The Hobbes wire protocol and data model.
//!
//! Everything that crosses a process boundary is defined here: frames on a Unix
//! socket ([`frame`]), the messages carried in them ([`msg`], [`control`]), the
//! records of the Node Information Service ([`model`]) and the enclave
//! description users write as XML ([`spec`]).

#![deny(missing_docs)]

pub mod composition;
pub mod control;
pub mod fdpass;
pub mod frame;
pub mod model;
pub mod mpi_env;
pub mod msg;
pub mod slurm;
pub mod spec;
pub mod xemem_table;
pub mod xpmem_as;

pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME_LEN, PROTOCOL_VERSION};

/// Environment variable naming the enclave a process runs in.
pub const ENV_ENCLAVE_ID: &str = "HOBBES_ENCLAVE_ID";
/// Environment variable naming the app a process belongs to.
pub const ENV_APP_ID: &str = "HOBBES_APP_ID";
/// Environment variable giving the path of the daemon's client socket
/// (`<state>/leviathan.sock`, the one `hobbes` and the libraries use).
pub const ENV_SOCKET: &str = "HOBBES_SOCKET";
/// Environment variable giving the directory of the Node Information Service
/// this process should read (an enclave reads its own replica).
pub const ENV_NIS: &str = "HOBBES_NIS";
/// Environment variable overriding the state directory.
pub const ENV_STATE_DIR: &str = "HOBBES_STATE_DIR";

/// Serde helper: byte buffers as base64 strings in JSON.
pub mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Write `bytes` as one standard (padded) base64 string.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Read a standard base64 string back into bytes; bad base64 is a decode error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
