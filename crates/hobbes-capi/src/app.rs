//! App queries (read from the NIS directly) and control through `leviathan`.

use std::os::raw::{c_char, c_int};
use std::path::Path;

use hobbes_proto::model::{AppId, AppRecord, AppState};
use hobbes_proto::msg::{EnclaveRef, LaunchSpec};

use crate::error::{guard, Error, Result};
use crate::types::{name_array, AppInfo, CAppState, HobbesId, HOBBES_INVALID_ID};
use crate::{daemon, ffi, nis};

fn record(id: AppId) -> Result<AppRecord> {
    nis()?
        .app(id)?
        .ok_or_else(|| Error::not_found(format!("no app with id {id}")))
}

/// Shell convention (code, or 128 + signal); -1 while the app has no exit status.
fn exit_code(app: &AppRecord) -> c_int {
    app.exit.map_or(-1, |e| e.shell_code())
}

fn info(a: &AppRecord) -> AppInfo {
    AppInfo {
        id: a.id,
        enclave_id: a.enclave,
        name: name_array(&a.name),
        state: a.state.into(),
        exit_code: exit_code(a),
    }
}

/// All apps the NIS records, in id order, as a malloc'd array of `*num_apps`
/// entries (free it with `free()`); NULL on failure.
///
/// # Safety
/// `num_apps` is NULL (rejected with `EINVAL`) or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_get_app_list(num_apps: *mut c_int) -> *mut AppInfo {
    guard("hobbes_get_app_list", std::ptr::null_mut(), || {
        if num_apps.is_null() {
            return Err(Error::invalid("num_apps is NULL"));
        }
        // SAFETY: non-NULL and valid for writes per this function's contract.
        unsafe { ffi::write_opt(num_apps, 0) };
        let list: Vec<AppInfo> = nis()?.apps()?.iter().map(info).collect();
        // SAFETY: as above.
        unsafe { ffi::malloc_list(&list, num_apps) }
    })
}

/// The app's state, or `APP_INVALID` (-1) on failure. Read from the NIS. On failure sets errno: ENOENT for an unknown id,
/// ECONNREFUSED when no daemon has published a NIS.
#[no_mangle]
pub extern "C" fn hobbes_get_app_state(app_id: HobbesId) -> CAppState {
    guard("hobbes_get_app_state", CAppState::Invalid, || {
        Ok(record(app_id)?.state.into())
    })
}

/// The app's name, malloc'd (free it), or NULL.
#[no_mangle]
pub extern "C" fn hobbes_get_app_name(app_id: HobbesId) -> *mut c_char {
    guard("hobbes_get_app_name", std::ptr::null_mut(), || {
        ffi::malloc_str(&record(app_id)?.name)
    })
}

/// The id of the enclave the app runs (or ran) in, or
/// `HOBBES_INVALID_ID`. Read from the NIS. On failure sets errno: ENOENT for an unknown id,
/// ECONNREFUSED when no daemon has published a NIS.
#[no_mangle]
pub extern "C" fn hobbes_get_app_enclave(app_id: HobbesId) -> HobbesId {
    guard("hobbes_get_app_enclave", HOBBES_INVALID_ID, || {
        Ok(record(app_id)?.enclave)
    })
}

/// Split `KEY=VALUE` environment entries.
fn parse_env(entries: Vec<String>) -> Result<Vec<(String, String)>> {
    entries
        .into_iter()
        .map(|entry| match entry.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Error::invalid(format!(
                "envp entry {entry:?} is not KEY=VALUE"
            ))),
        })
        .collect()
}

/// What `hobbes_launch_app` asks the daemon for. As with `execve`, `argv[0]`
/// names the program: it becomes the app's name, and `exe` is what runs.
fn launch_spec(
    enclave: HobbesId,
    exe: &str,
    args: Vec<String>,
    env: Vec<String>,
) -> Result<LaunchSpec> {
    if exe.is_empty() {
        return Err(Error::invalid("exe is empty"));
    }
    let mut args = args.into_iter();
    let name = args.next().and_then(|arg0| {
        Path::new(&arg0)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    });
    Ok(LaunchSpec {
        enclave: EnclaveRef::Id(enclave),
        name,
        argv: std::iter::once(exe.to_owned()).chain(args).collect(),
        env: parse_env(env)?,
        cwd: None,
        stream: false,
    })
}

/// Launch `exe` in `enclave_id` through `leviathan`; returns the new app's id
/// once it runs, or `HOBBES_INVALID_ID`. `argv` and `envp` are NULL-terminated
/// (either may be NULL); `envp` is added to the enclave's base environment.
///
/// # Safety
/// `exe` is NULL (rejected) or a NUL-terminated string; `argv` and `envp`
/// are NULL or NULL-terminated arrays of NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn hobbes_launch_app(
    enclave_id: HobbesId,
    exe: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> HobbesId {
    guard("hobbes_launch_app", HOBBES_INVALID_ID, || {
        // SAFETY: the three pointers satisfy this function's contract.
        let (exe, args, env) = unsafe {
            (
                ffi::str_arg(exe, "exe")?,
                ffi::str_array(argv, "argv entry")?,
                ffi::str_array(envp, "envp entry")?,
            )
        };
        let app = daemon()?.launch(launch_spec(enclave_id, exe, args, env)?)?;
        if app.state == AppState::Failed {
            let why = app.detail.as_deref().unwrap_or("no detail");
            return Err(Error::new(
                libc::ENOEXEC,
                format!("app {} ({exe}) failed to start: {why}", app.id),
            ));
        }
        Ok(app.id)
    })
}

/// Send `signal` to every process of the app. 0, or -1.
#[no_mangle]
pub extern "C" fn hobbes_kill_app(app_id: HobbesId, signal: c_int) -> c_int {
    guard("hobbes_kill_app", -1, || {
        daemon()?.kill_app(app_id, signal)?;
        Ok(0)
    })
}

/// Block until the app ends. Returns 0 and stores its shell-style exit code
/// (code, or 128 + signal) in `*exit_code` when that is not NULL; an app that
/// ended without one (lost, failed to start) stores -1.
///
/// # Safety
/// `exit_code` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_wait_app(app_id: HobbesId, exit_code: *mut c_int) -> c_int {
    guard("hobbes_wait_app", -1, || {
        let app = daemon()?.wait_app(app_id)?;
        // SAFETY: per this function's contract.
        unsafe { ffi::write_opt(exit_code, self::exit_code(&app)) };
        Ok(0)
    })
}

/// The name of an `app_state_t` value (`"exited"`), a static string the
/// caller must not free; `"invalid"` for any other value. Never fails.
#[no_mangle]
pub extern "C" fn app_state_to_str(state: c_int) -> *const c_char {
    guard("app_state_to_str", c"invalid".as_ptr(), || {
        Ok(match state {
            0 => c"starting",
            1 => c"running",
            2 => c"exited",
            3 => c"crashed",
            4 => c"lost",
            5 => c"failed",
            _ => c"invalid",
        }
        .as_ptr())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn state_names_match_the_model() {
        use AppState::*;
        for s in [Starting, Running, Exited, Crashed, Lost, Failed] {
            // SAFETY: app_state_to_str returns static C strings.
            let got = unsafe { CStr::from_ptr(app_state_to_str(CAppState::from(s) as c_int)) };
            assert_eq!(got.to_str().unwrap(), s.to_string());
        }
    }

    #[test]
    fn launch_follows_execve_conventions() {
        let spec = launch_spec(
            3,
            "/bin/sh",
            vec!["/usr/bin/mysh".into(), "-c".into(), "exit 3".into()],
            vec!["A=1".into(), "B=x=y".into()],
        )
        .unwrap();
        assert_eq!(spec.argv, ["/bin/sh", "-c", "exit 3"]);
        assert_eq!(spec.name.as_deref(), Some("mysh"));
        assert_eq!(
            spec.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(spec.enclave, EnclaveRef::Id(3));

        let bare = launch_spec(0, "/bin/true", vec![], vec![]).unwrap();
        assert_eq!(bare.argv, ["/bin/true"]);
        assert_eq!(bare.name, None);
    }

    #[test]
    fn bad_launch_arguments_are_einval() {
        assert_eq!(
            launch_spec(0, "", vec![], vec![]).unwrap_err().errno,
            libc::EINVAL
        );
        let err = launch_spec(0, "/bin/true", vec![], vec!["NOEQUALS".into()]).unwrap_err();
        assert_eq!(err.errno, libc::EINVAL);
        let err = launch_spec(0, "/bin/true", vec![], vec!["=v".into()]).unwrap_err();
        assert_eq!(err.errno, libc::EINVAL);
    }
}
