//! The crate's only `unsafe`: safe wrappers over the plain C functions of
//! `csrc/pmix_glue.c`, and the event callback libpmix's progress thread calls.
//!
//! Each wrapper converts Rust strings to C strings, calls one `hp_*`
//! function, and turns a PMIx status into a [`PmixError::Call`] naming the
//! PMIx call and `PMIx_Error_string`. Built without libpmix
//! (`not(cfg(hobbes_pmix))`) every wrapper returns
//! [`PmixError::Unavailable`].

/// One application of a job, as the C side takes it.
pub(crate) struct AppSpec<'a> {
    pub appnum: u32,
    pub first_rank: u32,
    pub np: u32,
    pub argv0: &'a str,
    pub cwd: Option<&'a str>,
}

#[cfg(hobbes_pmix)]
mod imp {
    use super::AppSpec;
    use crate::registry::RawEvent;
    use crate::PmixError;
    use std::ffi::{c_char, c_int, CStr, CString};
    use std::path::Path;

    /// `hp_event_fn` in pmix_glue.c.
    type EventFn = extern "C" fn(
        kind: c_int,
        nspace: *const c_char,
        rank: u32,
        status: c_int,
        msg: *const c_char,
        nprocs: usize,
        wildcard: c_int,
        bytes: usize,
    );

    extern "C" {
        fn hp_error_string(status: c_int) -> *const c_char;
        fn hp_init(tmpdir: *const c_char, server_nspace: *const c_char, cb: EventFn) -> c_int;
        fn hp_finalize() -> c_int;
        fn hp_register_nspace(
            nspace: *const c_char,
            hostname: *const c_char,
            tmpdir: *const c_char,
            nsdir: *const c_char,
            napps: u32,
            app_num: *const u32,
            app_first: *const u32,
            app_np: *const u32,
            app_argv0: *const *const c_char,
            app_cwd: *const *const c_char,
        ) -> c_int;
        fn hp_deregister_nspace(nspace: *const c_char) -> c_int;
        fn hp_register_client(nspace: *const c_char, rank: u32, uid: u32, gid: u32) -> c_int;
        fn hp_deregister_client(nspace: *const c_char, rank: u32) -> c_int;
        fn hp_setup_fork(nspace: *const c_char, rank: u32, env_out: *mut *mut *mut c_char)
            -> c_int;
        fn hp_free_env(env: *mut *mut c_char);
    }

    /// Whether this build links libpmix.
    pub(crate) const AVAILABLE: bool = true;

    /// `PMIx_Error_string(status)`.
    pub(crate) fn error_string(status: i32) -> String {
        // SAFETY: PMIx_Error_string takes any int and returns a pointer to a
        // static string (or NULL, checked), which we copy at once.
        let p = unsafe { hp_error_string(status) };
        if p.is_null() {
            return format!("PMIx status {status}");
        }
        // SAFETY: p is a non-NULL, NUL-terminated static string from libpmix.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn check(call: &'static str, status: c_int) -> Result<(), PmixError> {
        if status == 0 {
            Ok(())
        } else {
            Err(PmixError::Call {
                call,
                status,
                name: error_string(status),
            })
        }
    }

    fn cstring(what: &str, s: &str) -> Result<CString, PmixError> {
        CString::new(s).map_err(|_| PmixError::Other(format!("{what} {s:?} contains a NUL byte")))
    }

    /// Copy a C string the callback was given; NULL is "".
    ///
    /// # Safety
    /// `p` is NULL or a NUL-terminated string valid for the call.
    unsafe fn lossy(p: *const c_char) -> String {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: the caller guarantees p is NUL-terminated and valid.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    }

    /// Runs on libpmix's progress thread: copy the event and hand it to the
    /// registry, which only looks up the job and `Sender::send`s.
    extern "C" fn on_event(
        kind: c_int,
        nspace: *const c_char,
        rank: u32,
        status: c_int,
        msg: *const c_char,
        nprocs: usize,
        wildcard: c_int,
        bytes: usize,
    ) {
        // SAFETY: pmix_glue.c passes the pmix_proc_t's nspace (a
        // NUL-terminated char array) and the abort message (NUL-terminated or
        // NULL); both outlive this call.
        let (nspace, message) = unsafe { (lossy(nspace), lossy(msg)) };
        crate::dispatch(RawEvent {
            kind,
            nspace,
            rank,
            status,
            message,
            nprocs,
            wildcard: wildcard != 0,
            bytes,
        });
    }

    fn path_cstring(path: &Path) -> Result<CString, PmixError> {
        use std::os::unix::ffi::OsStrExt;
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| PmixError::Other(format!("path {} contains a NUL byte", path.display())))
    }

    pub(crate) fn init(tmpdir: &Path, server_nspace: &str) -> Result<(), PmixError> {
        let dir = path_cstring(tmpdir)?;
        let ns = cstring("server nspace", server_nspace)?;
        // SAFETY: both strings are valid for the call (libpmix copies them);
        // on_event has the signature hp_event_fn expects and never unwinds.
        check("PMIx_server_init", unsafe {
            hp_init(dir.as_ptr(), ns.as_ptr(), on_event)
        })
    }

    pub(crate) fn finalize() -> Result<(), PmixError> {
        // SAFETY: called once, when the last Server handle goes, from a host
        // thread (never the progress thread).
        check("PMIx_server_finalize", unsafe { hp_finalize() })
    }

    pub(crate) fn register_nspace(
        nspace: &str,
        hostname: &str,
        tmpdir: &Path,
        nsdir: &Path,
        apps: &[AppSpec<'_>],
    ) -> Result<(), PmixError> {
        let ns = cstring("nspace", nspace)?;
        let host = cstring("hostname", hostname)?;
        let tmpdir = path_cstring(tmpdir)?;
        let nsdir = path_cstring(nsdir)?;
        let nums: Vec<u32> = apps.iter().map(|a| a.appnum).collect();
        let firsts: Vec<u32> = apps.iter().map(|a| a.first_rank).collect();
        let nps: Vec<u32> = apps.iter().map(|a| a.np).collect();
        let argv0s = apps
            .iter()
            .map(|a| cstring("argv0", a.argv0))
            .collect::<Result<Vec<_>, _>>()?;
        let cwds = apps
            .iter()
            .map(|a| a.cwd.map(|c| cstring("cwd", c)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let argv0_ptrs: Vec<*const c_char> = argv0s.iter().map(|s| s.as_ptr()).collect();
        let cwd_ptrs: Vec<*const c_char> = cwds
            .iter()
            .map(|c| c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()))
            .collect();
        let napps = u32::try_from(apps.len())
            .map_err(|_| PmixError::Other(format!("{} apps are too many", apps.len())))?;
        // SAFETY: every array has napps elements and outlives the call, which
        // waits for libpmix to finish (libpmix copies what it keeps); the
        // strings are NUL-terminated; cwd entries may be NULL (documented).
        check("PMIx_server_register_nspace", unsafe {
            hp_register_nspace(
                ns.as_ptr(),
                host.as_ptr(),
                tmpdir.as_ptr(),
                nsdir.as_ptr(),
                napps,
                nums.as_ptr(),
                firsts.as_ptr(),
                nps.as_ptr(),
                argv0_ptrs.as_ptr(),
                cwd_ptrs.as_ptr(),
            )
        })
    }

    pub(crate) fn deregister_nspace(nspace: &str) -> Result<(), PmixError> {
        let ns = cstring("nspace", nspace)?;
        // SAFETY: ns is valid for the call, which waits for completion.
        check("PMIx_server_deregister_nspace", unsafe {
            hp_deregister_nspace(ns.as_ptr())
        })
    }

    pub(crate) fn register_client(
        nspace: &str,
        rank: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(), PmixError> {
        let ns = cstring("nspace", nspace)?;
        // SAFETY: ns is valid for the call, which waits for completion.
        check("PMIx_server_register_client", unsafe {
            hp_register_client(ns.as_ptr(), rank, uid, gid)
        })
    }

    pub(crate) fn deregister_client(nspace: &str, rank: u32) -> Result<(), PmixError> {
        let ns = cstring("nspace", nspace)?;
        // SAFETY: ns is valid for the call, which waits for completion.
        check("PMIx_server_deregister_client", unsafe {
            hp_deregister_client(ns.as_ptr(), rank)
        })
    }

    /// `PMIx_server_setup_fork` on an empty environment: the `NAME=VALUE`
    /// strings it adds.
    pub(crate) fn setup_fork(nspace: &str, rank: u32) -> Result<Vec<String>, PmixError> {
        let ns = cstring("nspace", nspace)?;
        let mut env: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: ns is valid; env is a valid out-pointer that hp_setup_fork
        // sets to NULL or a NULL-terminated array it allocated.
        let rc = unsafe { hp_setup_fork(ns.as_ptr(), rank, &mut env) };
        let mut out = Vec::new();
        if !env.is_null() {
            let mut i = 0;
            loop {
                // SAFETY: env is NULL-terminated, so every index up to and
                // including the terminator is in bounds.
                let p = unsafe { *env.add(i) };
                if p.is_null() {
                    break;
                }
                // SAFETY: each entry is a NUL-terminated string libpmix made.
                out.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
                i += 1;
            }
            // SAFETY: env came from hp_setup_fork and is freed once, here.
            unsafe { hp_free_env(env) };
        }
        check("PMIx_server_setup_fork", rc)?;
        Ok(out)
    }
}

#[cfg(not(hobbes_pmix))]
mod imp {
    use super::AppSpec;
    use crate::PmixError;
    use std::path::Path;

    pub(crate) const AVAILABLE: bool = false;

    fn unavailable<T>() -> Result<T, PmixError> {
        Err(PmixError::Unavailable(crate::NO_LIBPMIX.to_string()))
    }

    pub(crate) fn init(_: &Path, _: &str) -> Result<(), PmixError> {
        unavailable()
    }
    pub(crate) fn finalize() -> Result<(), PmixError> {
        unavailable()
    }
    pub(crate) fn register_nspace(
        _: &str,
        _: &str,
        _: &Path,
        _: &Path,
        _: &[AppSpec<'_>],
    ) -> Result<(), PmixError> {
        unavailable()
    }
    pub(crate) fn deregister_nspace(_: &str) -> Result<(), PmixError> {
        unavailable()
    }
    pub(crate) fn register_client(_: &str, _: u32, _: u32, _: u32) -> Result<(), PmixError> {
        unavailable()
    }
    pub(crate) fn deregister_client(_: &str, _: u32) -> Result<(), PmixError> {
        unavailable()
    }
    pub(crate) fn setup_fork(_: &str, _: u32) -> Result<Vec<String>, PmixError> {
        unavailable()
    }
}

pub(crate) use imp::*;
