//! `hobbes-bench insitu`: the composed SNAP-style run of the XASM paper
//! (Figures 7 and 8). `hobbes-insitu run` starts the simulation (pinned to
//! one core) and the spectrum analytics (the other core) as two processes;
//! per problem size, every mode (none, stub, xasm, spinlock) in both
//! executions (sync, async), alternating, repeated; medians; the in situ
//! overhead is the time-step loop against the isolated run (mode none) of
//! the same size. Writes DIR/insitu-share.svg (in situ share against
//! problem size per mode) and DIR/insitu-runs.jsonl (every run, for
//! `hobbes-insitu report`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hobbes_client::Client;
use hobbes_workloads::report::{self, Row};
use hobbes_workloads::{run_pair, AnalyticsKind, Analyze, Exec, Mode, PairReport, Run, Workload};

use super::{online_cores, BenchDaemon};

/// SNAP cells per dimension: from a few milliseconds of compute per step to
/// a few hundred (the paper's range, scaled to this node).
const SIZES: [usize; 5] = [8, 12, 16, 24, 32];
const REPS: usize = 3;
/// xasm's in situ overhead target at the largest sizes (the paper's Figure 8).
const TARGET: f64 = 0.03;

/// Time steps per run: a second or two of simulation per run on this node
/// (the first step, which publishes every page, weighs less with more).
fn steps(size: usize) -> u64 {
    match size {
        s if s <= 8 => 60,
        s if s <= 12 => 30,
        s if s <= 16 => 16,
        s if s <= 24 => 8,
        _ => 5,
    }
}

struct Opts {
    out: PathBuf,
    reps: usize,
    sizes: Vec<usize>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("results"),
        reps: REPS,
        sizes: SIZES.to_vec(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--out" => o.out = PathBuf::from(val()?),
            "--reps" => o.reps = val()?.parse().context("--reps N")?,
            "--sizes" => {
                o.sizes = val()?
                    .split(',')
                    .map(|s| s.parse().with_context(|| format!("--sizes: {s:?}")))
                    .collect::<Result<_>>()?
            }
            _ => bail!("usage: hobbes-bench insitu [--out DIR] [--reps N] [--sizes 8,16,...]"),
        }
    }
    ensure!(
        o.reps >= 1 && !o.sizes.is_empty(),
        "need --reps >= 1 and sizes"
    );
    Ok(o)
}

/// The configurations of one size, isolated run first.
fn configs() -> Vec<(Mode, Exec)> {
    let mut v = vec![(Mode::None, Exec::Async)];
    for m in [Mode::Stub, Mode::Xasm, Mode::Spinlock] {
        for e in [Exec::Sync, Exec::Async] {
            v.push((m, e));
        }
    }
    v
}

pub fn main(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let insitu = std::env::current_exe()?.with_file_name("hobbes-insitu");
    if !insitu.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p hobbes-workloads`",
            insitu.display()
        );
    }
    let d = start_daemon()?;
    std::env::set_var(hobbes_client::proto::ENV_STATE_DIR, d.dir.path());
    std::env::remove_var(hobbes_client::proto::ENV_SOCKET);
    std::env::remove_var(hobbes_client::proto::ENV_NIS);
    bench(&o, &insitu)
}

/// An unprivileged leviathan (it confines nothing): XEMEM and
/// XASM need only its name server, and the simulation and the analytics
/// are pinned to one core each.
fn start_daemon() -> Result<BenchDaemon> {
    let exe = std::env::current_exe()?.with_file_name("leviathan");
    if !exe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p leviathan -p hobbes-bench`",
            exe.display()
        );
    }
    let dir = tempfile::Builder::new().prefix("hobbes-bench-").tempdir()?;
    let log = std::fs::File::create(dir.path().join("leviathan.log"))?;
    let child = Command::new(&exe)
        .arg("--state-dir")
        .arg(dir.path())
        // Unprivileged, the host's cores are bookkeeping only: nothing is confined.
        .args([
            "--unprivileged",
            "--host-cores",
            "0",
            "--host-memory",
            "2048",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let d = BenchDaemon { dir, child, exe };
    let start = Instant::now();
    while Client::connect(d.socket())
        .and_then(|mut c| c.status())
        .is_err()
    {
        if start.elapsed() > Duration::from_secs(15) {
            bail!("leviathan did not start; see its log");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "leviathan running in {} (unprivileged)",
        d.dir.path().display()
    );
    Ok(d)
}

fn bench(o: &Opts, insitu: &Path) -> Result<()> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("create {}", o.out.display()))?;
    let jsonl = o.out.join("insitu-runs.jsonl");
    let mut log = std::fs::File::create(&jsonl)?;
    let started = Instant::now();
    let configs = configs();
    let mut runs: Vec<PairReport> = Vec::new();
    println!(
        "\n== insitu: SNAP-style simulation + spectrum analytics, {} reps x {} sizes x {} configs (simulation and analytics pinned to a core each)",
        o.reps,
        o.sizes.len(),
        configs.len(),
    );
    let mut shared_core_runs = 0;
    for rep in 0..o.reps {
        for &size in &o.sizes {
            // Alternate: the order of the configurations rotates every repetition.
            for i in 0..configs.len() {
                let (mode, exec) = configs[(i + rep) % configs.len()];
                let region = format!("bench-insitu-{}-{size}-{rep}-{i}", std::process::id());
                let run = Run::new(Workload::Snap, size, steps(size), mode, exec, &region);
                let ana = Analyze::new(AnalyticsKind::Spectrum, &region, mode);
                let r = run_pinned(insitu, run, ana, &mut shared_core_runs)
                    .with_context(|| format!("size {size} {mode} {exec}"))?;
                writeln!(log, "{}", serde_json::to_string(&r)?)?;
                runs.push(r);
            }
            eprint!(".");
        }
        eprintln!(
            " rep {}/{} ({:.0} s)",
            rep + 1,
            o.reps,
            started.elapsed().as_secs_f64()
        );
    }
    if shared_core_runs > 0 {
        println!(
            "WARNING: {shared_core_runs} runs had one core for both processes (a privileged leviathan elsewhere confined host tasks)"
        );
    }
    let rows = report::rows(&runs);
    println!("{}", report::table(&rows));
    let svg = o.out.join("insitu-share.svg");
    report::plot_share(
        &rows,
        &svg,
        "SNAP-style run: time in situ, share of the simulation's run time (medians)",
    )?;
    verdict(&rows, o.sizes.iter().max().copied().unwrap_or(0));
    println!(
        "\ninsitu bench took {:.0} s; plot: {}; runs: {}",
        started.elapsed().as_secs_f64(),
        svg.display(),
        jsonl.display()
    );
    Ok(())
}

/// Run with the simulation on one core and the analytics on the other. A
/// privileged leviathan started elsewhere on the node (another test or
/// benchmark) confines host tasks to its host cores for as long as it runs:
/// then wait for it (up to two minutes), retry a run it disturbed, and as a
/// last resort run unpinned, counting such runs.
fn run_pinned(
    insitu: &Path,
    mut run: Run,
    mut ana: Analyze,
    shared: &mut usize,
) -> Result<PairReport> {
    let mut last = None;
    let base = run.region.clone();
    for attempt in 0..3 {
        // A fresh name per attempt: nothing of a failed one can collide.
        run.region = format!("{base}-{attempt}");
        ana.region = run.region.clone();
        let start = Instant::now();
        let mut cpus = hobbes_workloads::run::allowed_cpus();
        while cpus.len() < 2 && start.elapsed() < Duration::from_secs(120) && online_cores() >= 2 {
            std::thread::sleep(Duration::from_millis(200));
            cpus = hobbes_workloads::run::allowed_cpus();
        }
        if cpus.len() >= 2 {
            (run.cpu, ana.cpu) = (Some(cpus[1]), Some(cpus[0]));
        } else {
            (run.cpu, ana.cpu) = (None, None);
            *shared += 1;
        }
        match run_pair(insitu, &run, &ana, true) {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three attempts").into())
}

/// The targets at the largest size: xasm's overhead and share under 3%,
/// with stub and spinlock as floor and ceiling.
fn verdict(rows: &[Row], largest: usize) {
    println!("\nat the largest size ({largest} cells per dimension):");
    for r in rows
        .iter()
        .filter(|r| r.size == largest && r.mode != Mode::None)
    {
        let overhead = r.overhead.unwrap_or(f64::NAN);
        let target = if r.mode == Mode::Xasm {
            let met = r.share < TARGET && overhead < TARGET;
            format!("target < 3%: {}", if met { "met" } else { "missed" })
        } else if r.mode == Mode::Stub {
            "floor".to_string()
        } else {
            "ceiling".to_string()
        };
        println!(
            "  {:<16} in situ {:>9.1} µs/step, share {:>7.3}%, overhead {:>+7.2}%   {target}",
            r.label(),
            r.per_step_insitu_us,
            r.share * 100.0,
            overhead * 100.0
        );
    }
}
