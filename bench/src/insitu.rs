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

/// Time steps per run: about a second of simulation per run, at least 8.
fn steps(size: usize) -> u64 {
    match size {
        s if s <= 12 => 40,
        s if s <= 16 => 20,
        s if s <= 24 => 10,
        _ => 8,
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

/// An unprivileged leviathan keeping every core we may use for the host: XEMEM and
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
    let cores: Vec<String> = hobbes_workloads::run::allowed_cpus()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let child = Command::new(&exe)
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--unprivileged", "--host-memory", "2048", "--host-cores"])
        .arg(cores.join(","))
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
    // One core each when the host has two (a privileged leviathan running
    // elsewhere on the node may have confined host tasks to one).
    let allowed = hobbes_workloads::run::allowed_cpus();
    let (sim_cpu, ana_cpu) = if allowed.len() >= 2 {
        (Some(allowed[1]), Some(allowed[0]))
    } else {
        println!(
            "WARNING: host tasks may use only cpus {allowed:?} (of {} online): the simulation and the analytics share a core",
            online_cores()
        );
        (None, None)
    };
    std::fs::create_dir_all(&o.out).with_context(|| format!("create {}", o.out.display()))?;
    let jsonl = o.out.join("insitu-runs.jsonl");
    let mut log = std::fs::File::create(&jsonl)?;
    let started = Instant::now();
    let configs = configs();
    let mut runs: Vec<PairReport> = Vec::new();
    println!(
        "\n== insitu: SNAP-style simulation + spectrum analytics, {} reps x {} sizes x {} configs (sim on cpu {:?}, analytics on cpu {:?})",
        o.reps,
        o.sizes.len(),
        configs.len(),
        sim_cpu,
        ana_cpu
    );
    for rep in 0..o.reps {
        for &size in &o.sizes {
            // Alternate: the order of the configurations rotates every repetition.
            for i in 0..configs.len() {
                let (mode, exec) = configs[(i + rep) % configs.len()];
                let region = format!("bench-insitu-{}-{size}-{rep}-{i}", std::process::id());
                let mut run = Run::new(Workload::Snap, size, steps(size), mode, exec, &region);
                run.cpu = sim_cpu;
                let mut ana = Analyze::new(AnalyticsKind::Spectrum, &region, mode);
                ana.cpu = ana_cpu;
                let r = run_pair(insitu, &run, &ana, true)
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
