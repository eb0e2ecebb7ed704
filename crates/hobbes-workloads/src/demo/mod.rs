//! `hobbes-insitu demo` (which `hobbes demo insitu` runs): the composed in
//! situ workflow end to end. A simulation (SNAP- or HPCCG-style) runs in one
//! native enclave and publishes its state every time step; analytics
//! (spectrum or STREAM) run in another enclave and read it. Each problem size
//! runs in every coupling mode (none = isolated, stub, XASM snapshots,
//! spinlock over XEMEM); the end is a report (steps, versions
//! published/consumed, in situ time per step and its share of the
//! simulation's time, overhead against the isolated run) and a plot of the
//! share against problem size, like the XASM paper's Figures 7 and 8.
//!
//! Uses the running daemon or starts an embedded one, and undoes everything
//! it made on the way out, error paths included (guards below). Only
//! `hobbes-client` talks to leviathan; the node shell (`hobbes`) does not link
//! this crate, it execs `hobbes-insitu demo`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use hobbes_client::Client;
use hobbes_proto::model::{AppRecord, EnclaveId, EnclaveKind, EnclaveRecord, ExitStatus};
use hobbes_proto::msg::{EnclaveRef, ErrorCode, LaunchSpec, Stream};
use hobbes_proto::spec::{CpuRequest, EnclaveSpec, MemRequest};

use crate::report;
use crate::{
    AnalyticsKind, AnalyticsReport, Analyze, Exec, Mode, PairReport, Run, SimReport, Workload,
};
use hobbes_embedded::{self as embedded, Embedded};

/// The environment variable through which `hobbes demo insitu` tells
/// `hobbes-insitu demo` the command line users typed, for its usage lines.
pub const SHOWN_AS_ENV: &str = "HOBBES_INSITU_DEMO_AS";

/// The flags of `hobbes-insitu demo`, which are those of `hobbes demo insitu`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// leviathan's socket (default: $HOBBES_SOCKET, else <state dir>/leviathan.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Also print the rows and runs as JSON at the end.
    #[arg(long)]
    pub json: bool,
    /// The simulation.
    #[arg(long, value_enum, default_value_t = Workload::Snap)]
    pub workload: Workload,
    /// The analytics.
    #[arg(long, value_enum, default_value_t = AnalyticsKind::Spectrum)]
    pub kind: AnalyticsKind,
    /// Problem sizes (cells or grid points per dimension), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [12, 16, 24, 32])]
    pub sizes: Vec<usize>,
    /// Time steps per run.
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Coupling modes, comma-separated; the isolated run (none) is always included.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::None, Mode::Stub, Mode::Xasm, Mode::Spinlock])]
    pub modes: Vec<Mode>,
    /// Execution: async (the simulation never waits), sync (it waits for the
    /// analytics every step) or both.
    #[arg(long, default_value = "both")]
    pub exec: String,
    /// Runs of each configuration (the report shows medians).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Memory of the simulation's enclave, MiB.
    #[arg(long, default_value_t = 1024)]
    pub sim_memory: u64,
    /// Memory of the analytics' enclave, MiB.
    #[arg(long, default_value_t = 512)]
    pub analytics_memory: u64,
    /// Where the plot (insitu-share.svg) and the runs (insitu-runs.json) go.
    #[arg(long, default_value = "insitu-report")]
    pub out: PathBuf,
}

const STEPS: u32 = 5;
/// The longest any wait inside a run may take (the other side appearing, a
/// lock, an acknowledgement) before the run is an error.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn step(n: u32, what: impl std::fmt::Display) {
    println!("[{n}/{STEPS}] {what}");
}

/// Run the demo; returns the exit code. `hobbes-insitu` itself is what runs
/// in the enclaves.
pub fn run(args: DemoArgs) -> Result<i32> {
    let insitu = std::env::current_exe().context("cannot find the hobbes-insitu binary")?;
    let plan = Plan::from_args(&args)?;
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(hobbes_client::paths::socket);
    let (client, daemon, socket) = embedded::connect_or_start(&socket, |what| step(1, what))?;
    let mut demo = Insitu {
        socket,
        client,
        enclaves: Vec::new(),
        daemon,
    };
    let result = demo.go(&insitu, &plan, &args);
    demo.finish();
    let runs = result?;
    let rows = report::rows(&runs);
    let torn: u64 = rows.iter().map(|r| r.torn).sum();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "rows": rows, "runs": runs }))?
        );
    }
    if torn > 0 {
        bail!("{torn} published states were read torn: the coupling is broken");
    }
    Ok(0)
}

/// What to run: every size in every mode (isolated first at each size, so
/// overheads have their base), `repeat` times.
struct Plan {
    workload: Workload,
    kind: AnalyticsKind,
    sizes: Vec<usize>,
    steps: u64,
    modes: Vec<Mode>,
    execs: Vec<Exec>,
    repeat: usize,
}

impl Plan {
    fn from_args(a: &DemoArgs) -> Result<Plan> {
        let mut modes = a.modes.clone();
        if !modes.contains(&Mode::None) {
            // The isolated run is the base of every overhead.
            modes.insert(0, Mode::None);
        }
        modes.sort_by_key(|m| *m as u8);
        modes.dedup();
        let execs = match a.exec.as_str() {
            "async" => vec![Exec::Async],
            "sync" => vec![Exec::Sync],
            "both" => vec![Exec::Async, Exec::Sync],
            other => bail!("--exec {other:?}: expected async, sync or both"),
        };
        if a.sizes.is_empty() || a.repeat == 0 {
            bail!("--sizes and --repeat must not be empty or zero");
        }
        let plan = Plan {
            workload: a.workload,
            kind: a.kind,
            sizes: a.sizes.clone(),
            steps: a.steps,
            modes,
            execs,
            repeat: a.repeat,
        };
        // Refuse bad numbers before any enclave exists.
        for &size in &plan.sizes {
            plan.run(size, Mode::Stub, Exec::Async).validate()?;
        }
        Ok(plan)
    }

    fn run(&self, size: usize, mode: Mode, exec: Exec) -> Run {
        let mut run = Run::new(
            self.workload,
            size,
            self.steps,
            mode,
            exec,
            &format!("insitu-{}-{size}-{}", std::process::id(), mode.name()),
        );
        run.coupling.timeout = RUN_TIMEOUT;
        run
    }

    /// (size, mode, exec) in running order.
    fn configs(&self) -> Vec<(usize, Mode, Exec)> {
        let mut out = Vec::new();
        for _ in 0..self.repeat {
            for &size in &self.sizes {
                for &mode in &self.modes {
                    let execs: &[Exec] = if mode == Mode::None {
                        &[Exec::Async]
                    } else {
                        &self.execs
                    };
                    for &exec in execs {
                        out.push((size, mode, exec));
                    }
                }
            }
        }
        out
    }
}

/// The demo's resources; dropping it destroys the enclaves, then stops the
/// embedded daemon (if any).
struct Insitu {
    socket: PathBuf,
    client: Client,
    enclaves: Vec<EnclaveId>,
    daemon: Option<Embedded>,
}

impl Insitu {
    fn go(&mut self, insitu: &Path, plan: &Plan, args: &DemoArgs) -> Result<Vec<PairReport>> {
        let st = self.client.status()?;
        if !st.header.privileged {
            println!("      note: leviathan is not root, so the enclaves will NOT be isolated");
        }
        // (2) Two enclaves: the simulation's exclusive, the analytics' too if
        // a core is left (else shared with the host, and said so).
        step(2, "creating two native enclaves: simulation and analytics");
        let tag = std::process::id();
        let sim = self.create(&format!("insitu-sim-{tag}"), args.sim_memory)?;
        let ana = self.create(&format!("insitu-ana-{tag}"), args.analytics_memory)?;

        // (3) Every configuration, the simulation in one enclave, the
        // analytics in the other.
        let configs = plan.configs();
        step(
            3,
            format_args!(
                "running {} {} step(s) x {} size(s) x modes [{}] ({} runs); analytics: {}",
                plan.workload.name(),
                plan.steps,
                plan.sizes.len(),
                plan.modes
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                configs.len(),
                plan.kind.name()
            ),
        );
        let started = Instant::now();
        let mut runs = Vec::new();
        for (i, &(size, mode, exec)) in configs.iter().enumerate() {
            let run = plan.run(size, mode, exec);
            let mut analyze = Analyze::new(plan.kind, &run.region, mode);
            analyze.coupling.timeout = RUN_TIMEOUT;
            let label = match mode {
                Mode::None => "none (isolated)".to_string(),
                m => format!("{} {}", m.name(), exec.name()),
            };
            print!(
                "      [{:>2}/{}] size {size:>3} {label:<16} ",
                i + 1,
                configs.len()
            );
            flush();
            let pair = self.run_pair(insitu, &sim, &ana, &run, &analyze)?;
            let consumed = pair.analytics.as_ref().map_or(0, |a| a.consumed);
            println!(
                "loop {:>7.3} s, in situ {:>8.1} µs/step ({:.3}%), published {}, consumed {}",
                pair.sim.total_s,
                pair.sim.per_step_insitu_us,
                pair.sim.share * 100.0,
                pair.sim.publish.published,
                consumed
            );
            runs.push(pair);
        }
        println!(
            "      all runs done in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // (4) The report and the plot.
        step(4, "report (medians per configuration)");
        let rows = report::rows(&runs);
        for line in report::table(&rows).lines() {
            println!("      {line}");
        }
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        let svg = args.out.join("insitu-share.svg");
        report::plot_share(
            &rows,
            &svg,
            &format!(
                "{} + {}: in situ share of the run time vs problem size",
                plan.workload.name(),
                plan.kind.name()
            ),
        )?;
        let json = args.out.join("insitu-runs.json");
        std::fs::write(&json, serde_json::to_vec_pretty(&runs)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
        println!("      plot: {}", svg.display());
        println!(
            "      runs: {} (`hobbes-insitu report {}` re-aggregates them)",
            json.display(),
            json.display()
        );
        Ok(runs)
    }

    fn create(&mut self, name: &str, memory_mib: u64) -> Result<EnclaveRecord> {
        let spec = |shared| EnclaveSpec {
            name: name.to_string(),
            kind: EnclaveKind::Native,
            shared,
            host_ipc: false,
            cpus: CpuRequest {
                count: 1,
                ..Default::default()
            },
            memory: MemRequest {
                size_mib: memory_mib,
                ..Default::default()
            },
            vm: None,
        };
        let rec = match self.client.create_enclave(spec(false)) {
            Err(e)
                if e.code() == Some(ErrorCode::Overcommit)
                    && self.client.status()?.cores_free == 0 =>
            {
                println!("      {name}: no free core left: SHARED with the host (pinned to a host core, NOT isolated)");
                self.client.create_enclave(spec(true))?
            }
            other => other?,
        };
        self.enclaves.push(rec.id);
        for line in hobbes_client::human::describe_enclave(&rec) {
            println!("      {line}");
        }
        Ok(rec)
    }

    /// The simulation in `sim`, the analytics (unless isolated) in `ana`,
    /// concurrently; both reports. A failure on one side kills the other.
    fn run_pair(
        &self,
        insitu: &Path,
        sim: &EnclaveRecord,
        ana: &EnclaveRecord,
        run: &Run,
        analyze: &Analyze,
    ) -> Result<PairReport> {
        let sim_argv = argv(insitu, run.sim_args());
        let ana_argv = argv(insitu, analyze.args());
        std::thread::scope(|s| {
            let (started_tx, started_rx) = mpsc::channel();
            let sim_side = s.spawn(|| launch(&self.socket, sim.id, "sim", sim_argv, None));
            let ana_side = (run.mode != Mode::None).then(|| {
                s.spawn(move || {
                    launch(
                        &self.socket,
                        ana.id,
                        "analytics",
                        ana_argv,
                        Some(started_tx),
                    )
                })
            });
            let sim_out = sim_side
                .join()
                .map_err(|_| anyhow!("the simulation's launcher thread panicked"))?;
            let Some(ana_side) = ana_side else {
                return Ok(PairReport {
                    sim: parse::<SimReport>("simulation", sim_out?)?,
                    analytics: None,
                });
            };
            if sim_out.is_err() {
                // The analytics would wait for states that never come.
                if let Ok(app) = started_rx.recv_timeout(RUN_TIMEOUT) {
                    if let Ok(mut c) = Client::connect(&self.socket) {
                        let _ = c.kill_app(app, libc::SIGKILL);
                    }
                }
            }
            let ana_out = ana_side
                .join()
                .map_err(|_| anyhow!("the analytics' launcher thread panicked"))?;
            let sim = parse::<SimReport>("simulation", sim_out?)?;
            let analytics = parse::<AnalyticsReport>("analytics", ana_out?)?;
            Ok(PairReport {
                sim,
                analytics: Some(analytics),
            })
        })
    }

    /// (5) Undo everything; also what `drop` does after an error.
    fn finish(&mut self) {
        if self.enclaves.is_empty() && self.daemon.is_none() {
            return;
        }
        step(5, "cleaning up");
        hobbes_embedded::destroy_enclaves(&self.socket, std::mem::take(&mut self.enclaves));
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop();
        }
    }
}

impl Drop for Insitu {
    fn drop(&mut self) {
        self.finish();
    }
}

fn argv(exe: &Path, args: Vec<String>) -> Vec<String> {
    let mut v = vec![exe.display().to_string()];
    v.extend(args);
    v.extend(["--json".to_string(), "--quiet".to_string()]);
    v
}

/// What one side printed, once it exited 0.
struct Output {
    what: &'static str,
    stdout: Vec<u8>,
}

/// Launch `argv` in `enclave` on a connection of its own and collect its
/// output until it ends; its id goes to `started` once it runs.
fn launch(
    socket: &Path,
    enclave: EnclaveId,
    what: &'static str,
    argv: Vec<String>,
    started: Option<mpsc::Sender<u64>>,
) -> Result<Output> {
    let mut client = Client::connect(socket)?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let spec = LaunchSpec {
        enclave: EnclaveRef::Id(enclave),
        name: Some(format!("insitu-{what}")),
        argv,
        env: Vec::new(),
        cwd: None,
        stream: true,
    };
    let rec: AppRecord = client.launch_streaming(
        spec,
        |app| {
            if let Some(tx) = &started {
                let _ = tx.send(app.id);
            }
        },
        |stream, data| match stream {
            Stream::Stdout => stdout.extend_from_slice(data),
            Stream::Stderr => stderr.extend_from_slice(data),
        },
    )?;
    match rec.exit {
        Some(ExitStatus::Code(0)) => Ok(Output { what, stdout }),
        other => {
            let status = other.map_or_else(|| format!("{:?}", rec.state), |e| e.to_string());
            bail!(
                "the {what} (app {} in enclave {enclave}) ended with {status}: {}",
                rec.id,
                String::from_utf8_lossy(&stderr).trim()
            )
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, out: Output) -> Result<T> {
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the {what}'s report ({}) is not what hobbes-insitu --json prints: {:?}",
            out.what,
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// An error and its causes on one line, skipping causes the message already
/// quotes (client errors embed their source in their own text), as `hobbes`
/// prints them.
pub fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg = format!("{msg}: {cause}");
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DemoArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))?;
        Plan::from_args(&cli.args)
    }

    #[test]
    fn defaults_run_every_mode_at_every_size() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.sizes, [12, 16, 24, 32]);
        assert_eq!(
            p.modes,
            [Mode::None, Mode::Stub, Mode::Xasm, Mode::Spinlock]
        );
        // Isolated once per size, the three coupled modes in both executions.
        assert_eq!(p.configs().len(), 4 * (1 + 3 * 2));
        assert_eq!(p.configs()[0], (12, Mode::None, Exec::Async));
    }

    #[test]
    fn the_isolated_run_is_always_included_first() {
        let p = plan(&[
            "--modes",
            "xasm,stub",
            "--exec",
            "sync",
            "--sizes",
            "8",
            "--repeat",
            "2",
        ])
        .unwrap();
        assert_eq!(p.modes, [Mode::None, Mode::Stub, Mode::Xasm]);
        assert_eq!(
            p.configs(),
            [
                (8, Mode::None, Exec::Async),
                (8, Mode::Stub, Exec::Sync),
                (8, Mode::Xasm, Exec::Sync),
            ]
            .repeat(2)
        );
    }

    #[test]
    fn bad_values_are_refused_before_any_enclave_exists() {
        let err = |args: &[&str]| plan(args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&["--exec", "later"]).contains("expected async, sync or both"));
        assert!(err(&["--repeat", "0"]).contains("must not be empty or zero"));
        assert!(err(&["--sizes", "1"]).contains("--size 1 is outside"));
        assert!(plan(&["--modes", "bogus"]).is_err());
    }
}
