//! `hobbes-insitu run` end to end against a real leviathan (the name server
//! XEMEM and XASM need): every coupling mode, both executions, checking the
//! counts and consistency each side reports, and that nothing is left
//! exported afterwards.

#[path = "../../leviathan/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use hobbes_workloads::{Mode, PairReport};

const INSITU: &str = env!("CARGO_BIN_EXE_hobbes-insitu");
const STEPS: u64 = 12;

/// The leviathan binary of this target directory, built if missing.
fn have_leviathan(test: &str) -> bool {
    let path = PathBuf::from(leviathan());
    if !path.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "leviathan"])
            .status();
        if !built.is_ok_and(|s| s.success()) || !path.exists() {
            skip(test, "leviathan is not built (cargo build -p leviathan)");
            return false;
        }
    }
    true
}

/// An unprivileged daemon: XEMEM needs only its name server, and this
/// leaves the node's cores and cgroups to other tests (unprivileged, its
/// host cores confine nothing).
fn daemon(test: &str) -> Option<Daemon> {
    have_leviathan(test).then(|| Daemon::start(&["--unprivileged"]))
}

fn insitu(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(INSITU)
        .args(args)
        .env("HOBBES_STATE_DIR", d.state_dir())
        .env_remove("HOBBES_SOCKET")
        .env_remove("HOBBES_NIS")
        .output()
        .expect("run hobbes-insitu")
}

fn run(d: &Daemon, mode: &str, exec: &str, kind: &str, region: &str) -> PairReport {
    let steps = STEPS.to_string();
    let out = insitu(
        d,
        &[
            "run",
            "--workload",
            "snap",
            "--size",
            "6",
            "--groups",
            "3",
            "--angles",
            "2",
            "--steps",
            &steps,
            "--mode",
            mode,
            "--exec",
            exec,
            "--kind",
            kind,
            "--region",
            region,
            "--timeout",
            "30",
            "--json",
            "--quiet",
        ],
    );
    assert!(
        out.status.success(),
        "{mode} {exec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

fn exported(d: &Daemon, region: &str) -> Vec<String> {
    d.client()
        .xemem_list()
        .unwrap()
        .into_iter()
        .filter_map(|s| s.record.name)
        .filter(|n| n.starts_with(region))
        .collect()
}

#[test]
fn every_mode_reports_its_counts_and_agrees_on_the_result() {
    let t = "every_mode_reports_its_counts_and_agrees_on_the_result";
    let Some(d) = daemon(t) else { return };

    let none = run(&d, "none", "async", "spectrum", "wl-none");
    assert!(none.analytics.is_none());
    assert_eq!((none.sim.steps, none.sim.publish.published), (STEPS, 0));
    let reference = none.sim.checksum;

    let stub = run(&d, "stub", "sync", "spectrum", "wl-stub");
    let a = stub.analytics.as_ref().unwrap();
    assert_eq!((stub.sim.publish.published, a.consumed), (0, 0));

    for (mode, kind) in [("spinlock", "spectrum"), ("xasm", "stream")] {
        for exec in ["sync", "async"] {
            let region = format!("wl-{mode}-{exec}");
            let r = run(&d, mode, exec, kind, &region);
            let a = r.analytics.as_ref().unwrap();
            let what = format!("{mode} {exec}: {r:?}");
            // The coupling never changes what the simulation computes.
            assert_eq!(r.sim.checksum.to_bits(), reference.to_bits(), "{what}");
            assert_eq!(r.sim.publish.published, STEPS, "{what}");
            assert_eq!(a.torn, 0, "{what}");
            assert!(r.sim.insitu_s > 0.0 && r.sim.share < 1.0, "{what}");
            if exec == "sync" {
                // Every step, in order.
                assert_eq!(
                    (a.consumed, a.first_step, a.last_step, a.skipped),
                    (STEPS, 1, STEPS, 0),
                    "{what}"
                );
            } else {
                assert!(a.consumed >= 1 && a.consumed <= STEPS, "{what}");
                assert_eq!(
                    a.consumed + a.skipped + a.first_step - 1,
                    a.last_step,
                    "{what}"
                );
            }
            if mode == "spinlock" {
                // The lock hands the final state over too.
                assert_eq!(a.last_step, STEPS, "{what}");
            }
            if mode == "xasm" {
                assert!(r.sim.publish.mechanism.is_some(), "{what}");
                let s = a.stream.unwrap();
                assert!(s.copy > 0.0 && s.triad > 0.0, "{what}");
            } else {
                let s = a.spectrum.as_ref().unwrap();
                assert_eq!(s.rows.len(), 3, "{what}");
                assert!(s.total_energy > 0.0, "{what}");
            }
            assert!(
                exported(&d, &region).is_empty(),
                "{region} left exported: {:?}",
                exported(&d, &region)
            );
        }
    }
}

#[test]
fn analytics_without_a_simulation_time_out_and_say_why() {
    let t = "analytics_without_a_simulation_time_out_and_say_why";
    let Some(d) = daemon(t) else { return };
    let out = insitu(
        &d,
        &[
            "analyze",
            "--mode",
            "xasm",
            "--region",
            "wl-nobody",
            "--timeout",
            "0.3",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wl-nobody.ctl") && err.contains("no simulation published"),
        "{err}"
    );

    let out = insitu(
        &d,
        &[
            "sim", "--mode", "xasm", "--region", "bad name", "--size", "4",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"bad name\""));
}

#[test]
fn analytics_of_the_wrong_mode_are_refused() {
    let t = "analytics_of_the_wrong_mode_are_refused";
    let Some(d) = daemon(t) else { return };
    // A simulation that waits for analytics (sync).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut sim = Kill(
        Command::new(INSITU)
            .args([
                "sim",
                "--mode",
                "spinlock",
                "--exec",
                "sync",
                "--region",
                "wl-wrong",
                "--size",
                "4",
                "--steps",
                "3",
                "--timeout",
                "20",
                "--quiet",
            ])
            .env("HOBBES_STATE_DIR", d.state_dir())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = insitu(
        &d,
        &[
            "analyze",
            "--mode",
            "xasm",
            "--region",
            "wl-wrong",
            "--timeout",
            "10",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("published in mode spinlock, not xasm"),
        "{err}"
    );
    // The right mode then consumes all three steps, and the simulation ends.
    let out = insitu(
        &d,
        &[
            "analyze",
            "--mode",
            "spinlock",
            "--region",
            "wl-wrong",
            "--json",
            "--timeout",
            "10",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: hobbes_workloads::AnalyticsReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (rep.consumed, rep.last_step, rep.mode),
        (3, 3, Mode::Spinlock)
    );
    assert!(sim.0.wait().unwrap().success());
}

#[test]
fn hpccg_publishes_every_iteration_and_converges() {
    let t = "hpccg_publishes_every_iteration_and_converges";
    let Some(d) = daemon(t) else { return };
    let out = insitu(
        &d,
        &[
            "run",
            "--workload",
            "hpccg",
            "--size",
            "10",
            "--steps",
            "40",
            "--mode",
            "spinlock",
            "--exec",
            "sync",
            "--kind",
            "stream",
            "--region",
            "wl-cg",
            "--json",
            "--quiet",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: PairReport = serde_json::from_slice(&out.stdout).unwrap();
    let a = r.analytics.unwrap();
    assert_eq!((r.sim.publish.published, a.consumed, a.torn), (40, 40, 0));
    assert!(r.sim.residual.unwrap() < 1e-8, "{:?}", r.sim.residual);
    // x -> 1 everywhere: the checksum of x approaches the number of points.
    assert!((r.sim.checksum - 1000.0).abs() < 1e-5, "{}", r.sim.checksum);
}

#[test]
fn report_aggregates_run_outputs_into_a_table_and_a_plot() {
    // Stub and none need no daemon.
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs.jsonl");
    let mut all = Vec::new();
    for (mode, size) in [
        ("none", "4"),
        ("stub", "4"),
        ("none", "6"),
        ("stub", "6"),
        ("stub", "6"),
    ] {
        let out = Command::new(INSITU)
            .args([
                "run", "--mode", mode, "--size", size, "--steps", "3", "--json", "--quiet",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        all.extend_from_slice(&out.stdout);
    }
    std::fs::write(&runs, all).unwrap();
    let svg = dir.path().join("share.svg");
    let out = Command::new(INSITU)
        .arg("report")
        .arg(&runs)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let stub6: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("stub async") && l.split_whitespace().nth(3) == Some("6"))
        .collect();
    assert_eq!(stub6.len(), 1, "{table}");
    assert!(
        table.lines().filter(|l| l.contains(" none ")).count() == 2,
        "{table}"
    );
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("stub async"));
    // Garbage is refused with the file named.
    std::fs::write(&runs, "{not json").unwrap();
    let out = Command::new(INSITU)
        .arg("report")
        .arg(&runs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("runs.jsonl"));
}

#[test]
fn a_sync_simulation_whose_analytics_are_killed_stops_with_an_error() {
    let t = "a_sync_simulation_whose_analytics_are_killed_stops_with_an_error";
    let Some(d) = daemon(t) else { return };
    /// Killed and reaped on drop unless taken.
    struct Kill(Option<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let spawn = |args: &[&str]| {
        Kill(Some(
            Command::new(INSITU)
                .args(args)
                .env("HOBBES_STATE_DIR", d.state_dir())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        ))
    };
    let mut sim = spawn(&[
        "sim",
        "--mode",
        "xasm",
        "--exec",
        "sync",
        "--region",
        "wl-kill",
        "--size",
        "4",
        "--steps",
        "100000",
        "--timeout",
        "2",
        "--quiet",
    ]);
    let ana = spawn(&[
        "analyze", "--mode", "xasm", "--region", "wl-kill", "--quiet",
    ]);
    // Version 3 exists only once the analytics acknowledged step 2.
    let nis = hobbes_client::NisReader::open(d.nis_dir()).unwrap();
    wait_for(
        "version wl-kill@3",
        std::time::Duration::from_secs(20),
        || nis.segment_by_name("wl-kill@3").unwrap(),
    );
    // SIGKILL: the analytics cannot say they are gone; the timeout tells.
    drop(ana);
    let out = sim.0.take().unwrap().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("wait for analytics wl-kill.ctl: timed out"),
        "{err}"
    );
}

/// `hobbes-insitu demo` (what `hobbes demo insitu` runs) against a running
/// daemon: two enclaves, every configuration, the report, the plot, the JSON;
/// nothing left behind.
#[test]
fn the_demo_runs_both_sides_in_two_enclaves_and_cleans_up() {
    let t = "the_demo_runs_both_sides_in_two_enclaves_and_cleans_up";
    let Some(d) = daemon(t) else { return };
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(INSITU)
        .args(["demo", "--json", "--socket"])
        .arg(d.socket())
        .args([
            "--sizes",
            "4,6",
            "--steps",
            "3",
            "--modes",
            "spinlock,stub",
            "--exec",
            "async",
            "--sim-memory",
            "256",
            "--analytics-memory",
            "256",
            "--out",
        ])
        .arg(out_dir.path())
        .env("HOBBES_STATE_DIR", d.state_dir())
        .env_remove("HOBBES_SOCKET")
        .env_remove("HOBBES_NIS")
        .output()
        .expect("run hobbes-insitu demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "[1/5] using the running leviathan",
        "[2/5]",
        "[4/5]",
        "[5/5]",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
    assert_eq!(stdout.matches("destroyed enclave").count(), 2, "{stdout}");
    // The JSON object comes last: the rows and the runs (none, stub, spinlock per size).
    let json = &stdout[stdout.find("\n{").expect("JSON at the end") + 1..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let runs: Vec<PairReport> = serde_json::from_value(v["runs"].clone()).unwrap();
    assert_eq!(runs.len(), 6, "{stdout}");
    assert!(runs.iter().all(|r| r.sim.steps == 3));
    let spin: Vec<_> = runs
        .iter()
        .filter(|r| r.sim.mode == Mode::Spinlock)
        .collect();
    assert_eq!(spin.len(), 2);
    assert!(spin
        .iter()
        .all(|r| r.analytics.as_ref().is_some_and(|a| a.torn == 0)));
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(6), "{stdout}");
    assert!(out_dir.path().join("insitu-share.svg").exists());
    assert!(out_dir.path().join("insitu-runs.json").exists());
    // Both enclaves are gone.
    let enclaves = d.client().list_enclaves().unwrap();
    assert!(enclaves.is_empty(), "{enclaves:?}");
}

#[test]
fn the_demo_refuses_bad_flags_before_connecting() {
    let out = Command::new(INSITU)
        .args(["demo", "--socket", "/nonexistent/leviathan.sock"])
        .args(["--exec", "later"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --exec \"later\": expected async, sync or both\n"
    );
    assert!(out.stdout.is_empty());
    // Usage errors exit 1 too (as `hobbes` does); help exits 0, showing the
    // command line `hobbes demo insitu` passes on.
    let out = Command::new(INSITU)
        .args(["demo", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(INSITU)
        .args(["demo", "--help"])
        .env("HOBBES_INSITU_DEMO_AS", "hobbes demo insitu")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("hobbes demo insitu [OPTIONS]"), "{help}");
    assert!(help.contains("--sizes"), "{help}");
}
