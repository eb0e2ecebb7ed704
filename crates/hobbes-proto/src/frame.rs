//! Length-prefixed, versioned frames.
//!
//! ```text
//! 0      3        4                8
//! +------+--------+----------------+----------------------+
//! | "HBS"| version| payload length | payload (JSON, UTF-8) |
//! +------+--------+----------------+----------------------+
//!            u8      u32 little-endian
//! ```
//!
//! A reader checks the magic, the version and the length before it allocates
//! anything, so a malicious peer cannot make it allocate more than
//! [`MAX_FRAME_LEN`] bytes.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Frame magic: every frame starts with these bytes.
pub const MAGIC: [u8; 3] = *b"HBS";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest payload accepted (4 MiB). File transfers are chunked below this.
pub const MAX_FRAME_LEN: u32 = 4 << 20;
/// Size of the frame header.
pub const HEADER_LEN: usize = 8;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// End of stream before the first byte of a header: a clean hang-up.
    #[error("peer closed the connection")]
    Closed,
    /// The first 3 bytes were not `HBS` (the bytes received). Fatal.
    #[error("bad frame magic {0:02x?}: the peer does not speak the Hobbes protocol")]
    BadMagic([u8; 3]),
    /// The version byte was not [`PROTOCOL_VERSION`]. Fatal.
    #[error("unsupported protocol version {got} (this side speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// The header announced more than [`MAX_FRAME_LEN`] bytes (refused before
    /// allocating), or a message to send encodes larger. Fatal.
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge {
        /// The payload length, bytes (saturated at `u32::MAX` when sending).
        len: u32,
    },
    /// The payload is not the expected JSON message, or a frame was cut short
    /// (the text says which). Only this error leaves the connection usable,
    /// and only for a well-formed frame.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// More than [`crate::fdpass::MAX_FDS`] descriptors on one frame (all
    /// received ones are closed).
    #[error("{got} descriptors attached to one frame; a frame carries at most {max}")]
    TooManyFds {
        /// Descriptors attached (or asked to be sent).
        got: usize,
        /// The limit, [`crate::fdpass::MAX_FDS`].
        max: usize,
    },
    /// No frame started within this idle limit (`client_idle_timeout_s`).
    #[error("no request within {0:?}: idle connection closed")]
    Idle(std::time::Duration),
    /// A frame's first byte came but not its last within this limit
    /// (`request_timeout_ms`).
    #[error("frame not completed within {0:?} of its first byte")]
    Stalled(std::time::Duration),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// True when the connection can no longer be used (as opposed to one bad message).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Malformed(_))
    }
}

/// Parse a frame header: returns the payload length.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Result<u32, FrameError> {
    let magic = [header[0], header[1], header[2]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if header[3] != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: header[3] });
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Encode a message into a complete frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let payload = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or(FrameError::TooLarge {
            len: payload.len().min(u32::MAX as usize) as u32,
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decode one message from a complete frame held in memory (header included).
/// Used by fuzzers and by callers that already buffered a frame.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let header: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| FrameError::Malformed("short frame header".into()))?;
    let len = decode_header(header)? as usize;
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != len {
        return Err(FrameError::Malformed(format!(
            "header says {len} payload bytes, frame has {}",
            payload.len()
        )));
    }
    decode_payload(payload)
}

/// Decode a payload (without header).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Write one message as a frame. One `write_all` so frames from different
/// threads holding the same lock never interleave.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let frame = encode(msg)?;
    w.write_all(&frame)?;
    Ok(())
}

/// Read one frame's payload. A clean end of stream before the header is
/// [`FrameError::Closed`].
pub fn read_payload<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Malformed("truncated frame header".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = decode_header(&header)? as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Malformed("truncated frame payload".into())
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(payload)
}

/// Read and decode one message.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let payload = read_payload(r)?;
    decode_payload(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Request, Response};
    use proptest::prelude::*;

    #[test]
    fn round_trip_request() {
        let frame = encode(&Request::ListEnclaves).unwrap();
        let back: Request = decode(&frame).unwrap();
        assert_eq!(back, Request::ListEnclaves);
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut frame = encode(&Request::Status).unwrap();
        frame[4..8].copy_from_slice(&(MAX_FRAME_LEN + 1).to_le_bytes());
        let err = read_payload(&mut &frame[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn wrong_version_is_named() {
        let mut frame = encode(&Request::Status).unwrap();
        frame[3] = 9;
        let err = decode::<Request>(&frame).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn garbage_is_bad_magic() {
        let err = read_payload(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).unwrap_err();
        assert!(matches!(err, FrameError::BadMagic(_)));
    }

    #[test]
    fn truncated_payload_is_malformed() {
        let frame = encode(&Request::Status).unwrap();
        let err = read_payload(&mut &frame[..frame.len() - 1]).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    proptest! {
        // The decoder never panics on arbitrary bytes, whatever message type it expects.
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
            let _ = decode::<crate::control::ControlUp>(&bytes);
            let _ = decode::<crate::control::ControlDown>(&bytes);
            let _ = decode::<crate::control::EnclaveRequest>(&bytes);
            let _ = read_payload(&mut &bytes[..]);
        }

        // A valid header followed by arbitrary JSON-ish payload never panics either.
        #[test]
        fn payload_decoder_never_panics(payload in "\\PC{0,200}") {
            let mut frame = Vec::new();
            frame.extend_from_slice(&MAGIC);
            frame.push(PROTOCOL_VERSION);
            frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frame.extend_from_slice(payload.as_bytes());
            let _ = decode::<Request>(&frame);
        }
    }
}
