//! The request handling: one [`Agent`] reads [`ToGuest`] messages and answers
//! them through an [`Outbox`], doing the work through a [`Guest`].
//!
//! The [`Agent`] holds the protocol's rules (setup first and once, the version
//! check, bind and path checks, one answer per request with its `seq`); the
//! [`Guest`] does what changes the machine. [`SystemGuest`] is the real one;
//! tests and the fuzzer use fakes, so the rules run anywhere.

use std::sync::{Arc, Mutex};

use hobbes_proto::frame::{self, FrameError};
use vm_guest_proto::{check_bind, Bind, FromGuest, GuestLaunch, ToGuest, FILE_CHUNK, VERSION};

use crate::apps::Apps;
use crate::files::{self, FileRead, FileWrite};

/// Where messages to the monitor go. Sends never fail from the caller's side:
/// a broken port is logged by the implementation (the host restarts nothing).
pub trait Outbox: Send + Sync {
    /// Send one message whole (never interleaved with another).
    fn send(&self, msg: &FromGuest);
}

/// A shared [`Outbox`].
pub type Out = Arc<dyn Outbox>;

/// The answer to a file read: the bytes and whether the end was reached.
pub type ReadResult = Result<(Vec<u8>, bool), String>;

/// Called once when a file operation completes, on any thread.
pub type Completion<T> = Box<dyn FnOnce(T) + Send>;

/// What the agent does to the guest. Errors are messages for people that name
/// the object and the problem.
pub trait Guest {
    /// Set the hostname, mount the host's export when there is one, and
    /// bind its parts (already checked with [`check_bind`]).
    fn setup(&mut self, hostname: &str, export: bool, binds: &[Bind]) -> Result<(), String>;
    /// Start an app. On success the guest has sent `Started` and will send
    /// its `Output` and `Exited`; on failure it sent nothing.
    fn launch(&mut self, launch: &GuestLaunch) -> Result<(), String>;
    /// Signal an app's process group.
    fn signal(&mut self, app: u64, signal: i32) -> Result<(), String>;
    /// Read a file; `done` gets the result, maybe later and on another thread.
    fn read_file(&mut self, req: FileRead, done: Completion<ReadResult>);
    /// Write a file; `done` gets the result, maybe later and on another thread.
    fn write_file(&mut self, req: FileWrite, done: Completion<Result<(), String>>);
    /// Kill every app, flush the file systems and power off. Returns only
    /// where powering off is impossible (not PID 1).
    fn shutdown(&mut self);
}

/// Where the conversation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Hello sent; waiting for `Setup`.
    AwaitingSetup,
    /// Setup done: apps may run.
    Ready,
    /// Setup failed (the text); the guest is of no use.
    Failed(String),
}

/// The protocol's rules over a [`Guest`]; see the module docs.
pub struct Agent<G: Guest> {
    guest: G,
    out: Out,
    phase: Phase,
}

impl<G: Guest> Agent<G> {
    /// An agent that has sent (or will send) `Hello` and waits for `Setup`.
    pub fn new(guest: G, out: Out) -> Agent<G> {
        Agent {
            guest,
            out,
            phase: Phase::AwaitingSetup,
        }
    }

    /// `Setup` was answered (`Ready` or `SetupFailed`): the heartbeats start.
    pub fn setup_answered(&self) -> bool {
        self.phase != Phase::AwaitingSetup
    }

    /// Why requests for apps and files are refused now, if they are.
    fn not_ready(&self) -> Option<String> {
        match &self.phase {
            Phase::Ready => None,
            Phase::AwaitingSetup => Some("the guest is not set up yet (Setup comes first)".into()),
            Phase::Failed(e) => Some(format!("the guest's setup failed: {e}")),
        }
    }

    /// Handle one request. Every request is answered exactly once (a launch
    /// by `Started` or `LaunchFailed`), except `Shutdown`.
    pub fn handle(&mut self, msg: ToGuest) {
        match msg {
            ToGuest::Setup {
                version,
                hostname,
                export,
                binds,
            } => {
                let reply = match self.setup(version, &hostname, export, &binds) {
                    Ok(()) => {
                        self.phase = Phase::Ready;
                        FromGuest::Ready {
                            uptime_ms: crate::kernel::uptime_ms(),
                        }
                    }
                    Err(error) => {
                        // A second Setup leaves the first one's outcome.
                        if self.phase == Phase::AwaitingSetup {
                            self.phase = Phase::Failed(error.clone());
                        }
                        FromGuest::SetupFailed { error }
                    }
                };
                self.out.send(&reply);
            }
            ToGuest::Launch(launch) => {
                let app = launch.app;
                let result = match self.not_ready() {
                    Some(e) => Err(e),
                    None => self.guest.launch(&launch),
                };
                if let Err(error) = result {
                    self.out.send(&FromGuest::LaunchFailed { app, error });
                }
            }
            ToGuest::Signal { seq, app, signal } => {
                let error = match self.not_ready() {
                    Some(e) => Some(e),
                    None => self.guest.signal(app, signal).err(),
                };
                self.out.send(&FromGuest::Done { seq, error });
            }
            ToGuest::Ping { seq } => self.out.send(&FromGuest::Pong { seq }),
            ToGuest::ReadFile {
                seq,
                path,
                offset,
                len,
                uid,
                gid,
            } => {
                if let Some(error) = self.not_ready().or_else(|| check_path(&path).err()) {
                    self.out.send(&FromGuest::Failed { seq, error });
                    return;
                }
                let req = FileRead {
                    path,
                    offset,
                    len: len.min(FILE_CHUNK),
                    uid,
                    gid,
                };
                let out = self.out.clone();
                self.guest.read_file(
                    req,
                    Box::new(move |result| {
                        out.send(&match result {
                            Ok((data, eof)) => FromGuest::FileData { seq, data, eof },
                            Err(error) => FromGuest::Failed { seq, error },
                        })
                    }),
                );
            }
            ToGuest::WriteFile {
                seq,
                path,
                data,
                append,
                mode,
                uid,
                gid,
            } => {
                let refused = self
                    .not_ready()
                    .or_else(|| check_path(&path).err())
                    .or_else(|| {
                        (data.len() > FILE_CHUNK as usize).then(|| {
                            format!(
                                "write of {} bytes to {path} exceeds the {FILE_CHUNK}-byte chunk",
                                data.len()
                            )
                        })
                    });
                if let Some(error) = refused {
                    self.out.send(&FromGuest::Done {
                        seq,
                        error: Some(error),
                    });
                    return;
                }
                let req = FileWrite {
                    path,
                    data,
                    append,
                    mode: mode & 0o7777,
                    uid,
                    gid,
                };
                let out = self.out.clone();
                self.guest.write_file(
                    req,
                    Box::new(move |result| {
                        out.send(&FromGuest::Done {
                            seq,
                            error: result.err(),
                        })
                    }),
                );
            }
            ToGuest::Shutdown => self.guest.shutdown(),
        }
    }

    fn setup(
        &mut self,
        version: u32,
        hostname: &str,
        export: bool,
        binds: &[Bind],
    ) -> Result<(), String> {
        if self.phase != Phase::AwaitingSetup {
            return Err("the guest is already set up (Setup comes once)".into());
        }
        if version != VERSION {
            return Err(format!(
                "the monitor speaks version {version} of the guest protocol, this agent {VERSION}"
            ));
        }
        if hostname.is_empty() || hostname.len() > 64 || hostname.contains(['\0', '/']) {
            return Err(format!(
                "hostname {hostname:?} must be 1 to 64 bytes without NUL or '/'"
            ));
        }
        for bind in binds {
            check_bind(bind)?;
        }
        if !export && !binds.is_empty() {
            return Err(format!(
                "{} binds asked for but the host shares nothing (export is false)",
                binds.len()
            ));
        }
        self.guest.setup(hostname, export, binds)
    }
}

/// A file request's path must be absolute (the agent's cwd means nothing to
/// the host).
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(format!("path {path:?} must be absolute, without NUL"));
    }
    Ok(())
}

/// The real guest: this machine. Used only by [`crate::init::run_as_init`].
pub struct SystemGuest {
    apps: Apps,
}

impl SystemGuest {
    /// A guest whose apps send their messages to `out`.
    pub fn new(out: Out) -> SystemGuest {
        SystemGuest {
            apps: Apps::new(out),
        }
    }
}

impl Guest for SystemGuest {
    fn setup(&mut self, hostname: &str, export: bool, binds: &[Bind]) -> Result<(), String> {
        crate::mounts::setup(hostname, export, binds)
    }

    fn launch(&mut self, launch: &GuestLaunch) -> Result<(), String> {
        self.apps.launch(launch)
    }

    fn signal(&mut self, app: u64, signal: i32) -> Result<(), String> {
        self.apps.signal(app, signal)
    }

    fn read_file(&mut self, req: FileRead, done: Completion<ReadResult>) {
        // Its own thread: a file system identity is per thread, and a slow
        // file (a FIFO, a stuck virtiofs) must not stop the request loop.
        files::on_own_thread(move || done(files::read(&req)));
    }

    fn write_file(&mut self, req: FileWrite, done: Completion<Result<(), String>>) {
        files::on_own_thread(move || done(files::write(&req)));
    }

    fn shutdown(&mut self) {
        self.apps.kill_all();
        crate::init::power_off("shutdown requested by the host");
    }
}

/// Read requests from `port` for ever and hand them to `agent`; `on_ready`
/// runs once when `Setup` has been answered (the heartbeat starts there).
pub fn serve<G: Guest>(
    agent: &mut Agent<G>,
    port: &mut impl std::io::Read,
    mut on_ready: impl FnMut(),
) -> ! {
    let mut ready = false;
    let mut closed_logged = false;
    loop {
        match frame::read_frame::<_, ToGuest>(port) {
            Ok(msg) => {
                closed_logged = false;
                agent.handle(msg);
                if !ready && agent.setup_answered() {
                    ready = true;
                    on_ready();
                }
            }
            Err(FrameError::Malformed(e)) => crate::log!("skipping a malformed message: {e}"),
            Err(FrameError::Closed) => {
                // The host end is not connected: a virtio-serial port then
                // reads as end-of-file at once, and poll() reports POLLHUP
                // at once too, so nothing can block until it returns. Look
                // again ten times a second.
                if !closed_logged {
                    crate::log!("the host closed the control port; waiting for it");
                    closed_logged = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => {
                // The stream is out of step (bad magic or version, a huge
                // length) or the port failed. Nobody restarts us: carry on
                // reading, without spinning on a persistent error.
                crate::log!("control port: {e}; reading on");
                if matches!(e, FrameError::Io(_)) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

/// Outboxes and guests for tests (this crate's and the fuzzer's).
pub mod testing {
    use super::*;
    use std::sync::Condvar;
    use std::time::Duration;

    /// An [`Outbox`] that keeps every message, for tests to wait on.
    #[derive(Default)]
    pub struct Collector {
        msgs: Mutex<Vec<FromGuest>>,
        changed: Condvar,
    }

    impl Collector {
        /// An empty collector.
        pub fn new() -> Arc<Collector> {
            Arc::new(Collector::default())
        }

        /// This collector as an [`Out`].
        pub fn out(self: &Arc<Self>) -> Out {
            self.clone()
        }

        /// Every message so far, in order.
        pub fn messages(&self) -> Vec<FromGuest> {
            self.msgs.lock().unwrap().clone()
        }

        /// Take every message so far.
        pub fn take(&self) -> Vec<FromGuest> {
            std::mem::take(&mut *self.msgs.lock().unwrap())
        }

        /// Wait (up to 30 s, then panic) until a message matches `pred`.
        pub fn wait_for(&self, pred: impl Fn(&FromGuest) -> bool) {
            let msgs = self.msgs.lock().unwrap();
            let (msgs, timeout) = self
                .changed
                .wait_timeout_while(msgs, Duration::from_secs(30), |m| !m.iter().any(&pred))
                .unwrap();
            assert!(!timeout.timed_out(), "no such message in {:?}", *msgs);
        }
    }

    impl Outbox for Collector {
        fn send(&self, msg: &FromGuest) {
            self.msgs.lock().unwrap().push(msg.clone());
            self.changed.notify_all();
        }
    }

    /// A [`Guest`] that does nothing and succeeds at everything: apps start
    /// (pid 1000 + app) and never end; reads return `len` zero bytes.
    pub struct NullGuest {
        /// Where `Started` goes.
        pub out: Out,
        /// Setups done.
        pub setups: usize,
        /// Shutdowns asked for.
        pub shutdowns: usize,
    }

    impl Guest for NullGuest {
        fn setup(&mut self, _: &str, _: bool, _: &[Bind]) -> Result<(), String> {
            self.setups += 1;
            Ok(())
        }
        fn launch(&mut self, launch: &GuestLaunch) -> Result<(), String> {
            if launch.argv.is_empty() {
                return Err("empty argv".into());
            }
            self.out.send(&FromGuest::Started {
                app: launch.app,
                pid: 1000u32.wrapping_add(launch.app as u32),
            });
            Ok(())
        }
        fn signal(&mut self, _: u64, _: i32) -> Result<(), String> {
            Ok(())
        }
        fn read_file(&mut self, req: FileRead, done: Completion<ReadResult>) {
            done(Ok((vec![0; req.len as usize], false)))
        }
        fn write_file(&mut self, _: FileWrite, done: Completion<Result<(), String>>) {
            done(Ok(()))
        }
        fn shutdown(&mut self) {
            self.shutdowns += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Collector, NullGuest};
    use super::*;

    fn agent() -> (Agent<NullGuest>, Arc<Collector>) {
        let c = Collector::new();
        let guest = NullGuest {
            out: c.out(),
            setups: 0,
            shutdowns: 0,
        };
        (Agent::new(guest, c.out()), c)
    }

    fn setup(version: u32, export: bool, binds: Vec<Bind>) -> ToGuest {
        ToGuest::Setup {
            version,
            hostname: "enclave1".into(),
            export,
            binds,
        }
    }

    fn bind(source: &str, target: &str) -> Bind {
        Bind {
            source: source.into(),
            target: target.into(),
            writable: false,
        }
    }

    #[test]
    fn requests_before_setup_are_refused_but_ping_works() {
        let (mut a, c) = agent();
        a.handle(ToGuest::Ping { seq: 1 });
        a.handle(ToGuest::Signal {
            seq: 2,
            app: 1,
            signal: 15,
        });
        a.handle(ToGuest::ReadFile {
            seq: 3,
            path: "/etc/hostname".into(),
            offset: 0,
            len: 10,
            uid: 0,
            gid: 0,
        });
        let msgs = c.take();
        assert_eq!(msgs[0], FromGuest::Pong { seq: 1 });
        assert!(
            matches!(&msgs[1], FromGuest::Done { seq: 2, error: Some(e) } if e.contains("not set up")),
            "{msgs:?}"
        );
        assert!(
            matches!(&msgs[2], FromGuest::Failed { seq: 3, .. }),
            "{msgs:?}"
        );
        assert!(!a.setup_answered());
    }

    #[test]
    fn setup_checks_the_version_and_binds_and_comes_once() {
        let (mut a, c) = agent();
        a.handle(setup(VERSION + 1, false, vec![]));
        let (mut b, d) = agent();
        b.handle(setup(VERSION, true, vec![bind("../etc", "/etc")]));
        let (mut e, f) = agent();
        e.handle(setup(VERSION, false, vec![bind("usr", "/usr")]));
        let (mut g, h) = agent();
        g.handle(setup(VERSION, true, vec![bind("usr", "/usr")]));
        g.handle(setup(VERSION, true, vec![]));

        let failed = |msgs: Vec<FromGuest>| match &msgs[..] {
            [FromGuest::SetupFailed { error }] => error.clone(),
            other => panic!("{other:?}"),
        };
        assert!(failed(c.take()).contains(&format!("version {}", VERSION + 1)));
        assert!(failed(d.take()).contains("\"../etc\""));
        assert!(failed(f.take()).contains("export is false"));
        let msgs = h.take();
        assert!(matches!(msgs[0], FromGuest::Ready { .. }), "{msgs:?}");
        assert!(matches!(&msgs[1], FromGuest::SetupFailed { error } if error.contains("already")));
        assert_eq!(g.guest.setups, 1);
        assert!(a.setup_answered() && g.setup_answered());
    }

    #[test]
    fn every_request_gets_one_answer_with_its_seq() {
        let (mut a, c) = agent();
        a.handle(setup(VERSION, false, vec![]));
        c.take();
        a.handle(ToGuest::ReadFile {
            seq: 10,
            path: "/x".into(),
            offset: 0,
            len: u32::MAX,
            uid: 0,
            gid: 0,
        });
        a.handle(ToGuest::ReadFile {
            seq: 11,
            path: "relative".into(),
            offset: 0,
            len: 1,
            uid: 0,
            gid: 0,
        });
        a.handle(ToGuest::WriteFile {
            seq: 12,
            path: "/x".into(),
            data: vec![0; FILE_CHUNK as usize + 1],
            append: false,
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
        a.handle(ToGuest::Launch(GuestLaunch {
            app: 4,
            argv: vec![],
            env: vec![],
            cwd: None,
            uid: 0,
            gid: 0,
        }));
        let msgs = c.take();
        match &msgs[0] {
            FromGuest::FileData { seq: 10, data, .. } => {
                assert_eq!(data.len(), FILE_CHUNK as usize, "len is capped")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&msgs[1], FromGuest::Failed { seq: 11, error } if error.contains("absolute"))
        );
        assert!(
            matches!(&msgs[2], FromGuest::Done { seq: 12, error: Some(e) } if e.contains("exceeds"))
        );
        assert!(matches!(&msgs[3], FromGuest::LaunchFailed { app: 4, .. }));
        assert_eq!(msgs.len(), 4);
    }

    #[test]
    fn the_read_loop_skips_malformed_frames() {
        let (mut a, c) = agent();
        let mut bytes = frame::encode(&ToGuest::Ping { seq: 1 }).unwrap();
        // A well-framed payload that is not a message.
        let junk = b"{\"op\":\"dance\"}";
        bytes.extend_from_slice(b"HBS\x01");
        bytes.extend_from_slice(&(junk.len() as u32).to_le_bytes());
        bytes.extend_from_slice(junk);
        bytes.extend(frame::encode(&ToGuest::Ping { seq: 2 }).unwrap());
        // serve() never returns: run it on a thread over a pipe and wait
        // for the second answer.
        let (rx, tx) = nix::unistd::pipe().unwrap();
        let (mut rx, mut tx) = (std::fs::File::from(rx), std::fs::File::from(tx));
        std::thread::spawn(move || serve(&mut a, &mut rx, || {}));
        std::io::Write::write_all(&mut tx, &bytes).unwrap();
        c.wait_for(|m| *m == FromGuest::Pong { seq: 2 });
        assert_eq!(
            c.take(),
            [FromGuest::Pong { seq: 1 }, FromGuest::Pong { seq: 2 }]
        );
        // Keep the write end open: a closed port makes serve() poll.
        std::mem::forget(tx);
    }
}
