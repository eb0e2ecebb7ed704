//! The monitor's link to the guest agent (`vm-guest-proto` over the
//! virtio-serial port): the start-up handshake, then requests matched to
//! their answers by `seq`, apps' output written to their pipes, and their
//! exits reported, all from one reader thread.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hobbes_agent::ExitReporter;
use hobbes_proto::frame::{read_frame, write_frame, FrameError};
use hobbes_proto::msg::Stream;
use vm_guest_proto::{Bind, FromGuest, ToGuest, VERSION};

/// How long a request waits for the guest's answer (TCG on a busy node is slow).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the guest said at start-up.
#[derive(Debug, Clone)]
pub struct GuestInfo {
    /// The guest kernel's release.
    pub kernel: String,
    /// Guest uptime when the agent was ready, ms.
    pub ready_uptime_ms: u64,
}

/// Wait for the agent's `hello`, send `setup`, wait for `ready`. `timeout`
/// bounds the whole boot; the error names what failed.
pub fn handshake(
    stream: &mut UnixStream,
    hostname: &str,
    export: bool,
    binds: Vec<Bind>,
    timeout: Duration,
) -> Result<GuestInfo, String> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let hello = read_frame::<_, FromGuest>(stream).map_err(|e| boot_error(e, timeout))?;
    let kernel = match hello {
        FromGuest::Hello {
            version, kernel, ..
        } if version == VERSION => kernel,
        FromGuest::Hello { version, .. } => {
            return Err(format!(
                "the guest agent speaks version {version}, this monitor {VERSION}: rebuild the image (scripts/vm-image.sh)"
            ))
        }
        other => return Err(format!("the guest agent began with {other:?}, not hello")),
    };
    write_frame(
        stream,
        &ToGuest::Setup {
            version: VERSION,
            hostname: hostname.to_string(),
            export,
            binds,
        },
    )
    .map_err(|e| format!("cannot send the guest its setup: {e}"))?;
    loop {
        match read_frame::<_, FromGuest>(stream).map_err(|e| boot_error(e, timeout))? {
            FromGuest::Ready { uptime_ms } => {
                stream.set_read_timeout(None).map_err(|e| e.to_string())?;
                return Ok(GuestInfo {
                    kernel,
                    ready_uptime_ms: uptime_ms,
                });
            }
            FromGuest::SetupFailed { error } => {
                return Err(format!("the guest could not set up: {error}"))
            }
            FromGuest::Heartbeat { .. } => {}
            other => return Err(format!("the guest agent answered setup with {other:?}")),
        }
    }
}

fn boot_error(e: FrameError, timeout: Duration) -> String {
    match e {
        FrameError::Closed => {
            "the guest's channel closed before its agent was ready (QEMU exited; see console.log and qemu.log in the enclave's directory)".into()
        }
        FrameError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            format!("the guest agent did not answer within {timeout:?} (the guest did not boot; see console.log in the enclave's directory)")
        }
        other => format!("the guest's channel: {other}"),
    }
}

/// One app the guest runs for us.
struct GuestApp {
    /// Answer to the launch (`started` or `launch_failed`).
    launched: Option<mpsc::Sender<Result<u32, String>>>,
    /// Where its output goes (the agent's pipes), until it exits.
    stdout: Option<File>,
    stderr: Option<File>,
    exit: ExitReporter,
}

/// The link, shared by the runner (requests) and its reader thread.
pub struct GuestLink {
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u64, mpsc::Sender<FromGuest>>>,
    apps: Mutex<HashMap<u64, GuestApp>>,
    next_seq: AtomicU64,
    last_heard: Mutex<Instant>,
    closed: AtomicBool,
}

impl GuestLink {
    /// A link on `stream` (after [`handshake`]); start its reader with
    /// [`GuestLink::serve`].
    pub fn new(stream: UnixStream) -> std::io::Result<Arc<GuestLink>> {
        Ok(Arc::new(GuestLink {
            writer: Mutex::new(stream),
            pending: Mutex::new(HashMap::new()),
            apps: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
            last_heard: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
        }))
    }

    /// How long the guest has been silent (it sends a heartbeat every second).
    pub fn silent_for(&self) -> Duration {
        lock(&self.last_heard).elapsed()
    }

    /// Whether the channel closed (QEMU is gone).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn send(&self, msg: &ToGuest) -> Result<(), String> {
        if self.is_closed() {
            return Err("the guest is gone".into());
        }
        write_frame(&mut *lock(&self.writer), msg)
            .map_err(|e| format!("cannot reach the guest agent: {e}"))
    }

    /// Send the request `make(seq)` and wait for its answer.
    pub fn request(&self, make: impl FnOnce(u64) -> ToGuest) -> Result<FromGuest, String> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(seq, tx);
        if let Err(e) = self.send(&make(seq)) {
            lock(&self.pending).remove(&seq);
            return Err(e);
        }
        let answer = rx.recv_timeout(REQUEST_TIMEOUT);
        lock(&self.pending).remove(&seq);
        answer.map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => {
                format!("the guest agent did not answer within {REQUEST_TIMEOUT:?}")
            }
            mpsc::RecvTimeoutError::Disconnected => "the guest is gone".to_string(),
        })
    }

    /// Start app `launch.app`, its output going to `stdout`/`stderr` and its
    /// end to `exit`; its pid in the guest, or why it did not start.
    pub fn launch(
        &self,
        launch: vm_guest_proto::GuestLaunch,
        stdout: File,
        stderr: File,
        exit: ExitReporter,
    ) -> Result<u32, String> {
        let app = launch.app;
        let (tx, rx) = mpsc::channel();
        {
            let mut apps = lock(&self.apps);
            if apps.contains_key(&app) {
                return Err(format!("app {app} runs in this guest already"));
            }
            apps.insert(
                app,
                GuestApp {
                    launched: Some(tx),
                    stdout: Some(stdout),
                    stderr: Some(stderr),
                    exit,
                },
            );
        }
        let sent = self.send(&ToGuest::Launch(launch));
        let answer = match sent {
            Ok(()) => rx.recv_timeout(REQUEST_TIMEOUT).unwrap_or_else(|e| {
                Err(match e {
                    mpsc::RecvTimeoutError::Timeout => format!(
                        "the guest agent did not start the program within {REQUEST_TIMEOUT:?}"
                    ),
                    mpsc::RecvTimeoutError::Disconnected => "the guest is gone".to_string(),
                })
            }),
            Err(e) => Err(e),
        };
        if answer.is_err() {
            // Never started: no exit will come; the agent reports the failure.
            lock(&self.apps).remove(&app);
        }
        answer
    }

    /// Read the guest's messages until the channel closes; then fail every
    /// waiting request and mark the link closed. Runs on its own thread.
    pub fn serve(self: Arc<Self>, reader: UnixStream) {
        // Buffered: a frame's header and payload in one read, usually.
        let mut reader = std::io::BufReader::with_capacity(256 << 10, reader);
        loop {
            match read_frame::<_, FromGuest>(&mut reader) {
                Ok(msg) => {
                    *lock(&self.last_heard) = Instant::now();
                    self.dispatch(msg);
                }
                Err(e) if !e.is_fatal() => {
                    tracing::warn!(error = %e, "bad message from the guest agent");
                }
                Err(_) => break,
            }
        }
        self.closed.store(true, Ordering::Release);
        // Dropping the senders wakes every waiter with "the guest is gone".
        lock(&self.pending).clear();
        for (_, app) in lock(&self.apps).iter_mut() {
            app.launched = None;
        }
    }

    fn dispatch(&self, msg: FromGuest) {
        match msg {
            FromGuest::Started { app, pid } => {
                if let Some(tx) = lock(&self.apps)
                    .get_mut(&app)
                    .and_then(|a| a.launched.take())
                {
                    let _ = tx.send(Ok(pid));
                }
            }
            FromGuest::LaunchFailed { app, error } => {
                if let Some(mut a) = lock(&self.apps).remove(&app) {
                    if let Some(tx) = a.launched.take() {
                        let _ = tx.send(Err(error));
                    }
                }
            }
            FromGuest::Output { app, stream, data } => {
                // Take the file out while writing: a full pipe must not hold
                // the table (the agent drains it on its own threads).
                let file = {
                    let mut apps = lock(&self.apps);
                    apps.get_mut(&app).and_then(|a| match stream {
                        Stream::Stdout => a.stdout.as_ref().map(File::try_clone),
                        Stream::Stderr => a.stderr.as_ref().map(File::try_clone),
                    })
                };
                if let Some(Ok(mut f)) = file {
                    let _ = f.write_all(&data);
                }
            }
            FromGuest::Exited { app, status } => {
                // Its output pipes close with the entry, then the agent
                // reports the end after the last byte it forwarded.
                if let Some(a) = lock(&self.apps).remove(&app) {
                    let GuestApp { exit, .. } = a;
                    exit.exited(status, None);
                }
            }
            FromGuest::Pong { seq }
            | FromGuest::FileData { seq, .. }
            | FromGuest::Done { seq, .. }
            | FromGuest::Failed { seq, .. } => {
                if let Some(tx) = lock(&self.pending).remove(&seq) {
                    let _ = tx.send(msg);
                }
            }
            FromGuest::Heartbeat { .. } => {}
            FromGuest::Hello { .. } | FromGuest::Ready { .. } | FromGuest::SetupFailed { .. } => {
                tracing::warn!(?msg, "the guest agent restarted its handshake");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hobbes_proto::model::ExitStatus;

    fn agent_side(stream: UnixStream) -> (UnixStream, UnixStream) {
        let r = stream.try_clone().unwrap();
        (r, stream)
    }

    #[test]
    fn the_handshake_sends_setup_and_waits_for_ready() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let guest = std::thread::spawn(move || {
            let (mut r, mut w) = agent_side(theirs);
            write_frame(
                &mut w,
                &FromGuest::Hello {
                    version: VERSION,
                    kernel: "6.1.0-47-cloud-amd64".into(),
                    uptime_ms: 2100,
                },
            )
            .unwrap();
            let setup: ToGuest = read_frame(&mut r).unwrap();
            assert!(
                matches!(setup, ToGuest::Setup { ref hostname, export: true, .. } if hostname == "ana")
            );
            write_frame(&mut w, &FromGuest::Heartbeat { seq: 1 }).unwrap();
            write_frame(&mut w, &FromGuest::Ready { uptime_ms: 2300 }).unwrap();
        });
        let info = handshake(&mut ours, "ana", true, vec![], Duration::from_secs(10)).unwrap();
        assert_eq!(info.kernel, "6.1.0-47-cloud-amd64");
        assert_eq!(info.ready_uptime_ms, 2300);
        guest.join().unwrap();
    }

    #[test]
    fn a_guest_that_dies_or_mismatches_is_named() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let e = handshake(&mut ours, "a", false, vec![], Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("closed before its agent was ready"), "{e}");
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        write_frame(
            &mut theirs,
            &FromGuest::Hello {
                version: VERSION + 1,
                kernel: "x".into(),
                uptime_ms: 0,
            },
        )
        .unwrap();
        let e = handshake(&mut ours, "a", false, vec![], Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("rebuild the image"), "{e}");
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let e = handshake(&mut ours, "a", false, vec![], Duration::from_millis(50)).unwrap_err();
        assert!(e.contains("did not answer within"), "{e}");
        drop(theirs);
    }

    #[test]
    fn requests_launches_output_and_exits_are_routed() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let link = GuestLink::new(ours.try_clone().unwrap()).unwrap();
        std::thread::spawn({
            let link = link.clone();
            move || link.serve(ours)
        });
        // A fake guest agent: answers a ping, runs app 9 (output, then exit).
        let guest = std::thread::spawn(move || {
            let (mut r, mut w) = agent_side(theirs);
            loop {
                let msg: ToGuest = match read_frame(&mut r) {
                    Ok(m) => m,
                    Err(_) => return,
                };
                match msg {
                    ToGuest::Ping { seq } => write_frame(&mut w, &FromGuest::Pong { seq }).unwrap(),
                    ToGuest::Launch(l) if l.argv[0] == "missing" => write_frame(
                        &mut w,
                        &FromGuest::LaunchFailed {
                            app: l.app,
                            error: "cannot run missing".into(),
                        },
                    )
                    .unwrap(),
                    ToGuest::Launch(l) => {
                        write_frame(
                            &mut w,
                            &FromGuest::Started {
                                app: l.app,
                                pid: 42,
                            },
                        )
                        .unwrap();
                        write_frame(
                            &mut w,
                            &FromGuest::Output {
                                app: l.app,
                                stream: Stream::Stdout,
                                data: b"hello\n".to_vec(),
                            },
                        )
                        .unwrap();
                        write_frame(
                            &mut w,
                            &FromGuest::Exited {
                                app: l.app,
                                status: ExitStatus::Code(3),
                            },
                        )
                        .unwrap();
                    }
                    _ => {}
                }
            }
        });
        assert!(matches!(
            link.request(|seq| ToGuest::Ping { seq }),
            Ok(FromGuest::Pong { .. })
        ));
        let launch = |app, prog: &str| vm_guest_proto::GuestLaunch {
            app,
            argv: vec![prog.into()],
            env: vec![],
            cwd: None,
            uid: 0,
            gid: 0,
        };
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (_err_r, err_w) = nix::unistd::pipe().unwrap();
        let (reporter, exits) = hobbes_agent::testing::reporter(9);
        let pid = link
            .launch(
                launch(9, "/bin/echo"),
                File::from(out_w),
                File::from(err_w),
                reporter,
            )
            .unwrap();
        assert_eq!(pid, 42);
        let (status, _) = exits.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(status, ExitStatus::Code(3));
        // The pipe's write end closed with the exit: the output reads to EOF.
        let mut out = String::new();
        std::io::Read::read_to_string(&mut File::from(out_r), &mut out).unwrap();
        assert_eq!(out, "hello\n");
        let (_r, w1) = nix::unistd::pipe().unwrap();
        let (_r2, w2) = nix::unistd::pipe().unwrap();
        let (reporter, _) = hobbes_agent::testing::reporter(10);
        let e = link
            .launch(
                launch(10, "missing"),
                File::from(w1),
                File::from(w2),
                reporter,
            )
            .unwrap_err();
        assert_eq!(e, "cannot run missing");
        drop(link);
        drop(guest);
    }
}
