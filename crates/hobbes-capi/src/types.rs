//! Types shared with C. Each one mirrors a declaration in `include/hobbes.h`;
//! the `c_abi` test checks that sizes and offsets agree.

use std::os::raw::{c_char, c_int};

use hobbes_proto::model::{AppState, EnclaveKind, EnclaveState};

/// `hobbes_id_t`: enclave and app ids are node-global `u64`s.
pub type HobbesId = u64;

/// `HOBBES_INVALID_ID`, returned by id-valued calls on failure.
pub const HOBBES_INVALID_ID: HobbesId = HobbesId::MAX;

/// `HOBBES_NAME_MAX`: size of the name arrays, terminating NUL included.
/// Enclave names (at most 64 bytes) always fit; longer app names are truncated.
pub const HOBBES_NAME_MAX: usize = 128;

/// `enclave_state_t`; the discriminants are part of the ABI.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CEnclaveState {
    /// `ENCLAVE_INVALID`: the error return of `hobbes_get_enclave_state`.
    Invalid = -1,
    /// `ENCLAVE_STARTING`: resources reserved, control process starting.
    Starting = 0,
    /// `ENCLAVE_RUNNING`: the control process attached and heartbeats; apps
    /// may be launched.
    Running = 1,
    /// `ENCLAVE_CRASHED`: heartbeats stopped or the control process died.
    Crashed = 2,
    /// `ENCLAVE_STOPPING`: being torn down.
    Stopping = 3,
}

impl From<EnclaveState> for CEnclaveState {
    fn from(s: EnclaveState) -> Self {
        match s {
            EnclaveState::Starting => Self::Starting,
            EnclaveState::Running => Self::Running,
            EnclaveState::Crashed => Self::Crashed,
            EnclaveState::Stopping => Self::Stopping,
        }
    }
}

/// `enclave_type_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CEnclaveType {
    /// `INVALID_ENCLAVE`: the error return of `hobbes_get_enclave_type`.
    Invalid = -1,
    /// `HOST_ENCLAVE`: the Linux host itself (enclave 0).
    Host = 0,
    /// `NATIVE_ENCLAVE`: a partition of the node's cores and memory with its
    /// own namespaces.
    Native = 1,
    /// `LWK_ENCLAVE`: a lightweight kernel on KVM on cores of its own (the
    /// original's Kitten enclaves).
    Lwk = 2,
    /// `VM_ENCLAVE`: a Linux virtual machine under QEMU (the original's
    /// Palacios enclaves).
    Vm = 3,
}

impl From<EnclaveKind> for CEnclaveType {
    fn from(k: EnclaveKind) -> Self {
        match k {
            EnclaveKind::Host => Self::Host,
            EnclaveKind::Native => Self::Native,
            EnclaveKind::Lwk => Self::Lwk,
            EnclaveKind::Vm => Self::Vm,
        }
    }
}

/// `app_state_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CAppState {
    /// `APP_INVALID`: the error return of `hobbes_get_app_state`.
    Invalid = -1,
    /// `APP_STARTING`: recorded, launch sent to the control process, not yet
    /// started.
    Starting = 0,
    /// `APP_RUNNING`: its process runs in the enclave.
    Running = 1,
    /// `APP_EXITED`: exited by itself, with any exit code.
    Exited = 2,
    /// `APP_CRASHED`: killed by a signal (crash, kill, or OOM).
    Crashed = 3,
    /// `APP_LOST`: its enclave went away and its fate is unknown.
    Lost = 4,
    /// `APP_FAILED`: could not be started.
    Failed = 5,
}

impl From<AppState> for CAppState {
    fn from(s: AppState) -> Self {
        match s {
            AppState::Starting => Self::Starting,
            AppState::Running => Self::Running,
            AppState::Exited => Self::Exited,
            AppState::Crashed => Self::Crashed,
            AppState::Lost => Self::Lost,
            AppState::Failed => Self::Failed,
        }
    }
}

/// `struct enclave_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnclaveInfo {
    /// The enclave's node-global id (0 is the host).
    pub id: HobbesId,
    /// The id of the enclave that created it (the host, 0, for now).
    pub parent: HobbesId,
    /// Its name, NUL-terminated (enclave names always fit).
    pub name: [c_char; HOBBES_NAME_MAX],
    /// Its kind: host, native or lwk.
    pub r#type: CEnclaveType,
    /// Its state when the NIS was read.
    pub state: CEnclaveState,
    /// How many cores it holds.
    pub num_cores: u32,
    /// Its memory limit in bytes (the sum of its memory blocks' sizes).
    pub mem_bytes: u64,
}

/// `struct app_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AppInfo {
    /// The app's node-global id.
    pub id: HobbesId,
    /// The enclave it runs (or ran) in.
    pub enclave_id: HobbesId,
    /// Its display name (by default the program's file name), NUL-terminated and
    /// truncated to fit.
    pub name: [c_char; HOBBES_NAME_MAX],
    /// Its state when the NIS was read.
    pub state: CAppState,
    /// Shell-style exit code (code, or 128 + signal); -1 while it has none.
    pub exit_code: c_int,
}

/// Copy `s` into a fixed C name array, truncated at a character boundary
/// and always NUL-terminated.
pub fn name_array(s: &str) -> [c_char; HOBBES_NAME_MAX] {
    let mut out = [0 as c_char; HOBBES_NAME_MAX];
    let mut end = s.len().min(HOBBES_NAME_MAX - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    for (dst, src) in out.iter_mut().zip(&s.as_bytes()[..end]) {
        *dst = *src as c_char;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_truncated_on_char_boundaries() {
        let long = "é".repeat(100);
        let arr = name_array(&long);
        let bytes: Vec<u8> = arr
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        assert_eq!(bytes.len(), 126);
        assert!(std::str::from_utf8(&bytes).is_ok());
        assert_eq!(arr[HOBBES_NAME_MAX - 1], 0);
    }
}
