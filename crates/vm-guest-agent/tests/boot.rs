//! Boot the cached guest image (scripts/vm-image.sh) under QEMU (TCG) and
//! drive the agent over its control port, as the monitor will.
//!
//! Each boot costs about 3 s of CPU, so a few boots carry many checks each,
//! and they run one at a time. Without an image (or QEMU) every test prints
//! one `SKIP` line and passes.
//!
//! The test is the server of the control port's socket (QEMU connects as a
//! client when it starts, before the guest runs), so nothing waits for a
//! socket file to appear and no guest byte is lost.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hobbes_proto::frame;
use hobbes_proto::model::ExitStatus;
use hobbes_proto::msg::Stream;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vm_guest_proto::{Bind, FromGuest, GuestLaunch, ToGuest, PORT_NAME, VERSION};

/// Boots run one at a time (each takes a core for seconds under TCG).
static BOOTS: Mutex<()> = Mutex::new(());

/// The longest wait for an answer (or for the first Hello: the boot).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// Print `SKIP <test>: <reason>` past the test harness's output capture.
fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stdout(), "SKIP {test}: {reason}");
}

/// Print a measurement past the output capture, so it shows in test logs.
fn report(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The image directory, or `None` after printing the SKIP line.
fn image(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("HOBBES_VM_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hobbes/vm-image"));
    if !dir.join("image.json").is_file() {
        skip(test, "no VM image (scripts/vm-image.sh)");
        return None;
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        skip(test, "no qemu-system-x86_64 (scripts/deps.sh)");
        return None;
    }
    Some(dir)
}

#[derive(Default)]
struct BootOpts {
    /// Share this host directory over virtiofs (tag `hobbes`).
    export: Option<PathBuf>,
    /// Boot with `hobbes.echo=1`.
    echo: bool,
}

/// The processes of a boot and their directory (sockets, logs): the
/// processes are killed on every path, and on a failure the logs printed.
struct Guard {
    qemu: Option<Child>,
    virtiofsd: Option<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for child in [&mut self.qemu, &mut self.virtiofsd].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for log in ["console.log", "qemu.log", "virtiofsd.log"] {
                if let Ok(text) = std::fs::read_to_string(self.dir.path().join(log)) {
                    eprintln!("--- {log} ---\n{text}");
                }
            }
        }
        // `dir` is removed after this, with the processes gone.
    }
}

/// A running VM and its control port.
struct Vm {
    guard: Guard,
    port: UnixStream,
    /// Messages read but not yet asked for, in arrival order.
    pending: VecDeque<FromGuest>,
    heartbeats: u64,
    booted_at: Instant,
}

/// Accept one connection on `listener` within `timeout`, or panic naming
/// `what` (QEMU failed to start: its log says why).
fn accept(listener: &UnixListener, timeout: Duration, what: &str) -> UnixStream {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let ready = poll(&mut fds, PollTimeout::from(ms)).expect("poll");
    assert!(ready > 0, "{what} did not connect within {timeout:?}");
    listener.accept().expect("accept").0
}

impl Vm {
    fn boot(image: &Path, opts: BootOpts) -> Vm {
        let mut guard = Guard {
            qemu: None,
            virtiofsd: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let dir = guard.dir.path().to_path_buf();
        let sock = dir.join("guest.sock");
        let listener = UnixListener::bind(&sock).expect("bind the control socket");

        let mut append = String::from("console=ttyS0 quiet panic=-1");
        if opts.echo {
            append.push_str(" hobbes.echo=1");
        }
        let mut args: Vec<String> = [
            "-accel",
            "tcg,tb-size=64",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-nographic",
            "-no-user-config",
            "-no-reboot",
        ]
        .map(String::from)
        .to_vec();
        let path = |p: &Path| p.display().to_string();
        args.extend([
            "-serial".into(),
            format!("file:{}", path(&dir.join("console.log"))),
            "-kernel".into(),
            path(&image.join("vmlinuz")),
            "-initrd".into(),
            path(&image.join("initrd.img")),
            "-append".into(),
            append,
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!("socket,id=c0,path={}", path(&sock)),
            "-device".into(),
            format!("virtserialport,chardev=c0,name={PORT_NAME}"),
        ]);

        if let Some(export) = &opts.export {
            let fs_sock = dir.join("fs.sock");
            let fs_listener = UnixListener::bind(&fs_sock).expect("bind the virtiofs socket");
            let log = File::create(dir.join("virtiofsd.log")).unwrap();
            let mut cmd = Command::new(VIRTIOFSD);
            cmd.args(["--fd=3", "-o", "cache=none", "-o"])
                .arg(format!("source={}", export.display()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            // virtiofsd takes a listening socket as fd 3; the socket must
            // exist before QEMU starts and connects to it.
            let fd = fs_listener.as_raw_fd();
            // SAFETY: runs in the forked child before exec; dup2 is
            // async-signal-safe and leaves fd 3 without close-on-exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            guard.virtiofsd = Some(cmd.spawn().expect("start virtiofsd"));
            args.extend([
                "-object".into(),
                "memory-backend-memfd,id=mem,size=256M,share=on".into(),
                "-numa".into(),
                "node,memdev=mem".into(),
                "-chardev".into(),
                format!("socket,id=fs,path={}", path(&fs_sock)),
                "-device".into(),
                "vhost-user-fs-pci,chardev=fs,tag=hobbes".into(),
            ]);
        }

        let log = File::create(dir.join("qemu.log")).unwrap();
        let booted_at = Instant::now();
        guard.qemu = Some(
            Command::new("qemu-system-x86_64")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start qemu-system-x86_64"),
        );
        let port = accept(&listener, Duration::from_secs(30), "QEMU");
        Vm {
            guard,
            port,
            pending: VecDeque::new(),
            heartbeats: 0,
            booted_at,
        }
    }

    fn send(&mut self, msg: &ToGuest) {
        frame::write_frame(&mut self.port, msg).expect("write to the control port");
    }

    /// The next message from the guest that is not a heartbeat, before
    /// `deadline` (heartbeats do not extend it).
    fn read(&mut self, deadline: Instant) -> FromGuest {
        loop {
            if let Some(msg) = self.read_one(deadline) {
                return msg;
            }
        }
    }

    /// Read one message before `deadline`: `None` for a heartbeat (counted).
    fn read_one(&mut self, deadline: Instant) -> Option<FromGuest> {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no message in time; pending: {:?}",
            self.pending
        );
        self.port.set_read_timeout(Some(left)).unwrap();
        match frame::read_frame(&mut self.port) {
            Ok(FromGuest::Heartbeat { .. }) => {
                self.heartbeats += 1;
                None
            }
            Ok(msg) => Some(msg),
            Err(e) => panic!("reading the control port: {e}; pending: {:?}", self.pending),
        }
    }

    /// The messages for which `belongs` holds, in order, up to and including
    /// the first for which `last` holds; others stay pending.
    fn take_until(
        &mut self,
        belongs: impl Fn(&FromGuest) -> bool,
        last: impl Fn(&FromGuest) -> bool,
    ) -> Vec<FromGuest> {
        let mut got = Vec::new();
        let mut done = false;
        let mut rest = VecDeque::new();
        while let Some(m) = self.pending.pop_front() {
            if !done && belongs(&m) {
                done = last(&m);
                got.push(m);
            } else {
                rest.push_back(m);
            }
        }
        self.pending = rest;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while !done {
            let m = self.read(deadline);
            if belongs(&m) {
                done = last(&m);
                got.push(m);
            } else {
                self.pending.push_back(m);
            }
        }
        got
    }

    /// The one message `pred` picks.
    fn take(&mut self, pred: impl Fn(&FromGuest) -> bool) -> FromGuest {
        self.take_until(&pred, &pred).pop().unwrap()
    }

    /// Launch as root with a small PATH and return the app's messages up to
    /// its `Exited` (or `LaunchFailed`).
    fn run(&mut self, app: u64, argv: &[&str]) -> Vec<FromGuest> {
        self.launch(app, argv, 0);
        self.take_until(move |m| app_of(m) == Some(app), move |m| ends(m, app))
    }

    fn launch(&mut self, app: u64, argv: &[&str], uid: u32) {
        self.send(&ToGuest::Launch(GuestLaunch {
            app,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: None,
            uid,
            gid: uid,
        }));
    }

    /// Shut the guest down and check QEMU ends by itself.
    fn shutdown(&mut self) {
        self.send(&ToGuest::Shutdown);
        // QEMU closes the socket when it exits: wait for that end-of-file.
        loop {
            match frame::read_frame::<_, FromGuest>(&mut self.port) {
                Ok(_) => {}
                Err(frame::FrameError::Closed) => break,
                Err(e) => panic!("waiting for QEMU to end after Shutdown: {e}"),
            }
        }
        let qemu = self.guard.qemu.as_mut().expect("QEMU runs");
        let status = qemu.wait().expect("wait for QEMU");
        assert!(status.success(), "QEMU ended with {status}");
    }
}

fn app_of(m: &FromGuest) -> Option<u64> {
    match m {
        FromGuest::Started { app, .. }
        | FromGuest::LaunchFailed { app, .. }
        | FromGuest::Output { app, .. }
        | FromGuest::Exited { app, .. } => Some(*app),
        _ => None,
    }
}

fn ends(m: &FromGuest, app: u64) -> bool {
    matches!(m, FromGuest::Exited { app: a, .. } | FromGuest::LaunchFailed { app: a, .. } if *a == app)
}

fn output(msgs: &[FromGuest], stream: Stream) -> String {
    let bytes: Vec<u8> = msgs
        .iter()
        .filter_map(|m| match m {
            FromGuest::Output {
                stream: s, data, ..
            } if *s == stream => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// `Started` first, `Exited` last with `status`.
fn assert_ran(msgs: &[FromGuest], status: ExitStatus) {
    assert!(
        matches!(msgs.first(), Some(FromGuest::Started { .. })),
        "{msgs:?}"
    );
    assert!(
        matches!(msgs.last(), Some(FromGuest::Exited { status: s, .. }) if *s == status),
        "{msgs:?}"
    );
}

/// Hello, then Setup answered by Ready; returns the guest's kernel release.
fn hello_and_setup(vm: &mut Vm, export: bool, binds: Vec<Bind>) -> String {
    let (kernel, uptime_ms) = match vm.read(Instant::now() + REPLY_TIMEOUT) {
        FromGuest::Hello {
            version,
            kernel,
            uptime_ms,
        } => {
            assert_eq!(version, VERSION);
            (kernel, uptime_ms)
        }
        other => panic!("expected Hello first, got {other:?}"),
    };
    report(format_args!(
        "boot to Hello: {} ms from QEMU's start (guest uptime {uptime_ms} ms), kernel {kernel}",
        vm.booted_at.elapsed().as_millis()
    ));
    vm.send(&ToGuest::Setup {
        version: VERSION,
        hostname: "enclave-test".into(),
        export,
        binds,
    });
    match vm.read(Instant::now() + REPLY_TIMEOUT) {
        FromGuest::Ready { .. } => {}
        other => panic!("expected Ready, got {other:?}"),
    }
    kernel
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn boots_and_serves_apps_files_signals_and_shutdown() {
    let Some(image) = image("boots_and_serves_apps_files_signals_and_shutdown") else {
        return;
    };
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|p| p.into_inner());
    let mut vm = Vm::boot(&image, BootOpts::default());
    hello_and_setup(&mut vm, false, vec![]);

    // Ping/Pong round trips.
    let mut rtts = Vec::new();
    for seq in 0..100 {
        let t = Instant::now();
        vm.send(&ToGuest::Ping { seq });
        let got = vm.take(|m| matches!(m, FromGuest::Pong { .. }));
        rtts.push(t.elapsed());
        assert_eq!(got, FromGuest::Pong { seq });
    }
    report(format_args!(
        "Ping/Pong round trip: median {:?} of 100",
        median(rtts)
    ));

    // Programs of the image, their output, their exit after it.
    let msgs = vm.run(1, &["echo", "hello", "guest"]);
    assert_ran(&msgs, ExitStatus::Code(0));
    assert_eq!(output(&msgs, Stream::Stdout), "hello guest\n");

    let msgs = vm.run(2, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_ran(&msgs, ExitStatus::Code(3));
    assert_eq!(output(&msgs, Stream::Stdout), "out\n");
    assert_eq!(output(&msgs, Stream::Stderr), "err\n");

    let msgs = vm.run(3, &["no-such-program"]);
    match &msgs[..] {
        [FromGuest::LaunchFailed { error, .. }] => {
            assert!(error.contains("no-such-program"), "{error}")
        }
        other => panic!("{other:?}"),
    }

    // A signal to a running app, and a signal it raises itself.
    vm.launch(4, &["sleep", "100"], 0);
    vm.take(|m| matches!(m, FromGuest::Started { app: 4, .. }));
    vm.send(&ToGuest::Signal {
        seq: 7,
        app: 4,
        signal: 15,
    });
    assert_eq!(
        vm.take(|m| matches!(m, FromGuest::Done { seq: 7, .. })),
        FromGuest::Done {
            seq: 7,
            error: None
        }
    );
    let exited = vm.take(|m| ends(m, 4));
    assert_eq!(
        exited,
        FromGuest::Exited {
            app: 4,
            status: ExitStatus::Signal(15)
        }
    );
    vm.send(&ToGuest::Signal {
        seq: 8,
        app: 4,
        signal: 15,
    });
    assert_eq!(
        vm.take(|m| matches!(m, FromGuest::Done { seq: 8, .. })),
        FromGuest::Done {
            seq: 8,
            error: Some("app 4 is not running".into())
        }
    );
    let msgs = vm.run(5, &["sh", "-c", "kill -SEGV $$"]);
    assert_ran(&msgs, ExitStatus::Signal(11));

    // Files: a round trip in /tmp, and root's file refused to uid 1000.
    let write = |seq, path: &str, data: &[u8], mode| ToGuest::WriteFile {
        seq,
        path: path.into(),
        data: data.to_vec(),
        append: false,
        mode,
        uid: 0,
        gid: 0,
    };
    let read = |seq, path: &str, uid| ToGuest::ReadFile {
        seq,
        path: path.into(),
        offset: 0,
        len: 4096,
        uid,
        gid: uid,
    };
    vm.send(&write(10, "/tmp/t", b"file data\n", 0o644));
    assert_eq!(
        vm.take(|m| matches!(m, FromGuest::Done { seq: 10, .. })),
        FromGuest::Done {
            seq: 10,
            error: None
        }
    );
    vm.send(&read(11, "/tmp/t", 0));
    assert_eq!(
        vm.take(|m| matches!(m, FromGuest::FileData { seq: 11, .. })
            || matches!(m, FromGuest::Failed { seq: 11, .. })),
        FromGuest::FileData {
            seq: 11,
            data: b"file data\n".to_vec(),
            eof: true
        }
    );
    vm.send(&write(12, "/tmp/secret", b"s", 0o600));
    vm.take(|m| {
        matches!(
            m,
            FromGuest::Done {
                seq: 12,
                error: None
            }
        )
    });
    vm.send(&read(13, "/tmp/secret", 1000));
    match vm.take(|m| {
        matches!(
            m,
            FromGuest::FileData { seq: 13, .. } | FromGuest::Failed { seq: 13, .. }
        )
    }) {
        FromGuest::Failed { error, .. } => {
            assert!(
                error.contains("/tmp/secret") && error.contains("Permission denied"),
                "{error}"
            )
        }
        other => panic!("uid 1000 read root's 0600 file: {other:?}"),
    }

    // The hostname of Setup, seen by an app.
    let msgs = vm.run(6, &["hostname"]);
    assert_eq!(output(&msgs, Stream::Stdout), "enclave-test\n");

    // Heartbeats arrive on their own (wait for one if none came yet).
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while vm.heartbeats == 0 {
        vm.read_one(deadline);
    }
    vm.shutdown();
}

#[test]
fn runs_a_host_program_from_the_shared_usr() {
    let test = "runs_a_host_program_from_the_shared_usr";
    let Some(image) = image(test) else {
        return;
    };
    if !rustix::process::getuid().is_root() || !Path::new(VIRTIOFSD).exists() {
        skip(test, &format!("needs root and {VIRTIOFSD}"));
        return;
    }
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|p| p.into_inner());
    // The host's /usr is the whole export, bound read-only at /usr; the
    // image's /lib and /lib64 links then find the host's loader and libraries.
    let mut vm = Vm::boot(
        &image,
        BootOpts {
            export: Some("/usr".into()),
            echo: false,
        },
    );
    let kernel = hello_and_setup(
        &mut vm,
        true,
        vec![Bind {
            source: "".into(),
            target: "/usr".into(),
            writable: false,
        }],
    );
    let msgs = vm.run(1, &["/usr/bin/uname", "-r"]);
    assert_ran(&msgs, ExitStatus::Code(0));
    assert_eq!(output(&msgs, Stream::Stdout), format!("{kernel}\n"));

    vm.send(&ToGuest::WriteFile {
        seq: 2,
        path: "/usr/hobbes-test".into(),
        data: b"x".to_vec(),
        append: false,
        mode: 0o644,
        uid: 0,
        gid: 0,
    });
    match vm.take(|m| matches!(m, FromGuest::Done { seq: 2, .. })) {
        FromGuest::Done {
            error: Some(error), ..
        } => assert!(error.contains("Read-only file system"), "{error}"),
        other => panic!("the shared /usr is writable: {other:?}"),
    }
    vm.shutdown();
}

#[test]
fn echo_mode_copies_every_byte_back() {
    let Some(image) = image("echo_mode_copies_every_byte_back") else {
        return;
    };
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|p| p.into_inner());
    let mut vm = Vm::boot(
        &image,
        BootOpts {
            export: None,
            echo: true,
        },
    );
    // The same bytes as a Ping frame, so the round trip compares with Ping/Pong.
    let ping = frame::encode(&ToGuest::Ping { seq: 12345 }).unwrap();
    let mut back = vec![0u8; ping.len()];
    let mut rtts = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        vm.port.write_all(&ping).unwrap();
        vm.port.read_exact(&mut back).unwrap();
        rtts.push(t.elapsed());
        assert_eq!(back, ping);
    }
    report(format_args!(
        "echo round trip ({} bytes): median {:?} of 100",
        ping.len(),
        median(rtts)
    ));
    // No Shutdown in echo mode: Drop kills QEMU.
}
