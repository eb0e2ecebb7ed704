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
    Invalid = -1,
    Starting = 0,
    Running = 1,
    Crashed = 2,
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
    Invalid = -1,
    Host = 0,
    Native = 1,
}

impl From<EnclaveKind> for CEnclaveType {
    fn from(k: EnclaveKind) -> Self {
        match k {
            EnclaveKind::Host => Self::Host,
            EnclaveKind::Native => Self::Native,
        }
    }
}

/// `app_state_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CAppState {
    Invalid = -1,
    Starting = 0,
    Running = 1,
    Exited = 2,
    Crashed = 3,
    Lost = 4,
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
    pub id: HobbesId,
    pub parent: HobbesId,
    pub name: [c_char; HOBBES_NAME_MAX],
    pub r#type: CEnclaveType,
    pub state: CEnclaveState,
    pub num_cores: u32,
    pub mem_bytes: u64,
}

/// `struct app_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AppInfo {
    pub id: HobbesId,
    pub enclave_id: HobbesId,
    pub name: [c_char; HOBBES_NAME_MAX],
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
