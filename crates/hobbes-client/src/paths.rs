//! Where things live. The state directory holds:
//!
//! ```text
//! <state>/leviathan.sock      control socket
//! <state>/leviathan.pid       pid + lock (one daemon per state directory)
//! <state>/nis/                Node Information Service (LMDB)
//! <state>/enclaves/<id>/      per enclave: control.sock, nis/ (replica)
//! <state>/apps/<id>/          per app: stdout, stderr
//! ```

use std::path::PathBuf;

use hobbes_proto::{ENV_NIS, ENV_SOCKET, ENV_STATE_DIR};

/// `HOBBES_STATE_DIR`, else `/run/hobbes` for root, else
/// `$XDG_RUNTIME_DIR/hobbes`, else `/tmp/hobbes-<uid>`.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_STATE_DIR).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    default_state_dir()
}

/// The default ignoring `HOBBES_STATE_DIR`.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/hobbes");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("hobbes"),
        None => PathBuf::from(format!("/tmp/hobbes-{uid}")),
    }
}

/// The daemon's client socket in state directory `state_dir`.
pub fn socket_in(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("leviathan.sock")
}

/// The primary NIS environment in state directory `state_dir`.
pub fn nis_in(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("nis")
}

/// `HOBBES_SOCKET`, else the state directory's socket.
pub fn socket() -> PathBuf {
    match std::env::var_os(ENV_SOCKET).filter(|v| !v.is_empty()) {
        Some(s) => PathBuf::from(s),
        None => socket_in(&state_dir()),
    }
}

/// `HOBBES_NIS`, else the state directory's NIS.
pub fn nis() -> PathBuf {
    match std::env::var_os(ENV_NIS).filter(|v| !v.is_empty()) {
        Some(s) => PathBuf::from(s),
        None => nis_in(&state_dir()),
    }
}
