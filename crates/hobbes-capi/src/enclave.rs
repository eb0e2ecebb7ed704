//! Enclave queries (read from the NIS directly) and ping.

use std::os::raw::{c_char, c_int};

use hobbes_client::EnclaveConn;
use hobbes_proto::model::{EnclaveId, EnclaveRecord};
use hobbes_proto::msg::EnclaveRef;

use crate::error::{guard, Error, Result};
use crate::types::{
    name_array, CEnclaveState, CEnclaveType, EnclaveInfo, HobbesId, HOBBES_INVALID_ID,
};
use crate::{daemon, ffi, nis};

/// The enclave's record, or `ENOENT`.
pub(crate) fn record(id: EnclaveId) -> Result<EnclaveRecord> {
    nis()?
        .enclave(id)?
        .ok_or_else(|| Error::not_found(format!("no enclave with id {id}")))
}

fn info(e: &EnclaveRecord) -> EnclaveInfo {
    EnclaveInfo {
        id: e.id,
        parent: e.parent,
        name: name_array(&e.name),
        r#type: e.kind.into(),
        state: e.state.into(),
        num_cores: u32::try_from(e.cores.len()).unwrap_or(u32::MAX),
        mem_bytes: e.mem_bytes,
    }
}

/// All enclaves, in id order, as a malloc'd array of `*num_enclaves` entries
/// (free it with `free()`); NULL on failure.
///
/// # Safety
/// `num_enclaves` is NULL (rejected with `EINVAL`) or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_get_enclave_list(num_enclaves: *mut c_int) -> *mut EnclaveInfo {
    guard("hobbes_get_enclave_list", std::ptr::null_mut(), || {
        if num_enclaves.is_null() {
            return Err(Error::invalid("num_enclaves is NULL"));
        }
        // SAFETY: non-NULL and valid for writes per this function's contract.
        unsafe { ffi::write_opt(num_enclaves, 0) };
        let list: Vec<EnclaveInfo> = nis()?.enclaves()?.iter().map(info).collect();
        // SAFETY: as above.
        unsafe { ffi::malloc_list(&list, num_enclaves) }
    })
}

/// The enclave's state, or `ENCLAVE_INVALID` (-1) on failure.
/// Read from the NIS. On failure sets errno: ENOENT for an unknown id,
/// ECONNREFUSED when no daemon has published a NIS.
#[no_mangle]
pub extern "C" fn hobbes_get_enclave_state(enclave_id: HobbesId) -> CEnclaveState {
    guard("hobbes_get_enclave_state", CEnclaveState::Invalid, || {
        Ok(record(enclave_id)?.state.into())
    })
}

/// The enclave's kind (host, native or lwk), or `INVALID_ENCLAVE` (-1) on
/// failure. Read from the NIS. On failure sets errno: ENOENT for an unknown id,
/// ECONNREFUSED when no daemon has published a NIS.
#[no_mangle]
pub extern "C" fn hobbes_get_enclave_type(enclave_id: HobbesId) -> CEnclaveType {
    guard("hobbes_get_enclave_type", CEnclaveType::Invalid, || {
        Ok(record(enclave_id)?.kind.into())
    })
}

/// The id of the enclave that created this one (the host, 0, for every
/// enclave today), or `HOBBES_INVALID_ID`. Read from the NIS. On failure sets errno: ENOENT for an unknown id,
/// ECONNREFUSED when no daemon has published a NIS.
#[no_mangle]
pub extern "C" fn hobbes_get_enclave_parent(enclave_id: HobbesId) -> HobbesId {
    guard("hobbes_get_enclave_parent", HOBBES_INVALID_ID, || {
        Ok(record(enclave_id)?.parent)
    })
}

/// The enclave's name, malloc'd (free it), or NULL.
#[no_mangle]
pub extern "C" fn hobbes_get_enclave_name(enclave_id: HobbesId) -> *mut c_char {
    guard("hobbes_get_enclave_name", std::ptr::null_mut(), || {
        ffi::malloc_str(&record(enclave_id)?.name)
    })
}

/// The id of the enclave called `name`, or `HOBBES_INVALID_ID` (`ENOENT`).
///
/// # Safety
/// `name` is NULL (rejected with `EINVAL`) or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn hobbes_get_enclave_id(name: *const c_char) -> HobbesId {
    guard("hobbes_get_enclave_id", HOBBES_INVALID_ID, || {
        // SAFETY: per this function's contract.
        let name = unsafe { ffi::str_arg(name, "enclave name") }?;
        nis()?
            .enclave_by_name(name)?
            .map(|e| e.id)
            .ok_or_else(|| Error::not_found(format!("no enclave named {name:?}")))
    })
}

/// One round trip to the enclave's control process, straight to its socket
/// (the host, which has none, is pinged through `leviathan`). Writes the
/// round-trip time in nanoseconds to `rtt_ns` when it is not NULL.
///
/// # Safety
/// `rtt_ns` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_ping_enclave(enclave_id: HobbesId, rtt_ns: *mut u64) -> c_int {
    guard("hobbes_ping_enclave", -1, || {
        let rec = record(enclave_id)?;
        let rtt = if rec.control.unix_socket_path().is_none() {
            daemon()?.ping_via_daemon(EnclaveRef::Id(enclave_id))?
        } else {
            let (answered, rtt) = EnclaveConn::to_enclave(&rec)
                .and_then(|mut conn| conn.ping())
                .map_err(|e| {
                    let e = Error::from(e);
                    Error::new(
                        e.errno,
                        format!("enclave {} ({}): {}", rec.id, rec.name, e.message),
                    )
                })?;
            if answered != enclave_id {
                return Err(Error::new(
                    libc::EPROTO,
                    format!(
                        "{} answered as enclave {answered}, not {enclave_id}",
                        rec.control
                    ),
                ));
            }
            rtt
        };
        let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: per this function's contract.
        unsafe { ffi::write_opt(rtt_ns, nanos) };
        Ok(0)
    })
}

/// The name of an `enclave_state_t` value (`"running"`), a static string
/// the caller must not free; `"invalid"` for any other value. Never fails.
#[no_mangle]
pub extern "C" fn enclave_state_to_str(state: c_int) -> *const c_char {
    guard("enclave_state_to_str", c"invalid".as_ptr(), || {
        Ok(match state {
            0 => c"starting",
            1 => c"running",
            2 => c"crashed",
            3 => c"stopping",
            _ => c"invalid",
        }
        .as_ptr())
    })
}

/// The name of an `enclave_type_t` value (`"host"`, `"native"`, `"lwk"`, `"vm"`), a static
/// string the caller must not free; `"invalid"` for any other value. Never
/// fails.
#[no_mangle]
pub extern "C" fn enclave_type_to_str(kind: c_int) -> *const c_char {
    guard("enclave_type_to_str", c"invalid".as_ptr(), || {
        Ok(match kind {
            0 => c"host",
            1 => c"native",
            2 => c"lwk",
            3 => c"vm",
            _ => c"invalid",
        }
        .as_ptr())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hobbes_proto::model::{EnclaveKind, EnclaveState};
    use std::ffi::CStr;

    fn text(p: *const c_char) -> String {
        // SAFETY: the *_to_str functions return static C strings.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
    }

    #[test]
    fn state_names_match_the_model() {
        use EnclaveState::*;
        for s in [Starting, Running, Crashed, Stopping] {
            assert_eq!(
                text(enclave_state_to_str(CEnclaveState::from(s) as c_int)),
                s.to_string()
            );
        }
        for k in EnclaveKind::ALL {
            assert_eq!(
                text(enclave_type_to_str(CEnclaveType::from(k) as c_int)),
                k.as_str()
            );
        }
        assert_eq!(text(enclave_state_to_str(-1)), "invalid");
        assert_eq!(text(enclave_type_to_str(42)), "invalid");
    }
}
