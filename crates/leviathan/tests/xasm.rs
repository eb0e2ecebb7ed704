//! XASM across processes and native enclaves, with `xasm-probe`: a
//! producer stamping pages while it snapshots, consumers in other
//! processes (one in another enclave) checking every version they attach;
//! retention, a consumer dying with a hold, a producer exiting (cleanly or
//! not) while versions are attached, and zero-dirty snapshots. Each test
//! runs once per mechanism, chosen with HOBBES_XASM_MECHANISM.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use hobbes_client::proto::model::{AppRecord, ExitStatus};
use hobbes_client::Client;

/// `xasm-probe`, built by the workspace next to `leviathan`.
fn probe(test: &str) -> Option<String> {
    workspace_bin(test, "hobbes-xasm", "xasm-probe")
}

/// The mechanisms this kernel supports, as the probe reports them.
fn mechanisms(probe: &str, test: &str) -> Vec<&'static str> {
    let out = Command::new(probe)
        .arg("mechanisms")
        .output()
        .expect("run xasm-probe");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for m in ["scan", "mprotect"] {
        if text.contains(&format!("MECHANISM {m} yes")) {
            v.push(m);
        } else {
            skip(&format!("{test} ({m})"), text.trim());
        }
    }
    v
}

/// A host process talking to the test's daemon.
fn host(d: &Daemon, probe: &str, args: &[&str], mechanism: Option<&str>) -> Command {
    let mut cmd = Command::new(probe);
    cmd.args(args);
    for var in [
        "HOBBES_ENCLAVE_ID",
        "HOBBES_APP_ID",
        "HOBBES_SOCKET",
        "HOBBES_NIS",
        "HOBBES_XASM_MECHANISM",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOBBES_STATE_DIR", d.state_dir());
    if let Some(m) = mechanism {
        cmd.env("HOBBES_XASM_MECHANISM", m);
    }
    cmd
}

/// `key=value` fields of the first line starting with `tag`.
fn fields(text: &str, tag: &str) -> HashMap<String, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with(tag))
        .unwrap_or_else(|| panic!("no {tag} line in:\n{text}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(f: &HashMap<String, String>, key: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {f:?}"))
}

/// A child process killed (and reaped) if the test fails before it exits.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawn with stdout collected by a thread; returns (child, stdout receiver).
fn spawn_collect(mut cmd: Command) -> (Reaped, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn xasm-probe");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(out), &mut s);
        let _ = tx.send(s);
    });
    (Reaped(Some(child)), rx)
}

/// Wait for a collected child: (exit code, stdout).
fn finish(mut r: Reaped, rx: mpsc::Receiver<String>, limit: Duration) -> (Option<i32>, String) {
    let text = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("xasm-probe ran past {limit:?}"));
    let status = r.0.take().expect("child").wait().expect("wait");
    (status.code(), text)
}

/// An app's exit and its stdout and stderr logs.
fn app_output(rec: &AppRecord) -> String {
    let out = std::fs::read_to_string(&rec.stdout_log).unwrap_or_default();
    let err = std::fs::read_to_string(&rec.stderr_log).unwrap_or_default();
    format!("exit {:?}\n{out}{err}", rec.exit)
}

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn setup(test: &str) -> Option<(Daemon, Client, String)> {
    if !require_root(test) {
        return None;
    }
    if ncpus() < 2 {
        skip(test, "needs 2 cores");
        return None;
    }
    let probe = probe(test)?;
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(spec("sim", 1, 512, false)).unwrap();
    c.create_enclave(spec("ana", 1, 512, true)).unwrap();
    Some((d, c, probe))
}

fn start_in(c: &mut Client, enclave: &str, argv: &[&str], env: &[(&str, &str)]) -> AppRecord {
    let mut l = launch(enclave, argv);
    l.stream = false;
    l.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    c.launch(l).unwrap()
}

/// Thousands of snapshots while the producer keeps writing the same pages;
/// consumers in two host processes and in another enclave check every
/// version they attach (every word of every page against the stamp table
/// the version itself carries); no torn page, no leak.
#[test]
fn consistency_across_processes_and_enclaves() {
    let t = "consistency_across_processes_and_enclaves";
    let Some((d, mut c, probe)) = setup(t) else {
        return;
    };
    let daemon_fds = fd_count(d.pid());
    for m in mechanisms(&probe, t) {
        let name = format!("cons-{m}");
        let steps = "2000";
        // Consumers start first and wait for the region as long as the
        // producer waits for them (60 s), however slow its launch is.
        let consume = [
            "consume",
            "--name",
            &name,
            "--open-ms",
            "60000",
            "--min-versions",
            "100",
        ];
        let hosts: Vec<_> = (0..2)
            .map(|_| spawn_collect(host(&d, &probe, &consume, None)))
            .collect();
        // The enclave shares the host's busy core (with the producer's
        // writes and two host consumers on a 2-core node, it was seen to
        // check only 4 versions of 2000): every version it checks must be
        // intact, and it must check at least one.
        let mut argv = vec![probe.as_str()];
        argv.extend(consume);
        *argv.last_mut().unwrap() = "1";
        let remote = start_in(&mut c, "ana", &argv, &[]);
        let producer = start_in(
            &mut c,
            "sim",
            &[
                &probe,
                "produce",
                "--name",
                &name,
                "--pages",
                "256",
                "--steps",
                steps,
                "--keep",
                "2",
                "--max-pool-mib",
                "8",
                "--wait-consumers",
                "3",
            ],
            &[("HOBBES_XASM_MECHANISM", m)],
        );
        let produced = c.wait_app(producer.id).unwrap();
        if produced.exit != Some(ExitStatus::Code(0)) {
            // Say what every consumer was doing: the producer's own output
            // only says how many of them it saw.
            let mut why = format!("producer: {}\n", app_output(&produced));
            for (child, rx) in hosts {
                let mut child = child;
                if let Some(c) = child.0.as_mut() {
                    let _ = c.kill();
                }
                let (code, text) = finish(child, rx, Duration::from_secs(10));
                why += &format!("host consumer (exit {code:?}): {text}\n");
            }
            let _ = c.kill_app(remote.id, 9);
            let remote = c.wait_app(remote.id).unwrap();
            why += &format!("remote consumer: {}", app_output(&remote));
            panic!("{m}: the producer failed\n{why}");
        }
        let (_, out) = wait_ok(&mut c, &producer);
        let done = fields(&out, "DONE");
        assert_eq!(done["mechanism"], m, "{out}");
        assert_eq!(num(&done, "steps"), steps.parse::<u64>().unwrap());
        // The pool stays within K versions plus what the consumers hold
        // (each version at most the region): no growth over the run.
        let region = num(&done, "region_len");
        assert!(num(&done, "max_resident") <= 6 * region, "{out}");
        assert!(num(&done, "max_pool_size") <= 8 * region, "{out}");
        assert!(num(&done, "max_live") <= 5, "{out}");
        assert!(
            num(&done, "max_fds") <= num(&done, "base_fds") + 16,
            "{out}"
        );
        eprintln!(
            "{m}: {}",
            out.lines().find(|l| l.starts_with("DONE")).unwrap_or("")
        );

        let mut reports = vec![wait_ok(&mut c, &remote).1];
        for (child, rx) in hosts {
            let (code, text) = finish(child, rx, Duration::from_secs(60));
            assert_eq!(code, Some(0), "host consumer:\n{text}");
            reports.push(text);
        }
        for text in &reports {
            let f = fields(text, "CONSUMED");
            eprintln!(
                "{m}: {}",
                text.lines()
                    .find(|l| l.starts_with("CONSUMED"))
                    .unwrap_or("")
            );
            assert!(num(&f, "checked") >= 1, "{text}");
            // Mappings: one per extent while attached, none left after.
            assert!(
                num(&f, "max_maps") <= num(&f, "base_maps") + 4096 + 8,
                "{text}"
            );
            assert_eq!(num(&f, "end_maps"), num(&f, "base_maps"), "{text}");
            assert!(num(&f, "max_fds") <= num(&f, "base_fds") + 4, "{text}");
            assert_eq!(num(&f, "end_fds"), num(&f, "base_fds"), "{text}");
            assert!(text.contains("producer closed the region"), "{text}");
        }
    }
    // The name server let go of every table and pool.
    wait_for(
        "daemon descriptors back to normal",
        Duration::from_secs(5),
        || (fd_count(d.pid()) <= daemon_fds + 2).then_some(()),
    );
}

/// An interactive producer: one command line in, one reply line out.
struct Interactive {
    child: Reaped,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Interactive {
    fn start(mut cmd: Command) -> Interactive {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn xasm-probe");
        let stdin = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Interactive {
            child: Reaped(Some(child)),
            stdin,
            lines,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a reply from xasm-probe")
    }

    fn send(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write to xasm-probe");
        self.stdin.flush().expect("flush");
        let reply = self.line();
        assert!(
            !reply.starts_with("FAILED") && !reply.starts_with("ERR"),
            "{cmd}: {reply}"
        );
        reply
    }

    /// Wait for the process to exit: its exit code.
    fn wait(mut self) -> Option<i32> {
        drop(self.stdin);
        let mut child = self.child.0.take().expect("child");
        child.wait().expect("wait").code()
    }

    fn kill9(mut self) {
        let mut child = self.child.0.take().expect("child");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The `versions=[..]` list of a producer reply.
fn versions(reply: &str) -> Vec<u64> {
    let list = reply
        .split("versions=[")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or_else(|| panic!("no versions in {reply}"));
    list.split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// Keep K: old versions go, their pool pages are punched; a consumer that
/// dies holding a version lets it be reclaimed at the next snapshot; a
/// snapshot with nothing written is cheap and allowed; a producer that
/// exits (cleanly, or without cleanup) leaves attachments readable and
/// intact and waiters get ProducerGone.
#[test]
fn retention_holds_and_producer_exit() {
    let t = "retention_holds_and_producer_exit";
    let Some((d, _c, probe)) = setup(t) else {
        return;
    };
    let page = 4096u64;
    for m in mechanisms(&probe, t) {
        let name = format!("life-{m}");
        let mut p = Interactive::start(host(
            &d,
            &probe,
            &[
                "interactive",
                "--name",
                &name,
                "--pages",
                "64",
                "--keep",
                "2",
            ],
            Some(m),
        ));
        assert!(p.line().contains(&format!("mechanism={m}")));
        let r = fields(&p.send("snap"), "SNAP");
        // 64 data pages + header + stamp table.
        let pages = 66;
        assert_eq!((num(&r, "version"), num(&r, "copied")), (1, pages));
        p.send("write 0 8");
        let r = fields(&p.send("snap"), "SNAP");
        assert_eq!(
            num(&r, "dirty"),
            10,
            "8 data pages, their table page, the header"
        );
        // A consumer holds version 2 in another process.
        let holder = Interactive::start(host(
            &d,
            &probe,
            &["hold", "--name", &name, "--version", "2"],
            None,
        ));
        assert_eq!(holder.line(), "HELD 2");
        let mut last = String::new();
        for k in 0..4 {
            p.send(&format!("write {} 4", 10 + k * 4));
            last = p.send("snap");
        }
        // Versions 3 and 4 were reclaimed, 2 is held beyond K = 2.
        assert_eq!(versions(&last), vec![2, 5, 6], "{last}");
        let r = fields(&last, "SNAP");
        // Freed slots are punched, but for the latest reclaim's (kept for reuse).
        assert!(
            num(&r, "resident") <= num(&r, "allocated") + num(&r, "kept"),
            "punched: {last}"
        );
        // The latest full copy, plus what versions 2 and 5 still use.
        assert!(num(&r, "allocated") <= (pages + 30) * page, "{last}");
        let gone = host(
            &d,
            &probe,
            &["hold", "--name", &name, "--version", "3"],
            None,
        )
        .output()
        .unwrap();
        assert_eq!(gone.status.code(), Some(1));
        let msg = String::from_utf8_lossy(&gone.stdout);
        assert!(
            msg.contains("not published") || msg.contains("reclaimed"),
            "{msg}"
        );
        // The holder dies without letting go: the next snapshot reclaims 2.
        holder.kill9();
        p.send("write 40 2");
        let r = p.send("snap");
        assert_eq!(versions(&r), vec![6, 7], "{r}");
        assert!(num(&fields(&r, "SNAP"), "reclaimed") >= 1, "{r}");
        let extents = num(&fields(&r, "SNAP"), "extents");
        // Nothing written: no copy, same table, still a new version.
        let r = fields(&p.send("touch"), "SNAP");
        assert_eq!(
            (
                num(&r, "version"),
                num(&r, "dirty"),
                num(&r, "copied"),
                num(&r, "extents")
            ),
            (8, 0, 0, extents)
        );
        p.send("write 1 1");
        p.send("snap");

        // The producer exits cleanly while version 9 is attached.
        let mut h = Interactive::start(host(&d, &probe, &["hold", "--name", &name], None));
        assert_eq!(h.line(), "HELD 9");
        p.send("quit");
        assert_eq!(p.wait(), Some(0));
        assert_eq!(h.send("check"), "INTACT 9");
        let gone = h.send("wait");
        assert!(
            gone.starts_with("GONE") && gone.contains("closed"),
            "{gone}"
        );
        assert_eq!(h.send("check"), "INTACT 9");
        assert_eq!(h.send("release"), "RELEASED 9");
        assert_eq!(h.wait(), Some(0));

        // And without cleanup (no Drop: as if it crashed).
        let name2 = format!("crash-{m}");
        let mut p = Interactive::start(host(
            &d,
            &probe,
            &["interactive", "--name", &name2, "--pages", "16"],
            Some(m),
        ));
        p.line();
        p.send("write 0 16");
        p.send("snap");
        let mut h = Interactive::start(host(&d, &probe, &["hold", "--name", &name2], None));
        assert_eq!(h.line(), "HELD 1");
        writeln!(p.stdin, "exit").unwrap();
        p.stdin.flush().unwrap();
        assert_eq!(p.wait(), Some(0));
        let gone = h.send("wait");
        assert!(
            gone.starts_with("GONE") && gone.contains("channel segment was removed"),
            "{gone}"
        );
        assert_eq!(h.send("check"), "INTACT 1");
        assert_eq!(h.send("release"), "RELEASED 1");
        assert_eq!(h.wait(), Some(0));
    }
}

/// A region of 2 MiB and more keeps its versions in the daemon's huge-page
/// tmpfs (a first snapshot then copies a huge page at a time), and
/// consumers check every version they attach, as with memfd pools.
#[test]
fn big_regions_keep_their_versions_in_huge_pages() {
    let t = "big_regions_keep_their_versions_in_huge_pages";
    let Some((d, mut c, probe)) = setup(t) else {
        return;
    };
    let Some(dir) = c.status().unwrap().header.segment_files.dir else {
        skip(t, "the daemon has no huge-page tmpfs");
        return;
    };
    let consumer = spawn_collect(host(
        &d,
        &probe,
        &[
            "consume",
            "--name",
            "big",
            "--open-ms",
            "60000",
            "--min-versions",
            "3",
        ],
        None,
    ));
    let producer = Interactive::start(host(
        &d,
        &probe,
        &[
            "produce",
            "--name",
            "big",
            "--pages",
            "1024",
            "--steps",
            "20",
            "--keep",
            "2",
            "--max-pool-mib",
            "32",
            "--wait-consumers",
            "1",
            "--linger-ms",
            "60000",
        ],
        None,
    ));
    let done = loop {
        let line = producer.line();
        assert!(!line.starts_with("FAILED"), "{line}");
        if line.starts_with("DONE") {
            break line;
        }
    };
    assert_eq!(num(&fields(&done, "DONE"), "steps"), 20, "{done}");
    // While it lingers: its pool (and version tables' pool) is a file of
    // the tmpfs.
    let pid = producer.child.0.as_ref().unwrap().id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(maps.contains(&format!("{dir}/")), "{maps}");
    producer.kill9();
    let (code, text) = finish(consumer.0, consumer.1, Duration::from_secs(60));
    assert_eq!(code, Some(0), "consumer:\n{text}");
    assert!(num(&fields(&text, "CONSUMED"), "checked") >= 3, "{text}");
}
