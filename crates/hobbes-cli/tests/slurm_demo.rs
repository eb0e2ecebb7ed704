//! `hobbes demo insitu --slurm` on the local two-node cluster of
//! `scripts/slurm-cluster.sh`: one simulation and one analytics enclave per
//! node, each node's demo on its own node's leviathan, a report per node and
//! a summary; nothing left on either node. Prints `SKIP <test>: <reason>`
//! where the cluster cannot start (not root, no Slurm, one core) or the demo
//! is not built. Run with other daemon tests one at a time (`flock
//! /tmp/hobbes-daemon-tests.lock cargo test -p hobbes-cli --test slurm_demo`).

#[path = "../../../tests/support/slurm.rs"]
mod slurm;

use std::io::Write;
use std::path::PathBuf;

const HOBBES: &str = env!("CARGO_BIN_EXE_hobbes");

#[test]
fn the_in_situ_demo_runs_on_every_node_of_an_allocation() {
    let t = "the_in_situ_demo_runs_on_every_node_of_an_allocation";
    let insitu = PathBuf::from(HOBBES).with_file_name("hobbes-insitu");
    if !insitu.exists() {
        let _ = writeln!(
            std::io::stdout(),
            "SKIP {t}: hobbes-insitu is not built (cargo build -p hobbes-workloads)"
        );
        return;
    }
    let c = match slurm::SlurmCluster::start(2, None) {
        Ok(c) => c,
        Err(skip) => return skip.print(t),
    };
    // Each node's socket, named with %n (the Slurm node name).
    let n0 = c.node(0);
    let pattern = n0
        .socket
        .display()
        .to_string()
        .replace(&format!("/{}/", n0.name), "/%n/");
    assert!(pattern.contains("%n"), "{pattern}");
    let out_dir = tempfile::tempdir().unwrap();
    let report = out_dir.path().join("r");
    let out = c
        .client("timeout")
        .args(["--kill-after=5", "150", "salloc", "--quiet", "-N2", HOBBES])
        .args(["--socket", &pattern, "demo", "insitu", "--slurm"])
        .args([
            "--sizes", "12", "--steps", "3", "--modes", "xasm", "--exec", "async",
        ])
        .arg("--out")
        .arg(&report)
        .current_dir(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}\n{}", c.log_tails());
    for node in &c.nodes {
        let name = &node.name;
        assert!(
            stdout.contains(&format!("[{name}] [3/5] running snap")),
            "{name}'s lines are labelled with it: {all}"
        );
        assert!(
            report.join(name).join("insitu-runs.json").exists(),
            "{name} wrote its report: {all}"
        );
        assert!(
            stdout.contains(&format!("  {name} ")) && stdout.contains(" 0 torn states"),
            "{all}"
        );
        // Its enclaves were made by its own leviathan, and are gone.
        assert!(
            stdout.contains(&node.state_dir.join("enclaves").display().to_string()),
            "{name}'s enclaves are its own leviathan's: {all}"
        );
    }
    assert!(
        stdout.contains("ok: 2 of 2 node(s) reported; srun exit 0"),
        "{all}"
    );
    for i in 0..2 {
        let out = c.hobbes_on(i, &["list-enclaves", "--json"]);
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && list.trim() == "[]",
            "node {i} keeps enclaves: {list}"
        );
    }
}
