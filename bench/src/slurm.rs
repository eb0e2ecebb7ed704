//! `hobbes-bench slurm`: what the Hobbes pieces add to Slurm job steps, on the
//! local cluster of `scripts/slurm-cluster.sh` (two simulated nodes, each its
//! own network namespace, core and `leviathan`, the SPANK plugin loaded).
//!
//! Two rows, each against its peer in the same run, alternating:
//! 1. `srun -N2 -n2 --mpi=pmi2 --enclave=native,shared hello` (an enclave per
//!    node made, joined by the ranks, destroyed at step end) against the same
//!    `srun` without `--enclave`. Target <= 1.2x.
//! 2. The 2x2 composition across the two nodes through `remora run` (one
//!    `srun --multi-prog` step with an enclave per node and libremora in
//!    every rank) against a plain `srun --multi-prog` of the same programs on
//!    the same placement. Target <= 1.1x. The peer is not a heterogeneous
//!    `srun A : B`: with Slurm 22.05 that puts the components on disjoint
//!    nodes and MPICH's PMI-2 fence across components hangs
//!    (crates/remora/src/slurm.rs).
//!
//! Both run in one allocation (`salloc -N2 --no-shell`), so neither side pays
//! for the allocation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{header, median, row};

const HELLO: &str = r#"#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("hello %d/%d\n", rank, size);
    MPI_Finalize();
    return 0;
}
"#;

/// Options: `--reps N` (default 11).
pub struct Opts {
    reps: usize,
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts { reps: 11 };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--reps" => {
                    o.reps = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .filter(|n| *n > 0)
                        .context("--reps needs a positive number")?
                }
                other => bail!("slurm: unknown option {other}"),
            }
        }
        Ok(o)
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// A built executable of this workspace's target directory, next to ours.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("no directory")?.join(name);
    if !p.exists() {
        bail!(
            "{} not found: cargo build --release -p leviathan -p hobbes-cli -p remora -p remora-pmpi -p hobbes-spank",
            p.display()
        );
    }
    Ok(p)
}

/// The local cluster, stopped on drop (also when the bench fails).
struct Cluster {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    job: Option<String>,
}

impl Cluster {
    fn start(plugin: &Path, leviathan: &Path) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("hobbes-bench-slurm")
            .tempdir()?;
        let mut c = Cluster {
            dir,
            env: BTreeMap::new(),
            job: None,
        };
        let st = Command::new("bash")
            .arg(repo_root().join("scripts/slurm-cluster.sh"))
            .args(["start", "--nodes", "2", "--dir"])
            .arg(c.dir.path())
            .arg("--plugin")
            .arg(plugin)
            .arg("--leviathan")
            .arg(leviathan)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("scripts/slurm-cluster.sh start failed (its messages above)");
        }
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/slurm-cluster.sh"))
            .args(["env", "--dir"])
            .arg(c.dir.path())
            .output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                c.env
                    .insert(k.to_string(), v.trim_matches(['\'', '"']).to_string());
            }
        }
        if !c.env.contains_key("SLURM_CONF") {
            bail!("slurm-cluster.sh env printed no SLURM_CONF");
        }
        Ok(c)
    }

    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.envs(&self.env).current_dir(self.dir.path());
        c
    }

    /// `salloc -N2 --no-shell`: the job id, plus the variables salloc gives a
    /// shell in the allocation (remora reads them).
    fn allocate(&mut self) -> Result<BTreeMap<String, String>> {
        let out = self.cmd("salloc").args(["-N2", "--no-shell"]).output()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let job = text
            .split_whitespace()
            .skip_while(|w| *w != "allocation")
            .nth(1)
            .filter(|_| out.status.success())
            .with_context(|| format!("salloc -N2 --no-shell: {text}"))?
            .to_string();
        self.job = Some(job.clone());
        let show = self
            .cmd("scontrol")
            .args(["show", "job", &job, "--oneliner"])
            .output()?;
        let show = String::from_utf8_lossy(&show.stdout).into_owned();
        let field = |k: &str| {
            show.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let nodelist = field("NodeList=").context("scontrol show job: no NodeList")?;
        let mut vars = BTreeMap::new();
        vars.insert("SLURM_JOB_ID".into(), job.clone());
        vars.insert("SLURM_JOBID".into(), job);
        vars.insert("SLURM_JOB_NODELIST".into(), nodelist);
        vars.insert("SLURM_JOB_NUM_NODES".into(), "2".into());
        if let Some(cpus) = field("NumCPUs=").and_then(|n| n.parse::<u32>().ok()) {
            vars.insert(
                "SLURM_JOB_CPUS_PER_NODE".into(),
                format!("{}(x2)", cpus / 2),
            );
        }
        Ok(vars)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(job) = &self.job {
            let _ = self.cmd("scancel").arg(job).status();
        }
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/slurm-cluster.sh"))
            .args(["stop", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status();
    }
}

fn timed(mut c: Command, what: &str) -> Result<f64> {
    let t = Instant::now();
    let out: Output = c.stdin(Stdio::null()).output()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

pub fn bench(o: &Opts) -> Result<()> {
    if crate::nix_euid() != 0 {
        bail!("slurm: needs root (network namespaces, cgroups, Slurm daemons)");
    }
    if crate::online_cores() < 2 {
        bail!("slurm: needs 2 cores (one per simulated node)");
    }
    for tool in ["slurmctld", "slurmd", "srun", "mpicc.mpich"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            bail!("slurm: {tool} not found (bash scripts/deps.sh)");
        }
    }
    let plugin = sibling("libhobbes_spank.so")?;
    let leviathan = sibling("leviathan")?;
    let remora = sibling("remora")?;
    let mut cluster = Cluster::start(&plugin, &leviathan)?;
    let src = cluster.dir.path().join("hello.c");
    std::fs::write(&src, HELLO)?;
    let hello = crate::remora::compile(cluster.dir.path(), "hello", &src)?;
    let alloc = cluster.allocate()?;
    let job = alloc["SLURM_JOB_ID"].clone();

    let srun = |enclave: bool| {
        let mut c = cluster.cmd("srun");
        c.args(["--jobid", &job, "-N2", "-n2", "--mpi=pmi2"]);
        if enclave {
            c.arg("--enclave=native,shared");
        }
        c.arg(&hello);
        c
    };
    // Warm-up: page cache, slurmd's first step.
    timed(srun(true), "srun --enclave")?;
    timed(srun(false), "srun")?;
    let (mut ours, mut peer) = (vec![], vec![]);
    for i in 0..o.reps {
        if i % 2 == 0 {
            ours.push(timed(srun(true), "srun --enclave")?);
            peer.push(timed(srun(false), "srun")?);
        } else {
            peer.push(timed(srun(false), "srun")?);
            ours.push(timed(srun(true), "srun --enclave")?);
        }
    }
    header(&format!(
        "Slurm: 2 simulated nodes (netns + leviathan each), medians of {} (ms)",
        o.reps
    ));
    row(
        "srun -N2 MPICH hello: --enclave vs without",
        median(ours),
        median(peer),
        "ms",
        "<= 1.2x",
    );

    // The 2x2 composition, one rank of each application per node.
    let conf = cluster.dir.path().join("multi-prog.conf");
    std::fs::write(&conf, format!("0-1 {hello}\n2-3 {hello}\n"))?;
    let remora_run = || {
        let mut c = cluster.cmd(&remora);
        c.envs(&alloc)
            .args(["run", "-n", "2", "-N", "2", "--ranks-per-node", "1"])
            .arg(&hello)
            .args([":", "-n", "2", "-N", "2", "--ranks-per-node", "1"])
            .arg(&hello);
        c
    };
    let plain = || {
        let mut c = cluster.cmd("srun");
        c.args([
            "--jobid",
            &job,
            "-N2",
            "-n4",
            "--mpi=pmi2",
            "--distribution=cyclic",
            // As remora does: the allocation has a CPU per node, 2 ranks each.
            "--overcommit",
            "--multi-prog",
        ])
        .arg(&conf);
        c
    };
    timed(remora_run(), "remora run")?;
    timed(plain(), "srun --multi-prog")?;
    let (mut ours, mut peer) = (vec![], vec![]);
    for i in 0..o.reps {
        if i % 2 == 0 {
            ours.push(timed(remora_run(), "remora run")?);
            peer.push(timed(plain(), "srun --multi-prog")?);
        } else {
            peer.push(timed(plain(), "srun --multi-prog")?);
            ours.push(timed(remora_run(), "remora run")?);
        }
    }
    row(
        "2x2 composition on 2 nodes: remora vs plain srun",
        median(ours),
        median(peer),
        "ms",
        "<= 1.1x",
    );
    drop(cluster);
    Ok(())
}
