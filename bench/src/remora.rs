//! Remora against mpiexec.hydra: launch-to-exit of an MPICH hello world at 1,
//! 2 and 4 ranks, alternating, same cores; and the rank-space set-up against a
//! plain MPI_Comm_dup of the world.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hobbes_client::proto::msg::{EnclaveRef, JobApp, JobSpec, PmiMode};

use super::{header, median, row, BenchDaemon};

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

fn compile(dir: &Path, name: &str, source: &Path) -> Result<String> {
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
    // One shared enclave on the host core: hydra's ranks run on the same core.
    let mut spec = super::spec("mpi", true);
    spec.memory.size_mib = 2048; // MPICH's shared-memory segments count against the limit
    c.create_enclave(spec)?;

    header("remora: launch-to-exit of an MPICH hello world vs mpiexec.hydra (median of 9, alternating)");
    for n in [1u32, 2, 4] {
        let (mut ours, mut hydra) = (Vec::new(), Vec::new());
        for _ in 0..9 {
            let job = JobSpec {
                name: "bench".into(),
                apps: vec![JobApp {
                    name: "hello".into(),
                    enclave: EnclaveRef::Name("mpi".into()),
                    np: n,
                    argv: vec![hello.clone()],
                    env: vec![],
                    cwd: None,
                }],
                pmi: if std::env::var_os("REMORA_BENCH_TCP").is_some() {
                    PmiMode::Tcp
                } else {
                    PmiMode::Socketpair
                },
                rank_spaces: Some(false),
            };
            let t = Instant::now();
            let rec = c.remora_launch(job, |_| {}, |_, _, _, _| {})?;
            ours.push(t.elapsed().as_secs_f64() * 1e3);
            if rec.exit_code != Some(0) {
                bail!("remora job failed: {:?}", rec.failure);
            }
            let t = Instant::now();
            let out = Command::new("mpiexec.hydra")
                .args(["-n", &n.to_string(), &hello])
                .output()?;
            hydra.push(t.elapsed().as_secs_f64() * 1e3);
            if !out.status.success() {
                bail!(
                    "mpiexec.hydra failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        row(
            &format!("hello world, {n} rank(s): remora vs hydra"),
            median(ours),
            median(hydra),
            "ms",
            "target <= 1.0x",
        );
    }
    c.destroy_enclave(EnclaveRef::Name("mpi".into()))?;

    // The rank-space set-up (split by appnum + dup of the world) vs one MPI_Comm_dup.
    let setup_src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/remora-pmpi/bench/universe_setup.c");
    let setup = compile(tmp.path(), "universe_setup", &setup_src)?;
    let out = Command::new("mpiexec.hydra")
        .args(["-n", "1", &setup, ":", "-n", "1", &setup])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pick = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("median="))?
            .parse()
            .ok()
    };
    header(
        "remora: MPI_COMM_UNIVERSE set-up vs a plain MPI_Comm_dup of the world (2 ranks, 2 apps)",
    );
    match (pick("remora_setup_us"), pick("comm_dup_us")) {
        (Some(ours), Some(dup)) => row(
            "split by appnum + dup vs MPI_Comm_dup",
            ours,
            dup,
            "us",
            "(cost of the composition, paid once in MPI_Init)",
        ),
        _ => println!("universe_setup printed nothing usable: {text}"),
    }
    Ok(())
}
