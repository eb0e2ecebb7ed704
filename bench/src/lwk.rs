//! An LWK enclave against an exclusive native enclave of the same core and
//! memory: compute (STREAM triad, naive DGEMM, a dependent floating-point
//! chain), OS noise (selfish detour), the cost of a forwarded system call
//! against the raw trap, and launch-to-exit of a static hello world.
//!
//! The programs are the static C binaries of `bench/lwk`, built by
//! `scripts/lwk-programs.sh --bench`; the same file runs in both enclaves.
//! On a 2-core node the host keeps core 0 and the two enclaves cannot both
//! own core 1, so they take turns on it: each repetition creates one, runs
//! every program in it, destroys it, then does the same with the other,
//! the order swapping every repetition.
//!
//! The LWK half needs the `lwk` kind in the daemon and `/dev/kvm`; where
//! either is missing it is skipped with the reason and the native half still
//! runs (the native figures alone, no ratios).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hobbes_client::proto::model::{EnclaveKind, ExitStatus};
use hobbes_client::proto::msg::{EnclaveRef, LaunchSpec, Stream};
use hobbes_client::proto::spec::{CpuRequest, EnclaveSpec, MemRequest};
use hobbes_client::Client;
use serde_json::{json, Value};

use super::{header, median, online_cores, BenchDaemon};

/// The system call timed as "the raw trap": `arch_prctl(ARCH_GET_FS)`,
/// which an LWK's system-call stub answers in the guest itself (`rdfsbase`),
/// so it costs the trap into the stub and back and nothing else (see
/// crates/lwk-vmm/src/stub.rs). Natively it is one of the kernel's cheapest
/// calls. (An unknown number is not the floor in an LWK: numbers past the
/// stub's table take the exit path.)
pub const DEFAULT_TRAP_NR: i64 = 158;

/// Launches of the hello world per enclave per repetition.
const HELLO_RUNS: usize = 7;

/// The programs run, each found in the programs directory.
const PROGRAMS: [&str; 7] = [
    "triad", "dgemm", "fpchain", "detour", "getppid", "hello", "cpuid",
];

pub const USAGE: &str =
    "lwk [--reps N] [--detour-secs S] [--memory MIB] [--trap-nr NR] [--programs DIR] [--native-only] [--json]";

/// Command-line options of `hobbes-bench lwk`.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Repetitions per enclave kind, alternating.
    pub reps: usize,
    /// Length of each selfish-detour run; 0 skips it.
    pub detour_secs: f64,
    /// Memory of each enclave (MiB): the triad's 3 x 256 MiB and room to spare.
    pub memory_mib: u64,
    /// System call number timed as the raw trap.
    pub trap_nr: i64,
    /// Prebuilt programs (`scripts/lwk-programs.sh --bench DIR`); `None`:
    /// build them into a temporary directory.
    pub programs: Option<PathBuf>,
    /// Run the native half alone (to check the programs and the floor, or
    /// where the LWK kind cannot run).
    pub native_only: bool,
    /// Print the results as one JSON object, the last line of stdout.
    pub json: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            reps: 3,
            detour_secs: 10.0,
            memory_mib: 2048,
            trap_nr: DEFAULT_TRAP_NR,
            programs: None,
            native_only: false,
            json: false,
        }
    }
}

impl Opts {
    /// Parse the arguments after `lwk`.
    pub fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .with_context(|| format!("{a} needs a value; usage: hobbes-bench {USAGE}"))
            };
            match a.as_str() {
                "--reps" => o.reps = value()?.parse().context("--reps N")?,
                "--detour-secs" => o.detour_secs = value()?.parse().context("--detour-secs S")?,
                "--memory" => o.memory_mib = value()?.parse().context("--memory MIB")?,
                "--trap-nr" => o.trap_nr = value()?.parse().context("--trap-nr NR")?,
                "--programs" => o.programs = Some(PathBuf::from(value()?)),
                "--native-only" => o.native_only = true,
                "--json" => o.json = true,
                other => bail!("unknown option {other:?}; usage: hobbes-bench {USAGE}"),
            }
        }
        if o.reps == 0 {
            bail!("--reps must be at least 1");
        }
        if o.detour_secs.is_nan() || o.detour_secs < 0.0 {
            bail!("--detour-secs must be 0 or more");
        }
        Ok(o)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Native,
    Lwk,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Native => "native",
            Side::Lwk => "lwk",
        }
    }
    fn enclave(self) -> String {
        format!("lwkbench-{}", self.as_str())
    }
}

/// Every sample of one enclave kind, by metric (`triad_ns`, `hello_ms`...).
type Samples = BTreeMap<&'static str, Vec<f64>>;

/// The spec of either enclave: the same core (by id) and memory.
fn spec(side: Side, core: u32, mib: u64) -> Result<EnclaveSpec> {
    match side {
        Side::Native => Ok(EnclaveSpec {
            name: side.enclave(),
            kind: EnclaveKind::Native,
            shared: false,
            host_ipc: false,
            cpus: CpuRequest {
                ids: vec![core],
                ..Default::default()
            },
            memory: MemRequest {
                size_mib: mib,
                ..Default::default()
            },
            vm: None,
        }),
        // Through the XML form, as a user writes it: this compiles whether or
        // not this build's EnclaveKind has the variant, and says why when not.
        Side::Lwk => Ok(EnclaveSpec::from_xml(&format!(
            r#"<lwk name="{}"><cpus><core id="{core}"/></cpus><memory size="{mib}"/></lwk>"#,
            side.enclave()
        ))?),
    }
}

/// Build the benchmark programs (or check the prebuilt ones); the directory
/// to run them from, and the temporary directory to keep while they run.
fn programs(o: &Opts) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    let (dir, tmp) = match &o.programs {
        Some(d) => (d.clone(), None),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lwk-programs.sh");
            if !script.exists() {
                bail!(
                    "{} not found (built elsewhere?): build the programs with `scripts/lwk-programs.sh --bench DIR` and pass --programs DIR",
                    script.display()
                );
            }
            let tmp = tempfile::Builder::new().prefix("lwk-bench-").tempdir()?;
            // Apps run with the launcher's credentials, but in the enclave's
            // view: keep the path searchable, as a user's directory would be.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
            let out = Command::new("bash")
                .arg(&script)
                .arg("--bench")
                .arg(tmp.path())
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            if !out.status.success() {
                bail!(
                    "{} failed:\n{}{}",
                    script.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    for p in PROGRAMS {
        if !dir.join(p).is_file() {
            bail!(
                "{} missing: build it with `scripts/lwk-programs.sh --bench {}` (needs gcc and libc6-dev)",
                dir.join(p).display(),
                dir.display()
            );
        }
    }
    Ok((dir.canonicalize()?, tmp))
}

/// Run one program to its end in `enclave`; its stdout and launch-to-exit time
/// in ms. A program that fails is an error naming it, its exit and its stderr.
fn run(c: &mut Client, enclave: &str, argv: Vec<String>) -> Result<(String, f64)> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let t = Instant::now();
    let rec = c.launch_streaming(
        LaunchSpec {
            enclave: EnclaveRef::Name(enclave.into()),
            name: None,
            argv: argv.clone(),
            env: vec![],
            cwd: None,
            stream: true,
        },
        |_| {},
        |s, data| match s {
            Stream::Stdout => out.extend_from_slice(data),
            Stream::Stderr => err.extend_from_slice(data),
        },
    )?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if rec.exit != Some(ExitStatus::Code(0)) {
        let how = match rec.exit {
            Some(e) => format!("ended with {e}"),
            None => format!("did not end normally ({:?})", rec.state),
        };
        bail!(
            "`{}` in enclave {enclave} {how}{}; its stderr: {:?}",
            argv.join(" "),
            rec.detail.map(|d| format!(": {d}")).unwrap_or_default(),
            String::from_utf8_lossy(&err).trim()
        );
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), ms))
}

/// The `key=value` pairs of the program's `bench=...` line.
fn parse_line(stdout: &str) -> Result<BTreeMap<String, String>> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("bench="))
        .with_context(|| format!("no bench= line in the program's output: {stdout:?}"))?;
    Ok(line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn field(kv: &BTreeMap<String, String>, key: &str) -> Result<f64> {
    kv.get(key)
        .with_context(|| format!("no {key}= in {kv:?}"))?
        .parse()
        .with_context(|| format!("{key}= is not a number in {kv:?}"))
}

/// Run every program once in `side`'s enclave, adding to its samples.
fn one_round(
    c: &mut Client,
    side: Side,
    dir: &Path,
    o: &Opts,
    samples: &mut Samples,
) -> Result<()> {
    let name = side.enclave();
    let prog = |p: &str| dir.join(p).display().to_string();
    let mut add = |k: &'static str, v: f64| samples.entry(k).or_default().push(v);
    for (p, key) in [
        ("triad", "triad_ns"),
        ("dgemm", "dgemm_ns"),
        ("fpchain", "fpchain_ns"),
    ] {
        let (out, _) = run(c, &name, vec![prog(p)])?;
        add(key, field(&parse_line(&out)?, "median_ns")?);
    }
    for (nr, key) in [(libc::SYS_getppid, "getppid_ns"), (o.trap_nr, "trap_ns")] {
        // Batches sized by the program (20 ms each), whatever a call costs.
        let argv = vec![prog("getppid"), "auto".into(), nr.to_string()];
        let (out, _) = run(c, &name, argv)?;
        add(key, field(&parse_line(&out)?, "median_ns")?);
    }
    // glibc's hello, and musl's (when built), whose start-up makes no CPUID.
    for (p, key) in [("hello", "hello_ms"), ("hello-musl", "hello_musl_ms")] {
        if !dir.join(p).exists() {
            continue;
        }
        for _ in 0..HELLO_RUNS {
            let (out, ms) = run(c, &name, vec![prog(p)])?;
            if out.trim() != "hello, world" {
                bail!("{p} in {name} printed {out:?}");
            }
            add(key, ms);
        }
    }
    let (out, _) = run(c, &name, vec![prog("cpuid")])?;
    add("cpuid_ns", field(&parse_line(&out)?, "median_ns")?);
    if o.detour_secs > 0.0 {
        let argv = vec![prog("detour"), o.detour_secs.to_string()];
        let (out, _) = run(c, &name, argv)?;
        let kv = parse_line(&out)?;
        for (f, key) in [
            ("count", "detour_count"),
            ("p50_ns", "detour_p50_ns"),
            ("p99_ns", "detour_p99_ns"),
            ("max_ns", "detour_max_ns"),
            ("noise_pct", "detour_noise_pct"),
        ] {
            add(key, field(&kv, f)?);
        }
    }
    Ok(())
}

/// One comparison of the table: LWK against its floor, with the target.
struct Check {
    name: &'static str,
    /// The metric on the LWK side (`None` when the LWK half did not run).
    lwk: Option<f64>,
    /// What it is compared with (native, or the LWK's own raw trap).
    floor: Option<f64>,
    unit: &'static str,
    /// Largest ratio that meets the target; `strict`: the ratio must be below it.
    limit: f64,
    strict: bool,
}

impl Check {
    fn ratio(&self) -> Option<f64> {
        Some(self.lwk? / self.floor?)
    }
    fn met(&self) -> Option<bool> {
        let r = self.ratio()?;
        Some(if self.strict {
            r < self.limit
        } else {
            r <= self.limit
        })
    }
    fn target(&self) -> String {
        let op = if self.strict { "<" } else { "<=" };
        let verdict = match self.met() {
            Some(true) => ": met",
            Some(false) => ": missed",
            None => "",
        };
        format!("target {op} {}x{verdict}", self.limit)
    }
    fn print(&self) {
        let cell = |v: Option<f64>| match v {
            Some(v) => format!("{v:>10.2} {:<3}", self.unit),
            None => format!("{:>10} {:<3}", "-", ""),
        };
        let ratio = match self.ratio() {
            Some(r) => format!("{r:>8.2}x"),
            None => format!("{:>9}", "-"),
        };
        println!(
            "{:<54} {} {} {ratio}  {}",
            self.name,
            cell(self.lwk),
            cell(self.floor),
            self.target()
        );
    }
    fn to_json(&self) -> Value {
        json!({
            "name": self.name, "lwk": self.lwk, "floor": self.floor, "unit": self.unit,
            "ratio": self.ratio(), "limit": self.limit, "strict": self.strict, "met": self.met(),
        })
    }
}

/// Run the benchmark against daemon `d`.
pub fn bench(d: &BenchDaemon, o: &Opts) -> Result<()> {
    if online_cores() < 2 {
        println!("\n== lwk: SKIP (needs 2 cores: the host keeps one, the enclaves take turns on the other)");
        return Ok(());
    }
    let (dir, _tmp) = programs(o)?;
    let mut c = d.client()?;

    // The core both enclaves get: the one the allocator gives a native enclave.
    let mut probe = spec(Side::Native, 0, o.memory_mib)?;
    probe.cpus = CpuRequest {
        count: 1,
        ..Default::default()
    };
    let rec = c
        .create_enclave(probe)
        .context("creating an exclusive one-core native enclave")?;
    let core = *rec
        .cores
        .first()
        .context("the native enclave got no core")?;
    c.destroy_enclave(EnclaveRef::Name(Side::Native.enclave()))?;

    // The LWK half runs only if its enclave can be made here at all.
    let lwk_skip = if o.native_only {
        Some("--native-only".to_string())
    } else {
        match spec(Side::Lwk, core, o.memory_mib).and_then(|s| Ok(c.create_enclave(s)?)) {
            Ok(_) => {
                c.destroy_enclave(EnclaveRef::Name(Side::Lwk.enclave()))?;
                None
            }
            Err(e) => Some(format!("{e:#}")),
        }
    };
    let sides: Vec<Side> = match lwk_skip {
        None => vec![Side::Native, Side::Lwk],
        Some(_) => vec![Side::Native],
    };

    let started = Instant::now();
    let mut samples: BTreeMap<Side, Samples> = BTreeMap::new();
    // A program failing in the LWK is a bug of the LWK: stop that half, keep
    // measuring the native one, and report the failure after the table.
    let mut lwk_failed: Option<String> = None;
    for rep in 0..o.reps {
        // Swap the order every repetition, so neither side always runs on a
        // core the other has just warmed (or heated).
        let mut order = sides.clone();
        if rep % 2 == 1 {
            order.reverse();
        }
        for side in order {
            if side == Side::Lwk && lwk_failed.is_some() {
                continue;
            }
            let r = c
                .create_enclave(spec(side, core, o.memory_mib)?)
                .with_context(|| format!("creating the {} enclave", side.as_str()))
                .and_then(|_| {
                    let r = one_round(&mut c, side, &dir, o, samples.entry(side).or_default());
                    // Destroyed even after a failure; the failure is what to report.
                    let gone = c.destroy_enclave(EnclaveRef::Name(side.enclave()));
                    r?;
                    Ok(gone?)
                });
            match (side, r) {
                (_, Ok(())) => {}
                (Side::Native, Err(e)) => return Err(e),
                (Side::Lwk, Err(e)) => {
                    // Partial samples would pair a part of a round with whole ones.
                    samples.remove(&Side::Lwk);
                    lwk_failed = Some(format!("{e:#}"));
                }
            }
        }
    }

    let med = |side: Side, k: &str| -> Option<f64> {
        samples
            .get(&side)
            .and_then(|s| s.get(k))
            .map(|v| median(v.clone()))
    };
    let lwk = |k: &str| med(Side::Lwk, k);
    let native = |k: &str| med(Side::Native, k);
    let ms = |v: Option<f64>| v.map(|x| x / 1e6);
    let us = |v: Option<f64>| v.map(|x| x / 1e3);
    let mut checks = vec![
        Check {
            name: "triad, 3 x 256 MiB, one pass",
            lwk: ms(lwk("triad_ns")),
            floor: ms(native("triad_ns")),
            unit: "ms",
            limit: 1.02,
            strict: false,
        },
        Check {
            name: "naive DGEMM, n=512",
            lwk: ms(lwk("dgemm_ns")),
            floor: ms(native("dgemm_ns")),
            unit: "ms",
            limit: 1.02,
            strict: false,
        },
        Check {
            name: "dependent FP chain, 5e7 steps",
            lwk: ms(lwk("fpchain_ns")),
            floor: ms(native("fpchain_ns")),
            unit: "ms",
            limit: 1.02,
            strict: false,
        },
    ];
    if o.detour_secs > 0.0 {
        for (name, key) in [
            ("selfish detour p99 (> 1 us)", "detour_p99_ns"),
            ("selfish detour max", "detour_max_ns"),
        ] {
            checks.push(Check {
                name,
                lwk: us(lwk(key)),
                floor: us(native(key)),
                unit: "us",
                limit: 1.0,
                strict: true,
            });
        }
    }
    checks.push(Check {
        name: "forwarded getppid vs raw trap (both in the LWK)",
        lwk: us(lwk("getppid_ns")),
        floor: us(lwk("trap_ns")),
        unit: "us",
        limit: 1.3,
        strict: false,
    });
    checks.push(Check {
        name: "launch-to-exit, static hello world (glibc)",
        lwk: lwk("hello_ms"),
        floor: native("hello_ms"),
        unit: "ms",
        limit: 2.0,
        strict: false,
    });
    if native("hello_musl_ms").is_some() {
        checks.push(Check {
            name: "launch-to-exit, static hello world (musl)",
            lwk: lwk("hello_musl_ms"),
            floor: native("hello_musl_ms"),
            unit: "ms",
            limit: 2.0,
            strict: false,
        });
    }

    header(&format!(
        "lwk: LWK enclave (hobbes) vs exclusive native enclave (floor), core {core}, {} MiB each, taking turns (median of {}; hello {} launches)",
        o.memory_mib,
        o.reps,
        o.reps * HELLO_RUNS
    ));
    if let Some(why) = &lwk_skip {
        println!("SKIP the LWK half (native figures only): {why}");
    }
    if let Some(why) = &lwk_failed {
        println!("FAILED, the LWK half (native figures only): {why}");
    }
    for ch in &checks {
        ch.print();
    }
    let fmt = |v: Option<f64>, unit: &str| match v {
        Some(v) => format!("{v:.3} {unit}"),
        None => "-".into(),
    };
    println!(
        "  system call, native: getppid {}, raw trap (nr {}) {}",
        fmt(us(native("getppid_ns")), "us"),
        o.trap_nr,
        fmt(us(native("trap_ns")), "us")
    );
    // What glibc's start-up pays per CPU probe: every CPUID leaves the guest.
    println!(
        "  one CPUID instruction: native {}, lwk {}",
        fmt(us(native("cpuid_ns")), "us"),
        fmt(us(lwk("cpuid_ns")), "us")
    );
    if o.detour_secs > 0.0 {
        for side in samples.keys() {
            let m = |k| med(*side, k);
            println!(
                "  detours, {} ({} s): {} counted, p50 {}, noise {}",
                side.as_str(),
                o.detour_secs,
                m("detour_count").unwrap_or(0.0),
                fmt(us(m("detour_p50_ns")), "us"),
                fmt(m("detour_noise_pct"), "%")
            );
        }
    }
    println!("  ({:.0} s)", started.elapsed().as_secs_f64());

    if o.json {
        let all: BTreeMap<&str, &Samples> = samples.iter().map(|(s, v)| (s.as_str(), v)).collect();
        let doc = json!({
            "bench": "lwk",
            "core": core,
            "memory_mib": o.memory_mib,
            "reps": o.reps,
            "detour_secs": o.detour_secs,
            "trap_nr": o.trap_nr,
            "lwk_skipped": lwk_skip,
            "lwk_failed": lwk_failed,
            "checks": checks.iter().map(Check::to_json).collect::<Vec<_>>(),
            "samples": all,
        });
        println!("{doc}");
    }
    match lwk_failed {
        Some(why) => bail!("lwk: a program failed in the LWK enclave: {why}"),
        None => Ok(()),
    }
}
