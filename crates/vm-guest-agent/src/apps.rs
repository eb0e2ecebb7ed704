//! Apps: launching a program for the monitor, forwarding its output, and
//! reporting its end after that output.
//!
//! Each app gets three threads: one per output pipe (reads up to
//! [`OUTPUT_CHUNK`] bytes and sends them as `Output`), and a supervisor that
//! collects the pipes' ends and the process's end (from the [`Reaper`]) in an
//! [`ExitGate`] and sends `Exited` once the gate opens. The message order the
//! protocol promises holds by construction:
//! * `Started` is sent before those threads exist, so nothing of the app
//!   precedes it;
//! * a pipe's last `Output` is sent before its thread reports the end of the
//!   pipe, so `Exited` after both ends follows all output;
//! * when the grace period lets `Exited` go while a descendant still holds a
//!   pipe, the app's link is closed under the same lock its output is sent
//!   under, and later output is dropped, never sent after `Exited`.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hobbes_proto::model::ExitStatus;
use hobbes_proto::msg::Stream;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use vm_guest_proto::{FromGuest, GuestLaunch, OUTPUT_GRACE_MS};

use crate::agent::Out;
use crate::reaper::Reaper;

/// Bytes of output per `Output` message at most.
pub const OUTPUT_CHUNK: usize = 64 << 10;

/// The search path of a launch whose environment has no `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The apps that run (or whose `Exited` is not sent yet), by app id.
pub struct Apps {
    out: Out,
    table: Arc<Mutex<HashMap<u64, Arc<AppLink>>>>,
    grace: Duration,
}

/// What the table, the output threads and the supervisor share of one app.
struct AppLink {
    app: u64,
    /// The app's process group (its leader's pid: launched with
    /// `process_group(0)`).
    pgid: i32,
    /// `Exited` was sent: nothing more of this app may follow. Output is sent
    /// while holding this lock, so the check and the send are one step.
    closed: Mutex<bool>,
}

impl AppLink {
    fn send_output(&self, out: &Out, stream: Stream, data: &[u8]) {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if !*closed {
            out.send(&FromGuest::Output {
                app: self.app,
                stream,
                data: data.to_vec(),
            });
        }
    }

    fn send_exited(&self, out: &Out, status: ExitStatus) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        out.send(&FromGuest::Exited {
            app: self.app,
            status,
        });
        *closed = true;
    }
}

/// What a supervisor hears about its app.
enum AppEvent {
    /// One output pipe reached its end.
    PipeClosed,
    /// The process ended.
    Exited(ExitStatus),
}

impl Apps {
    /// No apps yet; messages go to `out`.
    pub fn new(out: Out) -> Apps {
        Apps::with_grace(out, Duration::from_millis(OUTPUT_GRACE_MS))
    }

    /// As [`Apps::new`] with another output grace period (tests).
    pub fn with_grace(out: Out, grace: Duration) -> Apps {
        Apps {
            out,
            table: Arc::new(Mutex::new(HashMap::new())),
            grace,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AppLink>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start `launch`. On success `Started` has been sent and `Output` and
    /// `Exited` will follow from other threads; on failure nothing was sent
    /// and the error (naming the program or directory) is for `LaunchFailed`.
    pub fn launch(&self, launch: &GuestLaunch) -> Result<(), String> {
        let app = launch.app;
        if self.table().contains_key(&app) {
            return Err(format!("app {app} is already running"));
        }
        let argv0 = launch
            .argv
            .first()
            .ok_or_else(|| format!("app {app} has an empty argv: nothing to run"))?;
        let path = launch
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let program = resolve_program(argv0, path)?;
        let cwd = launch.cwd.as_deref().unwrap_or("/");
        check_cwd(cwd)?;

        let mut cmd = Command::new(&program);
        cmd.arg0(argv0)
            .args(&launch.argv[1..])
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            // std sets the gid, then (being root, with no groups given)
            // drops the supplementary groups, then sets the uid.
            .gid(launch.gid)
            .uid(launch.uid)
            // Its own group, so a signal reaches the app's children too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let (events, supervisor_events) = mpsc::channel();
        let on_exit = {
            let events = events.clone();
            move |status| {
                let _ = events.send(AppEvent::Exited(status));
            }
        };
        let mut child = Reaper::global()
            .spawn(&mut cmd, on_exit)
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let pid = child.id();
        let link = Arc::new(AppLink {
            app,
            pgid: pid as i32,
            closed: Mutex::new(false),
        });
        self.table().insert(app, link.clone());
        self.out.send(&FromGuest::Started { app, pid });

        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        // `child` is dropped without waiting: the reaper reaps it.
        drop(child);
        self.forward(&link, Stream::Stdout, stdout, events.clone());
        self.forward(&link, Stream::Stderr, stderr, events);
        let (out, table, grace) = (self.out.clone(), self.table.clone(), self.grace);
        std::thread::Builder::new()
            .name(format!("app-{app}"))
            .spawn(move || supervise(link, supervisor_events, out, table, grace))
            .map_err(|e| format!("cannot start the supervisor of app {app}: {e}"))?;
        Ok(())
    }

    /// A thread that forwards one output pipe of an app and reports its end.
    fn forward(
        &self,
        link: &Arc<AppLink>,
        stream: Stream,
        mut pipe: impl Read + Send + 'static,
        events: Sender<AppEvent>,
    ) {
        let app = link.app;
        let (link, out) = (link.clone(), self.out.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("app-{app}-{stream:?}"))
            .spawn(move || {
                let mut buf = vec![0u8; OUTPUT_CHUNK];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => link.send_output(&out, stream, &buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            crate::log!("app {}: reading its {stream:?} failed: {e}", link.app);
                            break;
                        }
                    }
                }
                let _ = events.send(AppEvent::PipeClosed);
            });
        if let Err(e) = spawned {
            // The pipe and this pipe's end-of-output sender went with the
            // closure: the app gets EPIPE on that stream, and its `Exited`
            // waits out the grace period instead of that pipe's end.
            crate::log!("app {app}: cannot start its {stream:?} thread: {e}");
        }
    }

    /// Send `signal` (0: only check) to app `app`'s process group.
    pub fn signal(&self, app: u64, signal: i32) -> Result<(), String> {
        let link = self
            .table()
            .get(&app)
            .cloned()
            .ok_or_else(|| format!("app {app} is not running"))?;
        let sig = match signal {
            0 => None,
            n => Some(Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"))?),
        };
        match killpg(Pid::from_raw(link.pgid), sig) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(format!("app {app} is not running")),
            Err(e) => Err(format!("cannot send signal {signal} to app {app}: {e}")),
        }
    }

    /// SIGKILL every app's process group (shutdown).
    pub fn kill_all(&self) {
        for link in self.table().values() {
            let _ = killpg(Pid::from_raw(link.pgid), Signal::SIGKILL);
        }
    }
}

/// Wait for the app's end and both pipes' (or the grace period), send
/// `Exited` and forget the app.
fn supervise(
    link: Arc<AppLink>,
    events: Receiver<AppEvent>,
    out: Out,
    table: Arc<Mutex<HashMap<u64, Arc<AppLink>>>>,
    grace: Duration,
) {
    let mut gate = ExitGate::new(2, grace);
    let status = loop {
        let event = match gate.deadline() {
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => events.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match event {
            Ok(AppEvent::PipeClosed) => gate.pipe_closed(),
            Ok(AppEvent::Exited(status)) => gate.exited(status, Instant::now()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // Every sender is gone without an exit: the reaper lost the
                // process (cannot happen). Report something rather than hang.
                crate::log!("app {}: its end was never reported", link.app);
                break gate.status().unwrap_or(ExitStatus::Signal(libc::SIGKILL));
            }
        }
        if let Some(status) = gate.report(Instant::now()) {
            break status;
        }
    };
    // Forget first, so a relaunch of this id after `Exited` is accepted.
    table
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&link.app);
    link.send_exited(&out, status);
}

/// When an app's `Exited` may be sent: after its process ended and all its
/// output pipes reached their end, or a grace period after the process ended
/// (a daemonized descendant may hold the pipes for ever).
#[derive(Debug)]
pub struct ExitGate {
    open_pipes: u8,
    status: Option<ExitStatus>,
    deadline: Option<Instant>,
    grace: Duration,
}

impl ExitGate {
    /// A running app with `open_pipes` output pipes.
    pub fn new(open_pipes: u8, grace: Duration) -> ExitGate {
        ExitGate {
            open_pipes,
            status: None,
            deadline: None,
            grace,
        }
    }

    /// One pipe reached its end.
    pub fn pipe_closed(&mut self) {
        self.open_pipes = self.open_pipes.saturating_sub(1);
    }

    /// The process ended at `now`.
    pub fn exited(&mut self, status: ExitStatus, now: Instant) {
        self.status = Some(status);
        self.deadline = Some(now + self.grace);
    }

    /// How the process ended, if it did.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// When the gate opens by itself, if it is waiting only for the pipes.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.open_pipes > 0)
    }

    /// The status to report now, if `Exited` may be sent.
    pub fn report(&self, now: Instant) -> Option<ExitStatus> {
        let status = self.status?;
        let deadline = self.deadline?;
        (self.open_pipes == 0 || now >= deadline).then_some(status)
    }
}

/// The program `argv0` names: itself when it has a `/` (relative ones are
/// relative to the app's working directory), else the first executable
/// regular file of that name in `path` (the launch's `PATH`, or
/// [`DEFAULT_PATH`]).
pub fn resolve_program(argv0: &str, path: Option<&str>) -> Result<PathBuf, String> {
    if argv0.is_empty() {
        return Err("cannot run an empty program name".into());
    }
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let path = path.unwrap_or(DEFAULT_PATH);
    path.split(':')
        // An empty entry means the current directory (POSIX).
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(argv0))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(|| format!("cannot run {argv0}: not found in PATH {path}"))
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Check the working directory before starting, to name it in the error
/// (a failed `chdir` in the child would only say "No such file or directory").
fn check_cwd(cwd: &str) -> Result<(), String> {
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("cannot enter directory {cwd}: not a directory")),
        Err(e) => Err(format!(
            "cannot enter directory {cwd}: {e} (share it with the enclave)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::testing::Collector;

    #[test]
    fn exit_waits_for_both_pipes() {
        let t0 = Instant::now();
        let mut gate = ExitGate::new(2, Duration::from_secs(2));
        assert_eq!(gate.report(t0), None);
        gate.pipe_closed();
        gate.exited(ExitStatus::Code(3), t0);
        assert_eq!(gate.report(t0), None, "one pipe is still open");
        assert_eq!(gate.deadline(), Some(t0 + Duration::from_secs(2)));
        gate.pipe_closed();
        assert_eq!(gate.report(t0), Some(ExitStatus::Code(3)));
        assert_eq!(gate.deadline(), None);
    }

    #[test]
    fn pipes_closed_before_the_exit_wait_for_the_exit() {
        let t0 = Instant::now();
        let mut gate = ExitGate::new(2, Duration::from_secs(2));
        gate.pipe_closed();
        gate.pipe_closed();
        assert_eq!(gate.report(t0), None, "not exited yet");
        assert_eq!(gate.deadline(), None, "nothing to time out");
        gate.exited(ExitStatus::Signal(9), t0);
        assert_eq!(gate.report(t0), Some(ExitStatus::Signal(9)));
    }

    #[test]
    fn a_held_pipe_delays_the_exit_by_the_grace_period_only() {
        let t0 = Instant::now();
        let mut gate = ExitGate::new(2, Duration::from_millis(2000));
        gate.exited(ExitStatus::Code(0), t0);
        assert_eq!(gate.report(t0 + Duration::from_millis(1999)), None);
        assert_eq!(
            gate.report(t0 + Duration::from_millis(2000)),
            Some(ExitStatus::Code(0))
        );
    }

    #[test]
    fn programs_are_found_in_the_launch_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let prog = bin.join("prog");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::write(bin.join("data"), "not executable").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", bin.display());

        assert_eq!(resolve_program("prog", Some(&path)).unwrap(), prog);
        assert_eq!(
            resolve_program("./x/prog", Some(&path)).unwrap(),
            PathBuf::from("./x/prog"),
            "a name with a slash is not looked up"
        );
        let err = resolve_program("data", Some(&path)).unwrap_err();
        assert!(
            err.contains("cannot run data: not found in PATH /nonexistent:"),
            "{err}"
        );
        let err = resolve_program("prog", None).unwrap_err();
        assert!(err.contains(DEFAULT_PATH), "{err}");
        assert!(resolve_program("", None).is_err());
    }

    fn launch(app: u64, argv: &[&str], cwd: Option<&str>) -> GuestLaunch {
        GuestLaunch {
            app,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: cwd.map(str::to_string),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    /// The messages of `app`, in order.
    fn of_app(msgs: &[FromGuest], app: u64) -> Vec<FromGuest> {
        msgs.iter()
            .filter(|m| match m {
                FromGuest::Started { app: a, .. }
                | FromGuest::Output { app: a, .. }
                | FromGuest::Exited { app: a, .. }
                | FromGuest::LaunchFailed { app: a, .. } => *a == app,
                _ => false,
            })
            .cloned()
            .collect()
    }

    fn is_exited(app: u64) -> impl Fn(&FromGuest) -> bool {
        move |m| matches!(m, FromGuest::Exited { app: a, .. } if *a == app)
    }

    // The tests that start processes are one test: they share the process's
    // reaper, and any other child of the test binary would be reaped by it.
    #[test]
    fn launched_apps_report_started_output_then_exited() {
        let collector = Collector::new();
        let apps = Apps::with_grace(collector.out(), Duration::from_millis(300));

        // Output on both streams, then the exit code, in that order.
        let script = "echo out; echo err >&2; exit 3";
        apps.launch(&launch(1, &["sh", "-c", script], None))
            .unwrap();
        collector.wait_for(is_exited(1));
        let msgs = of_app(&collector.messages(), 1);
        assert!(
            matches!(msgs[0], FromGuest::Started { app: 1, .. }),
            "{msgs:?}"
        );
        assert_eq!(
            msgs.last(),
            Some(&FromGuest::Exited {
                app: 1,
                status: ExitStatus::Code(3)
            })
        );
        let output = |stream| -> Vec<u8> {
            msgs.iter()
                .filter_map(|m| match m {
                    FromGuest::Output {
                        stream: s, data, ..
                    } if *s == stream => Some(data.clone()),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        assert_eq!(output(Stream::Stdout), b"out\n");
        assert_eq!(output(Stream::Stderr), b"err\n");

        // A signal reaches the process group.
        apps.launch(&launch(2, &["sleep", "100"], Some("/tmp")))
            .unwrap();
        collector.wait_for(|m| matches!(m, FromGuest::Started { app: 2, .. }));
        assert_eq!(apps.signal(2, 0), Ok(()));
        apps.signal(2, 15).unwrap();
        collector.wait_for(is_exited(2));
        assert_eq!(
            of_app(&collector.messages(), 2).last(),
            Some(&FromGuest::Exited {
                app: 2,
                status: ExitStatus::Signal(15)
            })
        );
        let err = apps.signal(2, 15).unwrap_err();
        assert_eq!(err, "app 2 is not running");

        // A descendant that keeps stdout open delays the exit by the grace
        // period only, and its later output is never sent after `Exited`.
        let script = "(sleep 2; echo late) & echo early";
        apps.launch(&launch(3, &["sh", "-c", script], None))
            .unwrap();
        collector.wait_for(is_exited(3));
        let msgs = of_app(&collector.messages(), 3);
        assert_eq!(
            msgs.last(),
            Some(&FromGuest::Exited {
                app: 3,
                status: ExitStatus::Code(0)
            })
        );

        // Refusals name the program or the directory.
        let err = apps
            .launch(&launch(4, &["no-such-program"], None))
            .unwrap_err();
        assert!(
            err.contains("cannot run no-such-program: not found in PATH"),
            "{err}"
        );
        let err = apps
            .launch(&launch(4, &["/no/such/prog"], None))
            .unwrap_err();
        assert_eq!(
            err,
            "cannot run /no/such/prog: No such file or directory (os error 2)"
        );
        let err = apps
            .launch(&launch(4, &["true"], Some("/no/such/dir")))
            .unwrap_err();
        assert!(
            err.starts_with("cannot enter directory /no/such/dir: No such file"),
            "{err}"
        );
        assert!(err.ends_with("(share it with the enclave)"), "{err}");
        let err = apps.launch(&launch(4, &[], None)).unwrap_err();
        assert!(err.contains("empty argv"), "{err}");

        // An id is refused while it runs and accepted again after `Exited`.
        apps.launch(&launch(5, &["sleep", "100"], None)).unwrap();
        let err = apps.launch(&launch(5, &["true"], None)).unwrap_err();
        assert_eq!(err, "app 5 is already running");
        apps.kill_all();
        collector.wait_for(is_exited(5));
        apps.launch(&launch(5, &["true"], None)).unwrap();
        collector.wait_for(|m| {
            matches!(
                m,
                FromGuest::Exited {
                    app: 5,
                    status: ExitStatus::Code(0)
                }
            )
        });
    }
}
