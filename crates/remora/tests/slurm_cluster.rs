//! The local Slurm cluster the issue 14 tests run on (`scripts/slurm-cluster.sh`,
//! driven by `tests/support/slurm.rs`): two simulated nodes, each a network
//! namespace on its own core with its own leviathan and slurmd, take steps on
//! both nodes, answer `hobbes` as two daemons, run an MPICH job across them
//! under `--mpi=pmi2`, and leave nothing behind when stopped.

#[path = "../../../tests/support/slurm.rs"]
mod slurm;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use slurm::SlurmCluster;

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// tests/c/hello.c built with MPICH into `dir`, or why not.
fn build_hello(dir: &Path) -> Result<std::path::PathBuf, String> {
    if Command::new("mpicc.mpich").arg("-v").output().is_err() {
        return Err(
            "mpicc.mpich not installed (scripts/deps.sh installs mpich libmpich-dev)".into(),
        );
    }
    let exe = dir.join("hello");
    let out = Command::new("mpicc.mpich")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/hello.c"))
        .output()
        .unwrap();
    assert!(out.status.success(), "compiling hello.c: {}", text(&out));
    Ok(exe)
}

#[test]
fn two_node_cluster_runs_steps_and_mpich_across_namespaced_nodes_each_with_its_leviathan() {
    let test =
        "two_node_cluster_runs_steps_and_mpich_across_namespaced_nodes_each_with_its_leviathan";
    let mut c = match SlurmCluster::start(2, None) {
        Ok(c) => c,
        Err(skip) => return skip.print(test),
    };
    eprintln!("cluster up in {:?}", c.start_time);
    assert_eq!(c.nodes.len(), 2);
    assert_ne!(
        c.node(0).core,
        c.node(1).core,
        "each node has a core of its own"
    );

    // A step of two tasks lands one task on each node.
    let out = c.srun(&[
        "-N2",
        "-n2",
        "sh",
        "-c",
        "echo task=$SLURM_PROCID node=$SLURMD_NODENAME",
    ]);
    assert!(out.status.success(), "srun -N2 -n2: {}", text(&out));
    let nodes: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("node=").nth(1).map(str::to_string))
        .collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["n0".to_string(), "n1".to_string()]),
        "{}",
        text(&out)
    );

    // Two tasks per node fit (CPUs=2 each): the 2x2 composition's shape.
    let out = c.srun(&["-N2", "-n4", "--ntasks-per-node=2", "true"]);
    assert!(out.status.success(), "srun -N2 -n4: {}", text(&out));

    // Each node's hobbes reaches its own leviathan: two daemons, two state dirs.
    let mut pids = BTreeSet::new();
    for i in 0..2 {
        let out = c.hobbes_on(i, &["--json", "status"]);
        assert!(
            out.status.success(),
            "hobbes status on n{i}: {}",
            text(&out)
        );
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(
            st["state_dir"].as_str().map(Path::new),
            Some(c.node(i).state_dir.as_path()),
            "n{i}: {st}"
        );
        let pid = st["header"]["daemon_pid"].as_u64().expect("daemon_pid") as u32;
        assert_eq!(pid, c.node(i).leviathan_pid, "n{i}'s leviathan answers");
        pids.insert(pid);
        // The node's namespace: its own address, not the other node's.
        let out = c.node_exec(i, &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("{}/", c.node(i).addr)),
            "{}",
            text(&out)
        );
    }
    assert_eq!(pids.len(), 2, "two different daemons");

    // MPICH across the nodes with Slurm's PMI-2: one world of 2, a rank per node,
    // each on its node's core.
    match build_hello(c.dir()) {
        Err(why) => slurm::Skip(why).print(&format!("{test} (MPI part)")),
        Ok(hello) => {
            let hello = hello.display().to_string();
            let out = c.srun(&[
                "--mpi=pmi2",
                "-N2",
                "-n2",
                "sh",
                "-c",
                "echo node rank=$SLURM_PROCID name=$SLURMD_NODENAME; exec \"$0\"",
                &hello,
            ]);
            assert!(out.status.success(), "MPI hello: {}", text(&out));
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            let hellos: Vec<&str> = stdout.lines().filter(|l| l.starts_with("hello ")).collect();
            assert_eq!(hellos.len(), 2, "{stdout}");
            for l in &hellos {
                assert!(l.contains("size=2") && l.contains("sum=2"), "{l}");
            }
            let cpus: BTreeSet<&str> = hellos
                .iter()
                .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("cpu0=")))
                .collect();
            let want: BTreeSet<String> =
                c.nodes.iter().map(|n| format!("cpu0={}", n.core)).collect();
            assert_eq!(
                cpus,
                want.iter().map(String::as_str).collect(),
                "each rank on its node's core: {stdout}"
            );
            assert!(
                stdout.contains("name=n0") && stdout.contains("name=n1"),
                "{stdout}"
            );
        }
    }

    // Stopping leaves nothing: no daemon, namespace, link or cgroup.
    let out = c.stop();
    assert!(out.status.success(), "stop: {}", text(&out));
    eprintln!("cluster stopped in {:?}", c.stop_time.unwrap());
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn more_nodes_than_cores_is_refused_and_changes_nothing() {
    let test = "more_nodes_than_cores_is_refused_and_changes_nothing";
    // Root and Slurm as for a cluster; the refusal comes before anything is made.
    if let Err(skip) = slurm::SlurmCluster::check(2) {
        return skip.print(test);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(slurm::repo_root().join("scripts/slurm-cluster.sh"))
        .args(["start", "--nodes", &(cores + 64).to_string(), "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need") && err.contains("cores"), "{err}");
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_else(|_| Vec::new());
    let id = String::from_utf8_lossy(
        &Command::new("sh")
            .arg("-c")
            .arg("printf %s \"$(cd \"$0\" && pwd -P)\" | sha1sum | cut -c1-6")
            .arg(dir.path())
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    assert!(!netns.iter().any(|n: &String| n.contains(&id)), "{netns:?}");
    assert!(!Path::new(&format!("/sys/fs/cgroup/cpuset/hobbes-slurm-{id}")).exists());
}
