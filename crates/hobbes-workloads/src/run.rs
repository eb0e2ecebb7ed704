//! Running the workloads: the simulation loop with its per-step timing, the
//! analytics loop, and both as two processes (`hobbes-insitu run`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::analytics::{Spectrum, SpectrumSummary, Stream, StreamRates};
use crate::coupling::{self, CouplingOptions, Exec, Mode, Next, PublishStats};
use crate::error::{Error, Result};
use crate::hpccg::{Hpccg, HpccgParams};
use crate::snap::{Snap, SnapParams};
use crate::state::{self, Layout, View};

/// Which simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// SNAP-style discrete-ordinates sweeps; publishes flux and velocity.
    Snap,
    /// HPCCG-style conjugate gradient; publishes x and r.
    Hpccg,
}

/// Which analytics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AnalyticsKind {
    /// Power spectrum of each row (group) of the published primary array.
    Spectrum,
    /// STREAM copy/scale/add/triad reading the published arrays.
    Stream,
}

impl Workload {
    /// The workload's command-line, JSON and report name (`snap`, `hpccg`).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Snap => "snap",
            Workload::Hpccg => "hpccg",
        }
    }
}

impl AnalyticsKind {
    /// The analytics' command-line, JSON and report name (`spectrum`, `stream`).
    pub fn name(self) -> &'static str {
        match self {
            AnalyticsKind::Spectrum => "spectrum",
            AnalyticsKind::Stream => "stream",
        }
    }
}

/// One simulation run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The simulation to run.
    pub workload: Workload,
    /// Cells (SNAP) or grid points (HPCCG) per dimension.
    pub size: usize,
    /// Time steps to run (SNAP: time steps; HPCCG: CG iterations), `1..=2^32-1`; steps are
    /// numbered from 1.
    pub steps: u64,
    /// How the state is published.
    pub mode: Mode,
    /// Whether the simulation waits for the analytics after each step.
    pub exec: Exec,
    /// The published region's name (XEMEM names `R`, `R@N`, `R.ctl`).
    pub region: String,
    /// SNAP only: groups, angles per octant, source iterations per step.
    pub groups: usize,
    /// SNAP only: angles per octant (`1..=64`; 8 x this many directions).
    pub angles: usize,
    /// SNAP only: source iterations per time step (`1..=100`).
    pub inners: usize,
    /// Pin the process to this CPU.
    pub cpu: Option<usize>,
    /// Wait bound, XASM versions kept and segment permissions.
    pub coupling: CouplingOptions,
}

impl Run {
    /// A SNAP run with the default group/angle/iteration counts.
    pub fn new(
        workload: Workload,
        size: usize,
        steps: u64,
        mode: Mode,
        exec: Exec,
        region: &str,
    ) -> Run {
        let d = SnapParams::new(size);
        Run {
            workload,
            size,
            steps,
            mode,
            exec,
            region: region.to_string(),
            groups: d.groups,
            angles: d.angles,
            inners: d.inners,
            cpu: None,
            coupling: CouplingOptions::default(),
        }
    }

    /// The SNAP parameters of this run: `size`, `groups`, `angles`, `inners` and SNAP's
    /// default time step.
    pub fn snap_params(&self) -> SnapParams {
        SnapParams {
            groups: self.groups,
            angles: self.angles,
            inners: self.inners,
            ..SnapParams::new(self.size)
        }
    }

    /// Check the numbers before allocating anything.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "sim";
        let bad = |r: String| Err(Error::invalid(OP, r));
        if !(2..=512).contains(&self.size) {
            return bad(format!("--size {} is outside 2..=512", self.size));
        }
        if self.steps == 0 || self.steps > u32::MAX as u64 {
            return bad(format!("--steps {} is outside 1..=2^32-1", self.steps));
        }
        if self.workload == Workload::Hpccg {
            // x, r (published), b, p, Ap (private): 5 vectors of n^3 f64.
            let bytes = 40.0 * (self.size as f64).powi(3);
            if bytes > 8e9 {
                return bad(format!(
                    "the CG vectors would take {:.1} GB: lower --size",
                    bytes / 1e9
                ));
            }
        }
        if self.workload == Workload::Snap {
            if !(1..=256).contains(&self.groups) || !(1..=64).contains(&self.angles) {
                return bad(format!(
                    "--groups {} / --angles {} outside 1..=256 / 1..=64",
                    self.groups, self.angles
                ));
            }
            if !(1..=100).contains(&self.inners) {
                return bad(format!("--inners {} is outside 1..=100", self.inners));
            }
            // The angular flux dominates memory: 8 * angles * groups * n^3 f64.
            let bytes = 64.0 * (self.angles * self.groups) as f64 * (self.size as f64).powi(3);
            if bytes > 8e9 {
                return bad(format!(
                    "the angular flux would take {:.1} GB: lower --size, --groups or --angles",
                    bytes / 1e9
                ));
            }
        }
        Ok(())
    }

    /// The `hobbes-insitu sim ...` arguments for this run (after the program name).
    pub fn sim_args(&self) -> Vec<String> {
        let mut a = vec![
            "sim".into(),
            "--workload".into(),
            self.workload.name().into(),
            "--size".into(),
            self.size.to_string(),
            "--steps".into(),
            self.steps.to_string(),
            "--mode".into(),
            self.mode.name().into(),
            "--exec".into(),
            self.exec.name().into(),
            "--region".into(),
            self.region.clone(),
            "--groups".into(),
            self.groups.to_string(),
            "--angles".into(),
            self.angles.to_string(),
            "--inners".into(),
            self.inners.to_string(),
            "--timeout".into(),
            self.coupling.timeout.as_secs_f64().to_string(),
        ];
        if let Some(c) = self.cpu {
            a.extend(["--cpu".into(), c.to_string()]);
        }
        a
    }
}

/// What the simulation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// The simulation that ran.
    pub workload: Workload,
    /// Cells or grid points per dimension, as in [`Run::size`].
    pub size: usize,
    /// Time steps run.
    pub steps: u64,
    /// The coupling mode it published in.
    pub mode: Mode,
    /// Sync or async execution.
    pub exec: Exec,
    /// The published region's name.
    pub region: String,
    /// Bytes of published state (header page + arrays).
    pub state_bytes: usize,
    /// Allocation and coupling set-up, before the first step.
    pub setup_s: f64,
    /// Time computing steps (writing the state included).
    pub compute_s: f64,
    /// Time inside coupling calls (lock, publish, snapshot, waits).
    pub insitu_s: f64,
    /// The time-step loop: compute + in situ.
    pub total_s: f64,
    /// `insitu_s` per step, in microseconds.
    pub per_step_insitu_us: f64,
    /// `compute_s` per step, in microseconds.
    pub per_step_compute_us: f64,
    /// insitu_s / total_s.
    pub share: f64,
    /// What the publisher counted (states published, snapshot, acknowledgement and lock
    /// times, XASM pages).
    pub publish: PublishStats,
    /// Checksum of the final published primary array (equal across modes).
    pub checksum: f64,
    /// HPCCG: ||r|| / ||b|| at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual: Option<f64>,
}

/// Progress of a running simulation, for a display.
#[derive(Debug, Clone, Copy)]
pub struct SimProgress {
    /// The step just completed and published (from 1).
    pub step: u64,
    /// Steps the run will take in all.
    pub steps: u64,
    /// Time since the time-step loop started (setup excluded).
    pub elapsed: Duration,
    /// Time inside coupling calls so far.
    pub insitu: Duration,
}

enum Sim {
    Snap(Box<Snap>),
    Hpccg(Box<Hpccg>),
}

impl Sim {
    fn layout(&self) -> Layout {
        match self {
            Sim::Snap(s) => s.layout(),
            Sim::Hpccg(h) => h.layout(),
        }
    }
    fn init(&mut self, state: &mut [u8]) {
        match self {
            Sim::Snap(s) => s.init(state),
            Sim::Hpccg(h) => h.init(state),
        }
    }
    fn step(&mut self, step: u64, state: &mut [u8]) -> f64 {
        match self {
            Sim::Snap(s) => s.step(step, state),
            Sim::Hpccg(h) => h.step(step, state),
        }
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

/// Pin this process (all its threads from now on) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    let allowed = allowed_cpus();
    if !allowed.contains(&cpu) {
        return Err(Error::invalid(
            "pin",
            format!("cpu {cpu} is not among this process's allowed cpus {allowed:?}"),
        ));
    }
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .map_err(|e| Error::invalid("pin", format!("cpu {cpu}: {e}")))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| Error::io("pin to cpu", cpu.to_string(), e))
}

/// Run the simulation coupled as `run` says. `progress` is called after
/// every step.
pub fn run_sim(run: &Run, progress: &mut dyn FnMut(&SimProgress)) -> Result<SimReport> {
    run.validate()?;
    if let Some(cpu) = run.cpu {
        pin_to_cpu(cpu)?;
    }
    let setup = Instant::now();
    let mut sim = match run.workload {
        Workload::Snap => Sim::Snap(Box::new(Snap::new(run.snap_params()))),
        Workload::Hpccg => Sim::Hpccg(Box::new(Hpccg::new(HpccgParams::cube(run.size)))),
    };
    let layout = sim.layout();
    let mut publisher = coupling::publisher(
        run.mode,
        run.exec,
        &run.region,
        layout.bytes(),
        &run.coupling,
    )?;
    state::init(publisher.state(), &layout)?;
    sim.init(publisher.state());
    let setup_s = setup.elapsed().as_secs_f64();

    let (mut compute, mut insitu) = (Duration::ZERO, Duration::ZERO);
    let mut checksum = 0.0;
    let start = Instant::now();
    for step in 1..=run.steps {
        let t0 = Instant::now();
        publisher.begin_step(step)?;
        let t1 = Instant::now();
        checksum = sim.step(step, publisher.state());
        let t2 = Instant::now();
        publisher.publish(step)?;
        let t3 = Instant::now();
        compute += t2 - t1;
        insitu += (t1 - t0) + (t3 - t2);
        progress(&SimProgress {
            step,
            steps: run.steps,
            elapsed: start.elapsed(),
            insitu,
        });
    }
    let t = Instant::now();
    publisher.finish(run.steps)?;
    insitu += t.elapsed();
    let total = start.elapsed();
    let stats = publisher.stats();
    // Outside the timed loop: the analytics may still be reading the last state.
    publisher.drain(run.steps)?;
    drop(publisher);
    let n = run.steps as f64;
    Ok(SimReport {
        workload: run.workload,
        size: run.size,
        steps: run.steps,
        mode: run.mode,
        exec: run.exec,
        region: run.region.clone(),
        state_bytes: layout.bytes(),
        setup_s,
        compute_s: compute.as_secs_f64(),
        insitu_s: insitu.as_secs_f64(),
        total_s: total.as_secs_f64(),
        per_step_insitu_us: insitu.as_secs_f64() * 1e6 / n,
        per_step_compute_us: compute.as_secs_f64() * 1e6 / n,
        share: insitu.as_secs_f64() / total.as_secs_f64().max(1e-12),
        publish: stats,
        checksum,
        residual: match &sim {
            Sim::Hpccg(h) => Some(h.relative_residual()),
            Sim::Snap(_) => None,
        },
    })
}

/// One analytics run.
#[derive(Debug, Clone)]
pub struct Analyze {
    /// Which analysis to run on each state.
    pub kind: AnalyticsKind,
    /// The region to read, as the simulation's [`Run::region`].
    pub region: String,
    /// The mode the simulation publishes in; a region published in another mode is refused.
    pub mode: Mode,
    /// Pin the process to this CPU.
    pub cpu: Option<usize>,
    /// Wait bound (for the region to appear, for new states, for the lock) and segment
    /// options.
    pub coupling: CouplingOptions,
}

impl Analyze {
    /// Analytics of `kind` on `region` in `mode`, unpinned, with the default coupling
    /// options (60 s timeout).
    pub fn new(kind: AnalyticsKind, region: &str, mode: Mode) -> Analyze {
        Analyze {
            kind,
            region: region.to_string(),
            mode,
            cpu: None,
            coupling: CouplingOptions::default(),
        }
    }

    /// The `hobbes-insitu analyze ...` arguments (after the program name).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "analyze".into(),
            "--kind".into(),
            self.kind.name().into(),
            "--region".into(),
            self.region.clone(),
            "--mode".into(),
            self.mode.name().into(),
            "--timeout".into(),
            self.coupling.timeout.as_secs_f64().to_string(),
        ];
        if let Some(c) = self.cpu {
            a.extend(["--cpu".into(), c.to_string()]);
        }
        a
    }
}

/// What the analytics measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsReport {
    /// The analysis that ran.
    pub kind: AnalyticsKind,
    /// The coupling mode it read in.
    pub mode: Mode,
    /// The producer's execution as read from its control segment; `None` when there is
    /// none to read (stub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Exec>,
    /// The region read.
    pub region: String,
    /// States analysed.
    pub consumed: u64,
    /// States whose arrays did not match their stamped checksum.
    pub torn: u64,
    /// Step of the first state analysed (0 when none was).
    pub first_step: u64,
    /// Step of the last state analysed (0 when none was).
    pub last_step: u64,
    /// Steps published but never seen (async: the analytics were busy).
    pub skipped: u64,
    /// Seconds spent parsing and analysing states (waits excluded).
    pub analysis_s: f64,
    /// `analysis_s` per state consumed, in microseconds (0 when none was).
    pub per_version_us: f64,
    /// Seconds from start (before attaching) to the producer's finish.
    pub wall_s: f64,
    /// Spectrum: the summary of the last state analysed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spectrum: Option<SpectrumSummary>,
    /// STREAM: the median rates over the states analysed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRates>,
}

/// Run the analytics until the producer finishes. `progress` is called
/// after every state analysed with (step, consumed so far).
pub fn run_analytics(a: &Analyze, progress: &mut dyn FnMut(u64, u64)) -> Result<AnalyticsReport> {
    if let Some(cpu) = a.cpu {
        pin_to_cpu(cpu)?;
    }
    let start = Instant::now();
    let mut sub = coupling::subscriber(a.mode, &a.region, &a.coupling)?;
    let (mut spectrum, mut stream) = (Spectrum::default(), Stream::default());
    let mut summary = None;
    let mut rates: Vec<StreamRates> = Vec::new();
    let (mut consumed, mut torn, mut first, mut last, mut skipped) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut analysis = Duration::ZERO;
    let region = a.region.clone();
    loop {
        let mut analyse = |bytes: &[u8]| -> Result<()> {
            let t = Instant::now();
            let view = View::parse(bytes, &region)?;
            if !view.consistent() {
                torn += 1;
            }
            match a.kind {
                AnalyticsKind::Spectrum => summary = Some(spectrum.analyse(&view)),
                AnalyticsKind::Stream => rates.push(stream.run(view.all)),
            }
            analysis += t.elapsed();
            Ok(())
        };
        match sub.next(&mut analyse)? {
            Next::Consumed { step } => {
                if consumed == 0 {
                    first = step;
                } else {
                    skipped += step.saturating_sub(last + 1);
                }
                consumed += 1;
                last = step;
                progress(step, consumed);
            }
            Next::Finished => break,
        }
    }
    let stream = (!rates.is_empty()).then(|| {
        let med = |f: fn(&StreamRates) -> f64| median(rates.iter().map(f).collect());
        StreamRates {
            copy: med(|r| r.copy),
            scale: med(|r| r.scale),
            add: med(|r| r.add),
            triad: med(|r| r.triad),
        }
    });
    Ok(AnalyticsReport {
        kind: a.kind,
        mode: a.mode,
        exec: sub.exec(),
        region: a.region.clone(),
        consumed,
        torn,
        first_step: first,
        last_step: last,
        skipped,
        analysis_s: analysis.as_secs_f64(),
        per_version_us: if consumed > 0 {
            analysis.as_secs_f64() * 1e6 / consumed as f64
        } else {
            0.0
        },
        wall_s: start.elapsed().as_secs_f64(),
        spectrum: summary,
        stream,
    })
}

/// The median of `v` (0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// A simulation and its analytics, run together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairReport {
    /// The simulation's side.
    pub sim: SimReport,
    /// None for mode none (no analytics).
    pub analytics: Option<AnalyticsReport>,
}

/// A child killed (and reaped) when dropped before it was waited for.
struct ChildGuard(Option<Child>, &'static str);

impl ChildGuard {
    fn wait_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let child = self.0.take().expect("waited once");
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("wait for", self.1, e))?;
        if !out.status.success() {
            return Err(Error::io(
                "run",
                self.1,
                format!("exited with {} (its errors are above)", out.status),
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::io(
                "read report of",
                self.1,
                format!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)),
            )
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(exe: &Path, args: &[String], what: &'static str, quiet: bool) -> Result<ChildGuard> {
    let child = Command::new(exe)
        .args(args)
        .arg("--json")
        .args(quiet.then_some("--quiet"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io("start", format!("{what} ({})", exe.display()), e))?;
    Ok(ChildGuard(Some(child), what))
}

/// Run `hobbes-insitu sim` and `hobbes-insitu analyze` (the binary `exe`)
/// as two processes on this host and collect both reports. Mode none runs
/// only the simulation. If either fails, the other is killed.
pub fn run_pair(exe: &Path, run: &Run, analyze: &Analyze, quiet: bool) -> Result<PairReport> {
    run.validate()?;
    if analyze.mode != run.mode || analyze.region != run.region {
        return Err(Error::invalid(
            "run",
            "the analytics must use the simulation's mode and region",
        ));
    }
    let mut sim = spawn(exe, &run.sim_args(), "simulation", quiet)?;
    if run.mode == Mode::None {
        return Ok(PairReport {
            sim: sim.wait_json()?,
            analytics: None,
        });
    }
    let mut ana = spawn(exe, &analyze.args(), "analytics", quiet)?;
    // A failed simulation cannot be analysed further: `ana` is killed on return.
    let sim_report = sim.wait_json()?;
    let ana_report = ana.wait_json()?;
    Ok(PairReport {
        sim: sim_report,
        analytics: Some(ana_report),
    })
}
