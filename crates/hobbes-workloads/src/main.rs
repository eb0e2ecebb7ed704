//! `hobbes-insitu`: the in situ workloads from the command line.
//!
//! ```text
//! hobbes-insitu sim --workload snap --size 16 --steps 20 --mode xasm --exec sync --region R
//! hobbes-insitu analyze --kind spectrum --region R --mode xasm
//! hobbes-insitu run --workload snap --size 16 --steps 20 --mode xasm --exec async --kind spectrum
//! hobbes-insitu report runs.json... [--svg share.svg]
//! hobbes-insitu demo [--sizes 12,16 --modes xasm --exec async ...]   # = hobbes demo insitu
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use hobbes_workloads::demo::{self, DemoArgs};
use hobbes_workloads::report;
use hobbes_workloads::{
    run_analytics, run_pair, run_sim, AnalyticsKind, Analyze, CouplingOptions, Exec, Mode,
    PairReport, Run, Workload,
};

#[derive(Parser)]
#[command(
    name = "hobbes-insitu",
    about = "In situ workloads: a simulation publishing its state every step, analytics reading it",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the simulation, publishing its state through the coupling mode.
    Sim(SimArgs),
    /// Run the analytics on a region another process publishes.
    Analyze(AnalyzeArgs),
    /// Run the simulation and the analytics as two processes on this host.
    Run(RunArgs),
    /// Aggregate `--json` outputs of `run` (files, or - for stdin) into the
    /// table, and optionally the share-vs-size plot.
    Report(ReportArgs),
    /// The in situ workflow across two enclaves of leviathan (`hobbes demo
    /// insitu` runs this): a simulation in one enclave publishing its state
    /// every step, analytics in another reading it; every problem size in
    /// every coupling mode; a report and a plot of the in situ share against
    /// problem size. Starts an embedded leviathan if none answers.
    // A flag given twice (`hobbes --json demo insitu --json`) is not an error.
    #[command(args_override_self = true)]
    Demo(DemoArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Print one JSON object (the report) on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Pin the process to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Longest single wait (the other side, a lock, an acknowledgement), seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

#[derive(Args, Clone)]
struct SimArgs {
    #[arg(long, value_enum, default_value_t = Workload::Snap)]
    workload: Workload,
    /// Cells (snap) or grid points (hpccg) per dimension.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Time steps (snap) or CG iterations (hpccg); one publication each.
    #[arg(long, default_value_t = 20)]
    steps: u64,
    #[arg(long, value_enum)]
    mode: Mode,
    /// sync: wait until the analytics consumed each step; async: never wait.
    #[arg(long, value_enum, default_value_t = Exec::Async)]
    exec: Exec,
    /// Name of the published region (XEMEM names R, R@N, R.ctl).
    #[arg(long)]
    region: String,
    /// snap: energy groups (SNAP's sample input: 4).
    #[arg(long, default_value_t = 4)]
    groups: usize,
    /// snap: angles per octant (SNAP's sample input: 10).
    #[arg(long, default_value_t = 10)]
    angles: usize,
    /// snap: source iterations per time step (SNAP's sample input: 5).
    #[arg(long, default_value_t = 5)]
    inners: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct AnalyzeArgs {
    #[arg(long, value_enum, default_value_t = AnalyticsKind::Spectrum)]
    kind: AnalyticsKind,
    #[arg(long)]
    region: String,
    /// The simulation's mode.
    #[arg(long, value_enum)]
    mode: Mode,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value_t = Workload::Snap)]
    workload: Workload,
    #[arg(long, default_value_t = 16)]
    size: usize,
    #[arg(long, default_value_t = 20)]
    steps: u64,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, value_enum, default_value_t = Exec::Async)]
    exec: Exec,
    /// Default: `insitu-<pid>`.
    #[arg(long)]
    region: Option<String>,
    #[arg(long, value_enum, default_value_t = AnalyticsKind::Spectrum)]
    kind: AnalyticsKind,
    #[arg(long, default_value_t = 4)]
    groups: usize,
    #[arg(long, default_value_t = 10)]
    angles: usize,
    #[arg(long, default_value_t = 5)]
    inners: usize,
    /// Pin the simulation to this CPU.
    #[arg(long)]
    sim_cpu: Option<usize>,
    /// Pin the analytics to this CPU.
    #[arg(long)]
    analytics_cpu: Option<usize>,
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// Files holding `run --json` objects (one or more per file); - is stdin.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Write the in-situ share against problem size here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn timeout(secs: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs < 1e6) {
        bail!("--timeout {secs}: give seconds, more than 0");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn coupling(secs: f64) -> Result<CouplingOptions> {
    Ok(CouplingOptions {
        timeout: timeout(secs)?,
        ..Default::default()
    })
}

fn main() {
    // `demo` behaves as `hobbes demo insitu` always did: usage errors exit 1,
    // errors are one `error: ...` line, `| head` ends quietly.
    let is_demo = std::env::args_os().nth(1).is_some_and(|a| a == "demo");
    if is_demo {
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let mut command = Cli::command();
    // Run by `hobbes demo insitu`: usage lines show that command line.
    if let Some(shown) = std::env::var_os(demo::SHOWN_AS_ENV) {
        std::env::remove_var(demo::SHOWN_AS_ENV);
        let shown = shown.to_string_lossy().into_owned();
        command =
            command.mut_subcommand("demo", |c| c.override_usage(format!("{shown} [OPTIONS]")));
    }
    let cli = match command
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) if is_demo => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
        Err(e) => e.exit(),
    };
    let result = match cli.cmd {
        Cmd::Sim(a) => sim(a),
        Cmd::Analyze(a) => analyze(a),
        Cmd::Run(a) => run(a),
        Cmd::Report(a) => report_cmd(a),
        Cmd::Demo(a) => match demo::run(a) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("error: {}", demo::message(&e));
                std::process::exit(1);
            }
        },
    };
    if let Err(e) = result {
        eprintln!("hobbes-insitu: {e:#}");
        std::process::exit(1);
    }
}

/// Throttled progress lines on stderr.
struct Ticker {
    last: Instant,
    quiet: bool,
}

impl Ticker {
    fn new(quiet: bool) -> Ticker {
        Ticker {
            last: Instant::now(),
            quiet,
        }
    }
    fn tick(&mut self, line: impl FnOnce() -> String) {
        if !self.quiet && self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            let _ = writeln!(std::io::stderr(), "{}", line());
        }
    }
}

fn sim(a: SimArgs) -> Result<()> {
    let mut r = Run::new(a.workload, a.size, a.steps, a.mode, a.exec, &a.region);
    r.groups = a.groups;
    r.angles = a.angles;
    r.inners = a.inners;
    r.cpu = a.common.cpu;
    r.coupling = coupling(a.common.timeout)?;
    let mut t = Ticker::new(a.common.quiet);
    let label = format!(
        "sim {} n={} {} {}",
        a.workload.name(),
        a.size,
        a.mode,
        a.exec
    );
    let rep = run_sim(&r, &mut |p| {
        t.tick(|| {
            format!(
                "{label}: step {}/{} after {:.1} s, in situ {:.2}%",
                p.step,
                p.steps,
                p.elapsed.as_secs_f64(),
                100.0 * p.insitu.as_secs_f64() / p.elapsed.as_secs_f64().max(1e-9)
            )
        })
    })?;
    if a.common.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        println!(
            "{label}: {} steps in {:.3} s, compute {:.3} s, in situ {:.3} s ({:.1} µs/step, {:.3}%), published {}",
            rep.steps,
            rep.total_s,
            rep.compute_s,
            rep.insitu_s,
            rep.per_step_insitu_us,
            rep.share * 100.0,
            rep.publish.published
        );
        if let Some(res) = rep.residual {
            println!("  CG relative residual {res:.3e}");
        }
    }
    Ok(())
}

fn analyze(a: AnalyzeArgs) -> Result<()> {
    let mut an = Analyze::new(a.kind, &a.region, a.mode);
    an.cpu = a.common.cpu;
    an.coupling = coupling(a.common.timeout)?;
    let mut t = Ticker::new(a.common.quiet);
    let label = format!("analyze {} {} {}", a.kind.name(), a.mode, a.region);
    let rep = run_analytics(&an, &mut |step, n| {
        t.tick(|| format!("{label}: step {step}, {n} states analysed"))
    })?;
    if a.common.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        println!(
            "{label}: consumed {} (steps {}..{}, {} skipped, {} torn), analysis {:.1} µs each",
            rep.consumed, rep.first_step, rep.last_step, rep.skipped, rep.torn, rep.per_version_us
        );
        if let Some(s) = &rep.spectrum {
            let peaks: Vec<usize> = s.rows.iter().map(|r| r.peak_bin).collect();
            println!(
                "  spectrum: total energy {:.6e}, peak bins {peaks:?}",
                s.total_energy
            );
        }
        if let Some(s) = &rep.stream {
            println!(
                "  STREAM GB/s: copy {:.2} scale {:.2} add {:.2} triad {:.2}",
                s.copy, s.scale, s.add, s.triad
            );
        }
    }
    Ok(())
}

fn run(a: RunArgs) -> Result<()> {
    let region = a
        .region
        .unwrap_or_else(|| format!("insitu-{}", std::process::id()));
    let opts = coupling(a.timeout)?;
    let mut r = Run::new(a.workload, a.size, a.steps, a.mode, a.exec, &region);
    r.groups = a.groups;
    r.angles = a.angles;
    r.inners = a.inners;
    r.cpu = a.sim_cpu;
    r.coupling = opts.clone();
    let mut an = Analyze::new(a.kind, &region, a.mode);
    an.cpu = a.analytics_cpu;
    an.coupling = opts;
    let exe = std::env::current_exe().context("find the hobbes-insitu binary")?;
    let rep = run_pair(&exe, &r, &an, a.quiet)?;
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        print!(
            "{}",
            report::table(&report::rows(std::slice::from_ref(&rep)))
        );
    }
    Ok(())
}

fn report_cmd(a: ReportArgs) -> Result<()> {
    let mut runs: Vec<PairReport> = Vec::new();
    for f in &a.files {
        let text = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("read stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?
        };
        for (i, v) in serde_json::Deserializer::from_str(&text)
            .into_iter::<PairReport>()
            .enumerate()
        {
            runs.push(v.with_context(|| format!("{}: report {}", f.display(), i + 1))?);
        }
    }
    let rows = report::rows(&runs);
    print!("{}", report::table(&rows));
    if let Some(svg) = a.svg {
        report::plot_share(
            &rows,
            &svg,
            "Time in situ, share of the simulation's run time",
        )?;
        println!("plot: {}", svg.display());
    }
    Ok(())
}
