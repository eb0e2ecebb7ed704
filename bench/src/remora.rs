//! Remora against mpiexec.hydra: launch-to-exit of an MPICH hello world at 1,
//! 2 and 4 ranks, alternating, on the same cores; and the rank-space set-up
//! against a plain MPI_Comm_dup of the world, one rank per core.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hobbes_client::proto::msg::{EnclaveRef, JobApp, JobSpec, MpiFlavor, PmiMode};
use hobbes_client::Client;

use super::{header, median, online_cores, row, BenchDaemon};

/// Runs per case (each side), alternating.
const RUNS: usize = 9;

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

pub(crate) fn compile(dir: &Path, name: &str, source: &Path) -> Result<String> {
    let out = dir.join(name);
    let st = Command::new("mpicc.mpich")
        .arg("-O2")
        .arg("-o")
        .arg(&out)
        .arg(source)
        .status()
        .context("mpicc.mpich (apt-get install mpich libmpich-dev)")?;
    if !st.success() {
        bail!("cannot compile {}", source.display());
    }
    Ok(out.display().to_string())
}

fn pmi_mode() -> PmiMode {
    if std::env::var_os("REMORA_BENCH_TCP").is_some() {
        PmiMode::Tcp
    } else {
        PmiMode::Socketpair
    }
}

/// This process's allowed cpus (hydra's ranks inherit them).
fn own_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// Run a job to its end; its stdout, or an error naming its failure.
fn run_job(c: &mut Client, job: JobSpec) -> Result<String> {
    let mut out = Vec::new();
    let rec = c.remora_launch(
        job,
        |_| {},
        |_, _, s, data| {
            if s == hobbes_client::proto::msg::Stream::Stdout {
                out.extend_from_slice(data)
            }
        },
    )?;
    if rec.exit_code != Some(0) {
        bail!("remora job {} failed: {:?}", rec.name, rec.failure);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn hydra(n: u32, exe: &str, env: &[(String, String)]) -> Result<()> {
    let out = Command::new("mpiexec.hydra")
        .args(["-n", &n.to_string(), exe])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()?;
    if !out.status.success() {
        bail!(
            "mpiexec.hydra failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn bench(d: &BenchDaemon) -> Result<()> {
    if Command::new("mpiexec.hydra")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "\n== remora: SKIP (mpiexec.hydra not installed: apt-get install mpich libmpich-dev)"
        );
        return Ok(());
    }
    let tmp = tempfile::Builder::new().prefix("remora-bench-").tempdir()?;
    let src = tmp.path().join("hello.c");
    std::fs::write(&src, HELLO)?;
    let hello = compile(tmp.path(), "hello", &src)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut c = d.client()?;
    // One shared enclave on the host's core: hydra's ranks, children of this
    // process, are confined to the same core by the daemon's host cpuset.
    let mut spec = super::spec("mpi", true);
    spec.memory.size_mib = 2048; // MPICH's shared-memory segments count against the limit
    let enclave = c.create_enclave(spec)?;
    let ours_cpus = enclave
        .cores
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // The topology the daemon gives its ranks, for hydra's third column.
    let xml: PathBuf = d.dir.path().join("hwloc-topology.xml");
    let hydra_topo: Vec<(String, String)> = if xml.exists() {
        vec![
            ("HWLOC_XMLFILE".into(), xml.display().to_string()),
            ("HWLOC_THISSYSTEM".into(), "1".into()),
            ("HWLOC_THISSYSTEM_ALLOWED_RESOURCES".into(), "1".into()),
            (
                "HWLOC_PLUGINS_BLACKLIST".into(),
                "hwloc_gl,hwloc_opencl,hwloc_pci,hwloc_xml_libxml".into(),
            ),
        ]
    } else {
        println!("(the daemon exported no hwloc topology: lstopo-no-graphics missing?)");
        vec![]
    };

    header(&format!(
        "remora: launch-to-exit of an MPICH hello world vs mpiexec.hydra (median of {RUNS}, alternating; remora on cores {ours_cpus}, hydra on {})",
        own_cpus()
    ));
    let mut with_topo = Vec::new();
    for n in [1u32, 2, 4] {
        let (mut ours, mut plain, mut topo) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let job = JobSpec {
                name: "bench".into(),
                apps: vec![JobApp {
                    name: "hello".into(),
                    enclave: EnclaveRef::Name("mpi".into()),
                    np: n,
                    argv: vec![hello.clone()],
                    env: vec![],
                    cwd: None,
                    mpi: Some(MpiFlavor::Mpich),
                }],
                pmi: pmi_mode(),
                rank_spaces: Some(false),
                mpi: Some(MpiFlavor::Mpich),
            };
            let t = Instant::now();
            run_job(&mut c, job)?;
            ours.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            hydra(n, &hello, &[])?;
            plain.push(t.elapsed().as_secs_f64() * 1e3);
            if !hydra_topo.is_empty() {
                let t = Instant::now();
                hydra(n, &hello, &hydra_topo)?;
                topo.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let ours = median(ours);
        row(
            &format!("hello world, {n} rank(s): remora vs hydra"),
            ours,
            median(plain),
            "ms",
            "target <= 1.0x",
        );
        if !topo.is_empty() {
            with_topo.push((n, ours, median(topo)));
        }
    }
    if !with_topo.is_empty() {
        header("remora: the same, against hydra given the daemon's hwloc topology by hand (HWLOC_XMLFILE...)");
        for (n, ours, topo) in with_topo {
            row(
                &format!("hello world, {n} rank(s): remora vs hydra+topology"),
                ours,
                topo,
                "ms",
                "(what the topology is worth)",
            );
        }
    }
    open_mpi(&mut c, tmp.path())?;
    c.destroy_enclave(EnclaveRef::Name("mpi".into()))?;
    universe_setup(d, tmp.path())
}

/// An Open MPI hello world launched to its end by Remora (leviathan's PMIx
/// server) against Open MPI's own `mpirun`, in the enclave "mpi".
fn open_mpi(c: &mut Client, dir: &Path) -> Result<()> {
    if Command::new("mpicc.openmpi")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("\n== remora: Open MPI: SKIP (mpicc.openmpi not installed: apt-get install openmpi-bin libopenmpi-dev)");
        return Ok(());
    }
    let src = dir.join("hello.c");
    let exe = dir.join("hello-ompi");
    let st = Command::new("mpicc.openmpi")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()?;
    if !st.success() {
        bail!("mpicc.openmpi failed");
    }
    let exe = exe.display().to_string();
    header(&format!(
        "remora: launch-to-exit of an Open MPI hello world vs mpirun.openmpi (median of {RUNS}, alternating)"
    ));
    for n in [1u32, 2] {
        let (mut ours, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let job = JobSpec {
                name: "bench-ompi".into(),
                apps: vec![JobApp {
                    name: "hello".into(),
                    enclave: EnclaveRef::Name("mpi".into()),
                    np: n,
                    argv: vec![exe.clone()],
                    env: vec![],
                    cwd: None,
                    mpi: Some(MpiFlavor::OpenMpi),
                }],
                pmi: PmiMode::Tcp,
                rank_spaces: Some(false),
                mpi: Some(MpiFlavor::OpenMpi),
            };
            let t = Instant::now();
            run_job(c, job)?;
            ours.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let st = Command::new("mpirun.openmpi")
                .args(["--allow-run-as-root", "--oversubscribe", "-n"])
                .arg(n.to_string())
                .arg(&exe)
                .stdout(std::process::Stdio::null())
                .status()?;
            plain.push(t.elapsed().as_secs_f64() * 1e3);
            if !st.success() {
                bail!("mpirun.openmpi -n {n} failed");
            }
        }
        row(
            &format!("Open MPI hello, {n} rank(s): remora vs mpirun"),
            median(ours),
            median(plain),
            "ms",
            "target <= 0.5x",
        );
    }
    Ok(())
}

/// The rank-space set-up (the application's world + a dup as the universe)
/// against one MPI_Comm_dup, as a Remora job of two applications of one rank
/// each, in two enclaves of one core each (the host's and a free one), so no
/// rank waits for a core.
fn universe_setup(d: &BenchDaemon, dir: &Path) -> Result<()> {
    let setup_src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/remora-pmpi/bench/universe_setup.c");
    let setup = compile(dir, "universe_setup", &setup_src)?;
    if online_cores() < 2 {
        println!("\n== remora: universe set-up: SKIP (needs 2 cores: one rank per core)");
        return Ok(());
    }
    let mut c = d.client()?;
    let mut created = Vec::new();
    for (name, shared) in [("u0", true), ("u1", false)] {
        let mut spec = super::spec(name, shared);
        spec.memory.size_mib = 1024;
        // Both in the host's IPC namespace: MPICH's shared memory spans the two.
        spec.host_ipc = true;
        c.create_enclave(spec)?;
        created.push(name);
    }
    let app = |name: &str, enclave: &str| JobApp {
        name: name.into(),
        enclave: EnclaveRef::Name(enclave.into()),
        np: 1,
        argv: vec![setup.clone(), "2000".into()],
        env: vec![],
        cwd: None,
        mpi: Some(MpiFlavor::Mpich),
    };
    let result = run_job(
        &mut c,
        JobSpec {
            name: "universe".into(),
            apps: vec![app("a", "u0"), app("b", "u1")],
            pmi: pmi_mode(),
            rank_spaces: Some(false),
            mpi: Some(MpiFlavor::Mpich),
        },
    );
    for name in created {
        c.destroy_enclave(EnclaveRef::Name(name.into()))?;
    }
    let text = result?;
    let pick = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("median="))?
            .parse()
            .ok()
    };
    header("remora: MPI_COMM_UNIVERSE set-up vs a plain MPI_Comm_dup of the world (2 apps x 1 rank, 1 core each, median of 2000)");
    match (
        pick("remora_setup_us"),
        pick("split_setup_us"),
        pick("comm_dup_us"),
    ) {
        (Some(ours), Some(split), Some(dup)) => {
            row(
                "create_group + dup (libremora under remora) vs dup",
                ours,
                dup,
                "us",
                "(paid once in MPI_Init)",
            );
            row(
                "split by appnum + dup (libremora elsewhere) vs dup",
                split,
                dup,
                "us",
                "(the set-up before this change)",
            );
        }
        _ => println!("universe_setup printed nothing usable: {text}"),
    }
    Ok(())
}
