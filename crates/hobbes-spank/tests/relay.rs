//! The relay without Slurm, as root: a process enters a PID namespace with
//! `relay::enter` the way a Slurm task does, its program runs there, and the
//! process that stays behind (the relay) ends as the program did, passing on
//! signals sent to it. Its own `main` (no test harness): it forks.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hobbes_spank::{ffi, relay};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP relay: needs root (setns into a PID namespace)");
        return;
    }
    if Command::new("unshare")
        .arg("--help")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        println!("SKIP relay: no unshare(1) to make a PID namespace");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hobbes-relay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let holder = NsHolder::start();
    let ns = holder.ns_pid();
    let result = std::panic::catch_unwind(|| {
        exit_codes_pass_through(ns);
        signals_pass_through(ns);
        the_program_runs_in_the_namespace(ns, &dir);
        signals_to_the_relay_reach_the_program(ns, &dir);
    });
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    println!("relay: 4 checks passed");
}

/// `unshare --pid --fork sleep`: its child is pid 1 of a new PID namespace.
struct NsHolder(Child);

impl NsHolder {
    fn start() -> NsHolder {
        NsHolder(
            Command::new("unshare")
                .args(["--pid", "--fork", "--kill-child", "sleep", "600"])
                .spawn()
                .expect("unshare"),
        )
    }

    fn ns_pid(&self) -> u32 {
        let children = format!("/proc/{0}/task/{0}/children", self.0.id());
        wait_until("unshare's child", || {
            std::fs::read_to_string(&children)
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }
}

impl Drop for NsHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fork a "task" that enters `ns`'s PID namespace through the relay and
/// execs `argv`; returns the relay's pid.
fn task(ns: u32, argv: &[&str]) -> Pid {
    match ffi::fork().expect("fork") {
        ffi::Forked::Parent(pid) => Pid::from_raw(pid),
        ffi::Forked::Child => {
            if let Err(e) = relay::enter(ns, &["pid".to_string()]) {
                eprintln!("relay::enter: {e}");
                std::process::exit(99);
            }
            // As task_init does, once the task is in its cgroups.
            if let Err(e) = relay::fork_if_entered() {
                eprintln!("relay::fork_if_entered: {e}");
                std::process::exit(97);
            }
            // The program's process, in the namespace.
            let e = Command::new(argv[0]).args(&argv[1..]).exec();
            eprintln!("exec {argv:?}: {e}");
            std::process::exit(98);
        }
    }
}

fn exit_codes_pass_through(ns: u32) {
    let relay = task(ns, &["sh", "-c", "exit 3"]);
    assert_eq!(waitpid(relay, None).unwrap(), WaitStatus::Exited(relay, 3));
}

fn signals_pass_through(ns: u32) {
    let relay = task(ns, &["sh", "-c", "kill -TERM $$; sleep 5"]);
    assert_eq!(
        waitpid(relay, None).unwrap(),
        WaitStatus::Signaled(relay, nix::sys::signal::Signal::SIGTERM, false)
    );
}

fn the_program_runs_in_the_namespace(ns: u32, dir: &Path) {
    let out = dir.join("pid");
    let script = format!("echo $$ > {}", out.display());
    let relay = task(ns, &["sh", "-c", &script]);
    assert_eq!(waitpid(relay, None).unwrap(), WaitStatus::Exited(relay, 0));
    let pid: u32 = std::fs::read_to_string(&out)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Its pid in the namespace: small (1 is the holder's sleep), not a host pid.
    assert!(pid > 1 && pid < 100, "pid in the namespace: {pid}");
}

fn signals_to_the_relay_reach_the_program(ns: u32, dir: &Path) {
    let ready = dir.join("ready");
    let script = format!(
        "trap 'exit 7' USR1; touch {}; i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; exit 1",
        ready.display()
    );
    let relay = task(ns, &["sh", "-c", &script]);
    wait_until("the program's trap", || ready.exists().then_some(()));
    // Sent by another process (kill(1)), not by the relay's parent: forwarded.
    let sent = Command::new("kill")
        .args(["-USR1", &relay.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(waitpid(relay, None).unwrap(), WaitStatus::Exited(relay, 7));
}
