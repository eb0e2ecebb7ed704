//! Remora across the nodes of a Slurm allocation, on the local cluster of
//! `scripts/slurm-cluster.sh` (two simulated nodes, each a network namespace
//! with its own core, leviathan and slurmd): `remora` inside `salloc -N2`
//! runs the composition as one srun step (Slurm's PMI-2), each application
//! its own world, the universe across both nodes.
//!
//! Each test prints `SKIP <test>: <reason>` when the cluster cannot start
//! here (not root, no Slurm, one core, no MPICH). Run them one binary at a
//! time with other daemon tests: `flock /tmp/hobbes-daemon-tests.lock cargo
//! test -p remora --test slurm`.

#[path = "support/mpi_build.rs"]
mod mpi_build;
#[path = "../../../tests/support/slurm.rs"]
mod slurm;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mpi_build::build_mpi_programs;
use slurm::SlurmCluster;

/// Print a SKIP line straight to stdout, past the test harness's capture
/// (as the other root tests do).
macro_rules! skip_line {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The `remora` binary under test.
const REMORA: &str = env!("CARGO_BIN_EXE_remora");

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `key=value` in a line, as a string ("" when absent).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("")
}

fn num(line: &str, key: &str) -> i64 {
    field(line, key).parse().unwrap_or(-999)
}

/// The test programs (compose, crash) built with MPICH, and libremora's
/// directory; `None` (after printing SKIP) when MPICH or libremora is missing.
struct Programs {
    dir: tempfile::TempDir,
    lib: PathBuf,
}

impl Programs {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn programs(test: &str) -> Option<Programs> {
    if Command::new("mpicc.mpich").arg("-v").output().is_err() {
        skip_line!(
            "SKIP {test}: mpicc.mpich not installed (scripts/deps.sh installs mpich libmpich-dev)"
        );
        return None;
    }
    let lib_dir = PathBuf::from(REMORA).parent().unwrap().to_path_buf();
    let lib = lib_dir.join("libremora.so");
    if !lib.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "remora-pmpi"])
            .status();
        if !built.is_ok_and(|s| s.success()) || !lib.exists() {
            skip_line!("SKIP {test}: libremora.so is not built (cargo build -p remora-pmpi)");
            return None;
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("remora-slurm-test-")
        .tempdir()
        .unwrap();
    build_mpi_programs(
        "mpicc.mpich",
        dir.path(),
        "",
        &["compose", "crash", "spin"],
        &lib_dir,
        "remora",
    );
    // compose for Open MPI too, where it and libremora-ompi are built.
    if lib_dir.join("libremora-ompi.so").exists()
        && Command::new("mpicc.openmpi")
            .arg("--version")
            .output()
            .is_ok()
    {
        build_mpi_programs(
            "mpicc.openmpi",
            dir.path(),
            "o",
            &["compose"],
            &lib_dir,
            "remora-ompi",
        );
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(Programs { dir, lib })
}

/// The cluster (two nodes, the SPANK plugin when `plugin`) and the programs;
/// `None` after printing SKIP.
fn setup(test: &str, plugin: bool) -> Option<(SlurmCluster, Programs)> {
    let progs = programs(test)?;
    let plugin_path = if plugin {
        match slurm::spank_plugin() {
            Ok(p) => Some(p),
            Err(skip) => {
                skip.print(test);
                return None;
            }
        }
    } else {
        None
    };
    match SlurmCluster::start(2, plugin_path.as_deref()) {
        Ok(c) => Some((c, progs)),
        Err(skip) => {
            skip.print(test);
            None
        }
    }
}

/// `salloc -N2 remora args` on the cluster, from `dir`, killed after `limit`.
fn remora_in_allocation(
    c: &SlurmCluster,
    progs: &Programs,
    args: &[&str],
    limit: Duration,
) -> Output {
    c.client("timeout")
        .arg("--kill-after=5")
        .arg(limit.as_secs().to_string())
        .args(["salloc", "--quiet", "-N2", REMORA])
        .args(args)
        .current_dir(progs.dir.path())
        .env("HOBBES_REMORA_LIB", &progs.lib)
        .env(
            "HOBBES_REMORA_OMPI_LIB",
            progs.lib.with_file_name("libremora-ompi.so"),
        )
        .output()
        .unwrap()
}

/// The 2x2 composition, one rank of each application per node; every line
/// checked: each world 2, the universe 4 across both nodes, an allreduce
/// over each, and a message from the simulation's rank 0 to the analysis'
/// last rank.
fn check_two_by_two(c: &SlurmCluster, progs: &Programs, program: &str) -> String {
    let xml = format!(
        r#"<composition name="pair">
  <enclave name="sim" shared="true"><app name="simulation" np="2" nodes="2" ranks_per_node="1"><exe>{exe}</exe></app></enclave>
  <enclave name="ana" shared="true"><app name="analysis" np="2" nodes="2" ranks_per_node="1"><exe>{exe}</exe></app></enclave>
</composition>"#,
        exe = progs.path(program)
    );
    let file = progs.dir.path().join("pair.xml");
    std::fs::write(&file, xml).unwrap();
    let args = ["launch", file.to_str().unwrap()];
    let out = remora_in_allocation(c, progs, &args, Duration::from_secs(90));
    let all = text(&out);
    assert!(out.status.success(), "{all}\n{}", c.log_tails());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("compose app="))
        .collect();
    assert_eq!(lines.len(), 4, "{all}");
    let mut placed = std::collections::BTreeSet::new();
    for l in &lines {
        let urank = num(l, "urank");
        let (app, own_first) = if urank < 2 {
            ("simulation", 0)
        } else {
            ("analysis", 2)
        };
        assert!(
            l.starts_with(&format!("[{app}:{urank}] ")),
            "remora's labels: {l}"
        );
        assert_eq!(num(l, "wsize"), 2, "each application its own world: {l}");
        assert_eq!(num(l, "wrank"), urank - own_first, "{l}");
        assert_eq!(num(l, "usize"), 4, "the universe spans both nodes: {l}");
        assert_eq!(num(l, "usum"), 6, "allreduce over the universe: {l}");
        assert_eq!(num(l, "wsum"), 1, "allreduce over the world: {l}");
        if urank == 3 {
            assert_eq!(
                num(l, "token"),
                4242,
                "a message crossed applications and nodes: {l}"
            );
        }
        placed.insert((app, field(l, "node").to_string()));
    }
    assert_eq!(
        placed.len(),
        4,
        "one rank of each application on each node: {placed:?}\n{all}"
    );
    all
}

#[test]
fn two_applications_across_two_nodes_share_one_universe() {
    let t = "two_applications_across_two_nodes_share_one_universe";
    let Some((c, progs)) = setup(t, false) else {
        return;
    };
    let all = check_two_by_two(&c, &progs, "compose");
    assert!(all.contains("[remora] no enclaves"), "{all}");
    // Through the run form, and a placement the allocation cannot hold,
    // refused before anything runs.
    let out = remora_in_allocation(
        &c,
        &progs,
        &["run", "-n", "3", "-N", "3", &progs.path("compose")],
        Duration::from_secs(30),
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("asks for 3 nodes") && all.contains("has 2 (SLURM_JOB_NUM_NODES)"),
        "{all}"
    );
    assert!(!all.contains("srun step"), "nothing ran: {all}");
}

#[test]
fn a_crashing_rank_ends_the_step() {
    let t = "a_crashing_rank_ends_the_step";
    let Some((c, progs)) = setup(t, false) else {
        return;
    };
    let started = std::time::Instant::now();
    // Rank 0 of each application crashes; the others wait in a barrier that
    // never completes: the step must end anyway (--kill-on-bad-exit).
    let out = remora_in_allocation(
        &c,
        &progs,
        &[
            "run",
            "-N",
            "2",
            "--ranks-per-node",
            "1",
            &progs.path("crash"),
            ":",
            "-N",
            "2",
            &progs.path("crash"),
        ],
        Duration::from_secs(90),
    );
    let all = text(&out);
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != 124 && c != 137),
        "the step failed, not timed out: {code:?}\n{all}"
    );
    assert!(
        all.contains("[remora] job run failed") && all.contains("srun ended the step"),
        "{all}"
    );
    assert!(
        (all.contains("rank 0 (crash) on n") || all.contains("rank 2 (crash1) on n"))
            && all.contains(": Segmentation fault; srun ended the step"),
        "remora names the rank that crashed first: {all}"
    );
    eprintln!("crash ended the step in {:?}", started.elapsed());
    c.assert_no_step();
}

#[test]
fn two_applications_across_two_nodes_in_enclaves() {
    let t = "two_applications_across_two_nodes_in_enclaves";
    let Some((c, progs)) = setup(t, true) else {
        return;
    };
    let help = c.client("srun").arg("--help").output().unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("--enclave") {
        skip_line!("SKIP {t}: srun does not list --enclave with the plugin in plugstack.conf");
        return;
    }
    // The plugin must make enclaves on this cluster at all (it finds each
    // node's leviathan from its plugstack.conf line) before remora is judged.
    let probe = c.srun(&["-N2", "--enclave=shared,host-ipc", "true"]);
    if !probe.status.success() {
        skip_line!(
            "SKIP {t}: the plugin cannot make enclaves on this cluster: {}",
            text(&probe)
                .lines()
                .find(|l| l.contains("leviathan") || l.contains("error"))
                .unwrap_or("")
                .trim()
        );
        return;
    }
    let all = check_two_by_two(&c, &progs, "compose");
    assert!(all.contains("[remora] enclaves: --enclave="), "{all}");
    eprintln!("{all}");

    // An enclave per application per node: every rank prints its cpuset
    // cgroup; on each node the two applications' ranks are in two enclaves.
    let part = [
        "-N",
        "2",
        "--ranks-per-node",
        "1",
        "sh",
        "-c",
        "grep cpuset /proc/self/cgroup",
    ];
    let mut args = vec!["--slurm-enclave", "shared", "run"];
    args.extend(part);
    args.push(":");
    args.extend(part);
    let out = remora_in_allocation(&c, &progs, &args, Duration::from_secs(60));
    let all = text(&out);
    assert!(out.status.success(), "{all}\n{}", c.log_tails());
    // (label, cpuset path) per rank: `[app:rank] N:cpuset:/.../nX/hobbes/enclave-K`.
    let ranks: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (label, rest) = l.split_once("] ")?;
            let path = rest.split(":cpuset:").nth(1)?;
            Some((label.trim_start_matches('[').to_string(), path.to_string()))
        })
        .collect();
    assert_eq!(ranks.len(), 4, "{all}");
    for node in ["/n0/", "/n1/"] {
        let here: std::collections::BTreeMap<String, String> = ranks
            .iter()
            .filter(|(_, p)| p.contains(node))
            .map(|(l, p)| (l.split(':').next().unwrap_or("").to_string(), p.clone()))
            .collect();
        assert_eq!(here.len(), 2, "both applications on {node}: {ranks:?}");
        let paths: std::collections::BTreeSet<&String> = here.values().collect();
        assert_eq!(
            paths.len(),
            2,
            "one enclave per application on {node}: {ranks:?}"
        );
        assert!(
            paths.iter().all(|p| p.contains("/hobbes/enclave-")),
            "ranks in enclaves: {ranks:?}"
        );
    }

    // No enclave is left on either node: each goes when its slurmstepd has
    // ended, which srun does not wait for (bounded poll).
    for i in 0..2 {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let out = c.hobbes_on(i, &["list-enclaves", "--json"]);
            let list = String::from_utf8_lossy(&out.stdout).to_string();
            if !list.contains("slurm-") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {i} keeps an enclave: {list}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn dry_run_prints_the_srun_step_without_slurm() {
    // Only the allocation's description: no cluster, no srun configuration.
    let out = Command::new(REMORA)
        .args([
            "--dry-run",
            "run",
            "-N",
            "2",
            "--ranks-per-node",
            "1",
            "./sim",
            "--in",
            "a b",
            ":",
            "-n",
            "2",
            "./ana",
        ])
        .env("SLURM_JOB_ID", "7")
        .env("SLURM_JOB_NODELIST", "n[0-1]")
        .env("SLURM_JOB_NUM_NODES", "2")
        .env("SLURM_JOB_CPUS_PER_NODE", "1(x2)")
        .env("SLURM_CONF", "/nonexistent/slurm.conf")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(" --mpi=pmi2 --ntasks=4 --nodes=2 --distribution=arbitrary --kill-on-bad-exit=1 --label --job-name=remora:run --overcommit --export=ALL --multi-prog "),
        "{all}"
    );
    assert!(
        stdout.contains("#   0-1 env -- ") && stdout.contains(" ./sim --in 'a b'\n"),
        "{all}"
    );
    assert!(
        stdout.contains("#   2-3 env -- ")
            && stdout.contains("REMORA_APP_FIRST_RANK=2 REMORA_APP_SIZE=2 REMORA_JOB_SIZE=4"),
        "{all}"
    );
    assert!(stdout.contains("# <hostfile>: n0 n1 n0 n1"), "{all}");
}

#[test]
fn remora_list_shows_the_slurm_step_and_ctrl_c_ends_it() {
    let t = "remora_list_shows_the_slurm_step_and_ctrl_c_ends_it";
    let Some((c, progs)) = setup(t, false) else {
        return;
    };
    // The shell prints its pid, then becomes remora.
    let mut job = c
        .client("timeout")
        .args([
            "--kill-after=5",
            "90",
            "salloc",
            "--quiet",
            "-N2",
            "sh",
            "-c",
        ])
        .arg(format!(
            "echo pid=$$; exec {REMORA} run -N 2 --ranks-per-node 1 {spin} : -n 2 {spin}",
            spin = progs.path("spin")
        ))
        .current_dir(progs.dir.path())
        .env("HOBBES_REMORA_LIB", &progs.lib)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(job.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let pid: i32 = first.trim().strip_prefix("pid=").unwrap().parse().unwrap();
    // Every rank is up (each prints "spinning") before the step is listed.
    let mut spinning = 0;
    let mut line = String::new();
    while spinning < 4 {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "remora ended early"
        );
        if line.contains("spinning") {
            assert!(line.starts_with("[spin"), "labelled: {line}");
            spinning += 1;
        }
    }
    let list = Command::new(REMORA)
        .args(["--socket", "/nonexistent/leviathan.sock", "list"])
        .env("SLURM_CONF", c.slurm_conf())
        .output()
        .unwrap();
    let listed = text(&list);
    assert!(list.status.success(), "{listed}");
    assert!(
        listed.contains("SLURM STEP") && listed.contains("remora:run") && listed.contains(".0 "),
        "{listed}"
    );
    // Ctrl-C: remora sends SIGTERM to srun, which ends the step.
    let signalled = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = job.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // srun's code for a step it force-terminated (its tasks were killed:
    // 137 here); the 90 s timeout would be 124.
    assert!(
        out.status.code().is_some_and(|c| c != 0 && c != 124),
        "{:?}\n{err}",
        out.status
    );
    assert!(err.contains("SIGINT: sending SIGTERM to srun"), "{err}");
    let took = signalled.elapsed();
    eprintln!("Ctrl-C ended the step in {took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    c.assert_no_step();
}

#[test]
fn open_mpi_applications_across_two_nodes_share_one_universe() {
    let t = "open_mpi_applications_across_two_nodes_share_one_universe";
    let Some((c, progs)) = setup(t, false) else {
        return;
    };
    if !progs.dir.path().join("ocompose").exists() {
        skip_line!("SKIP {t}: no mpicc.openmpi or libremora-ompi.so (cargo build -p remora-pmpi)");
        return;
    }
    let mpis = c.client("srun").arg("--mpi=list").output().unwrap();
    if !text(&mpis).contains("pmix") {
        skip_line!("SKIP {t}: this Slurm has no PMIx plugin (srun --mpi=list)");
        return;
    }
    // Slurm's PMIx serves Open MPI across the nodes; libremora-ompi splits it.
    check_two_by_two(&c, &progs, "ocompose");
}
