//! `libhobbes`: the C ABI of the Hobbes client library, declared in
//! `include/hobbes.h`.
//!
//! Queries read the Node Information Service (LMDB) directly, without IPC;
//! control calls (launch, kill, wait) go to `leviathan`'s socket, pings to the
//! enclave's control process. Every export returns -1 / `HOBBES_INVALID_ID` /
//! NULL on failure, sets `errno` and keeps a message for `hobbes_last_error()`,
//! and never lets a panic unwind into C.
//!
//! Raw pointers are only touched in `ffi.rs`; failures are reported in `error.rs`.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::os::raw::{c_char, c_int};
use std::sync::Mutex;

use hobbes_client::{Client, NisReader};

pub mod app;
pub mod enclave;
mod error;
mod ffi;
pub mod types;

use error::{guard, Result};
use types::{HobbesId, HOBBES_INVALID_ID};

/// The NIS reader opened by `hobbes_client_init` (or by the first query).
static NIS: Mutex<Option<NisReader>> = Mutex::new(None);

/// The NIS this process reads: `HOBBES_NIS` (an enclave's replica), else the
/// state directory's (`HOBBES_STATE_DIR`, default `/run/hobbes` for root).
fn nis() -> Result<NisReader> {
    let mut cached = NIS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(reader) = &*cached {
        return Ok(reader.clone());
    }
    let reader = hobbes_client::nis()?;
    *cached = Some(reader.clone());
    Ok(reader)
}

/// A fresh connection to `leviathan` (`HOBBES_SOCKET`, else the state
/// directory's socket). One per call, so calls from several threads and a
/// blocking `hobbes_wait_app` never share a stream.
fn daemon() -> Result<Client> {
    Ok(Client::connect_default()?)
}

/// Open the Node Information Service and check that a daemon has published
/// the node in it. Returns 0, or -1 with errno `ECONNREFUSED` when there is no
/// NIS (no `leviathan` ever ran with this state directory) or it has no header
/// yet. Queries work without it (they open the NIS on first use); calling it
/// first reports a missing daemon early.
#[no_mangle]
pub extern "C" fn hobbes_client_init() -> c_int {
    guard("hobbes_client_init", -1, || {
        nis()?.header()?;
        Ok(0)
    })
}

/// Forget the NIS opened by `hobbes_client_init`. Always 0.
#[no_mangle]
pub extern "C" fn hobbes_client_deinit() -> c_int {
    guard("hobbes_client_deinit", -1, || {
        NIS.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(0)
    })
}

/// True when a NIS with a header can be read (`hobbes_client_init` would succeed).
#[no_mangle]
pub extern "C" fn hobbes_is_available() -> bool {
    guard("hobbes_is_available", false, || Ok(nis()?.header().is_ok()))
}

/// `HOBBES_ENCLAVE_ID`, or 0 (the host) outside any enclave.
#[no_mangle]
pub extern "C" fn hobbes_get_my_enclave_id() -> HobbesId {
    guard("hobbes_get_my_enclave_id", HOBBES_INVALID_ID, || {
        Ok(hobbes_client::my_enclave_id())
    })
}

/// `HOBBES_APP_ID`, or `HOBBES_INVALID_ID` for a process Hobbes did not launch
/// (errno is left alone: this is not a failure).
#[no_mangle]
pub extern "C" fn hobbes_get_my_app_id() -> HobbesId {
    guard("hobbes_get_my_app_id", HOBBES_INVALID_ID, || {
        Ok(hobbes_client::my_app_id().unwrap_or(HOBBES_INVALID_ID))
    })
}

/// Name of the enclave this process runs in (malloc'd; free it), or NULL.
#[no_mangle]
pub extern "C" fn hobbes_get_my_enclave_name() -> *mut c_char {
    enclave::hobbes_get_enclave_name(hobbes_client::my_enclave_id())
}

/// The message of this thread's last failed call ("" if none). Valid until
/// the next failing call on the same thread; successful calls keep it, as
/// they keep errno.
#[no_mangle]
pub extern "C" fn hobbes_last_error() -> *const c_char {
    guard(
        "hobbes_last_error",
        c"".as_ptr(),
        || Ok(error::last_error()),
    )
}
