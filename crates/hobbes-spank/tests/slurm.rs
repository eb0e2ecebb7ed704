//! The SPANK plugin in a real (local) Slurm 22.05 cluster: two simulated
//! nodes (`scripts/slurm-cluster.sh` through `tests/support/slurm.rs`), each
//! a network namespace with its own leviathan managing one core, which it
//! keeps as its host core: only `shared` enclaves fit.
//!
//! Each test starts a cluster of its own (about a second) and stops it,
//! checking nothing is left; the harness runs one cluster at a time (the
//! nodes' cores are exclusive). Scenarios: an enclave per step on both
//! nodes, an enclave per application (`HOBBES_ENCLAVE_GROUPS`), ownership by
//! the job's user, exit codes and signals through srun, a rank crash and an
//! `scancel` leaving no enclave, a step asking for too many cores, MPICH
//! across the nodes, and a node's slurmd killed mid-step. Each prints its
//! times; without root, Slurm or cores each prints `SKIP <test>: <reason>`.
//!
//! Tasks wait on a gate file the test writes (never on a sleep); the test
//! polls the nodes' daemons with deadlines.

#[path = "../../../tests/support/slurm.rs"]
mod slurm;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use slurm::{Skip, SlurmCluster};

fn text(out: &Output) -> String {
    format!(
        "rc {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Poll `f` every 50 ms until it gives `Some`, at most `limit`; panics
/// naming `what` (with the last state) past it.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

struct Cluster {
    c: SlurmCluster,
    /// Gates the tasks wait on: a directory every job user can read.
    gates: tempfile::TempDir,
    gate_no: u32,
}

/// A step running in the background (`srun` under `timeout`), killed and
/// reaped however the test ends.
struct Bg(Option<Child>);

impl Bg {
    fn wait(mut self, limit: Duration) -> Output {
        let child = self.0.take().expect("running");
        let pid = child.id();
        // `timeout` around srun bounds it; this bounds us if that fails.
        let deadline = Instant::now() + limit + Duration::from_secs(10);
        let waiter = std::thread::spawn(move || child.wait_with_output());
        while !waiter.is_finished() {
            if Instant::now() > deadline {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        waiter.join().unwrap().expect("srun output")
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// A new gate file name (not yet there) and the shell loop waiting for it.
    fn gate(&mut self) -> (PathBuf, String) {
        self.gate_no += 1;
        let p = self.gates.path().join(format!("gate{}", self.gate_no));
        let wait = format!("while [ ! -e {} ]; do sleep 0.05; done", p.display());
        (p, wait)
    }

    fn srun_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = self.c.client("timeout");
        cmd.args(["--kill-after=5", "60", "srun"]).args(args);
        cmd.envs(env.iter().copied());
        cmd.output().expect("srun")
    }

    fn srun(&self, args: &[&str]) -> Output {
        self.srun_env(&[], args)
    }

    fn srun_bg(&self, env: &[(&str, &str)], args: &[&str]) -> Bg {
        let mut cmd = self.c.client("timeout");
        cmd.args(["--kill-after=5", "60", "srun"]).args(args);
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        Bg(Some(cmd.spawn().expect("srun")))
    }

    fn hobbes_json(&self, node: usize, args: &[&str]) -> Result<Value, String> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.c.hobbes_on(node, &a);
        if !out.status.success() {
            return Err(format!("hobbes {args:?} on n{node}: {}", text(&out)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))
    }

    fn enclaves(&self, node: usize) -> Vec<Value> {
        self.hobbes_json(node, &["list-enclaves"])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    fn apps(&self, node: usize) -> Vec<Value> {
        self.hobbes_json(node, &["list-apps"])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Wait until node `node` lists `n` Slurm enclaves; them.
    fn wait_enclaves(&self, node: usize, n: usize) -> Vec<Value> {
        wait_for(
            &format!("{n} enclave(s) on n{node}"),
            Duration::from_secs(20),
            || {
                let e = self.enclaves(node);
                let running: Vec<Value> = e
                    .iter()
                    .filter(|e| e["state"] == "running" && e["slurm"].is_object())
                    .cloned()
                    .collect();
                if running.len() == n {
                    Ok(running)
                } else {
                    Err(format!("{e:?}"))
                }
            },
        )
    }

    /// Wait until `n` joined apps run on node `node`; them.
    fn wait_apps(&self, node: usize, n: usize) -> Vec<Value> {
        wait_for(
            &format!("{n} joined task(s) running on n{node}"),
            Duration::from_secs(20),
            || {
                let a: Vec<Value> = self
                    .apps(node)
                    .into_iter()
                    .filter(|a| a["state"] == "running" && a["slurm"].is_object())
                    .collect();
                if a.len() == n {
                    Ok(a)
                } else {
                    Err(format!("{a:?}"))
                }
            },
        )
    }

    /// No enclave is left on either node (the daemon destroys them
    /// asynchronously: polled).
    fn no_enclave_left(&self, why: &str) {
        for node in 0..self.c.nodes.len() {
            wait_for(
                &format!("no enclave left on n{node} ({why})"),
                Duration::from_secs(20),
                || {
                    let e = self
                        .hobbes_json(node, &["list-enclaves"])
                        .map_err(|e| e.to_string())?;
                    if e.as_array().is_some_and(Vec::is_empty) {
                        Ok(())
                    } else {
                        Err(e.to_string())
                    }
                },
            );
        }
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(u64::MAX)
}

/// Lines of `stdout` starting with `tag `, split in words.
fn tagged(out: &Output, tag: &str) -> Vec<Vec<String>> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{tag} ")))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// `key=value` of a tagged line.
fn field<'a>(words: &'a [String], key: &str) -> &'a str {
    words
        .iter()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
}

/// What each task prints: its rank, node, pid (in the enclave's PID
/// namespace), cores and cpuset cgroup.
const REPORT: &str = "echo \"$TAG rank=$SLURM_PROCID node=$SLURMD_NODENAME pid=$$ uid=$(id -u) cpus=$(grep Cpus_allowed_list /proc/self/status | cut -f2) cg=$(grep -m1 cpuset /proc/self/cgroup || head -1 /proc/self/cgroup)\"";

/// Is `/proc/self/cgroup`'s line `cg` enclave `id`'s cgroup (or one below)?
fn in_enclave_cgroup(cg: &str, id: u64) -> bool {
    let dir = format!("/enclave-{id}");
    cg.ends_with(&dir) || cg.contains(&format!("{dir}/"))
}

/// Run `scenario` named `test` on a cluster of its own, then stop it and
/// check that nothing is left; `SKIP` when no cluster can run here.
fn run(test: &str, scenario: impl FnOnce(&mut Cluster)) {
    run_with(test, 2, &[], scenario)
}

/// [`run`] on `nodes` nodes, with more flags for slurm-cluster.sh.
fn run_with(test: &str, nodes: usize, flags: &[&str], scenario: impl FnOnce(&mut Cluster)) {
    let t0 = Instant::now();
    let so = match slurm::spank_plugin() {
        Ok(p) => p,
        Err(skip) => return skip.print(test),
    };
    let c = match SlurmCluster::start_with(nodes, Some(&so), flags) {
        Ok(c) => c,
        Err(skip) => return skip.print(test),
    };
    let up = c.start_time;
    let gates = tempfile::Builder::new()
        .prefix("hobbes-spank-gates-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(gates.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut k = Cluster {
        c,
        gates,
        gate_no: 0,
    };
    let t1 = Instant::now();
    scenario(&mut k);
    let ran = t1.elapsed();
    let mut c = k.c;
    let out = c.stop();
    assert!(out.status.success(), "stop: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
    let stop = c.stop_time.unwrap_or_default();
    eprintln!(
        "{test}: ok in {:.1?} (cluster up {up:.1?}, scenario {ran:.1?}, stop {stop:.1?}; {:.1?} with the wait for the cluster lock)",
        up + ran + stop,
        t0.elapsed(),
    );
}

#[test]
fn an_enclave_per_step_on_two_nodes() {
    run("an_enclave_per_step_on_two_nodes", enclave_per_step);
}

#[test]
fn an_enclave_per_application_per_node() {
    run(
        "an_enclave_per_application_per_node",
        enclave_per_application,
    );
}

#[test]
fn enclaves_and_tasks_belong_to_the_job_user() {
    run(
        "enclaves_and_tasks_belong_to_the_job_user",
        owned_by_the_job_user,
    );
}

#[test]
fn exit_codes_and_signals_reach_srun() {
    run("exit_codes_and_signals_reach_srun", |k| exit_and_signal(k));
}

#[test]
fn too_many_cores_fails_naming_the_node() {
    run("too_many_cores_fails_naming_the_node", |k| {
        too_many_cores(k)
    });
}

#[test]
fn a_rank_crash_and_scancel_leave_no_enclave() {
    run("a_rank_crash_and_scancel_leave_no_enclave", |k| {
        rank_crash(k);
        scancel(k);
    });
}

#[test]
fn mpich_across_nodes_in_enclaves() {
    run("mpich_across_nodes_in_enclaves", |k| mpich(k));
}

#[test]
fn slurmd_killed_mid_step_leaves_no_enclave() {
    run("slurmd_killed_mid_step_leaves_no_enclave", slurmd_killed);
}

#[test]
fn an_enclave_inside_slurms_own_cgroups() {
    run_with(
        "an_enclave_inside_slurms_own_cgroups",
        1,
        &["--slurm-cgroups"],
        inside_slurm_cgroups,
    );
}

/// Slurm confines the job itself (task/cgroup, proctrack/cgroup; one node,
/// the whole machine, leviathan --slurm-cgroups keeping the first core):
/// the enclave takes a core of the step's allocation and lives inside the
/// step's cpuset and memory cgroups; the task stays in Slurm's freezer
/// cgroup; when the step ends Slurm removes its cgroups (ours went first).
/// A step asking for more cores than its allocation has free fails naming
/// the node and the allocation.
fn inside_slurm_cgroups(k: &mut Cluster) {
    let (gate, wait) = k.gate();
    let memcg = "$(grep :memory: /proc/self/cgroup | cut -d: -f3)";
    let script = format!(
        "TAG=T; {REPORT}; echo \"M limit=$(cat /sys/fs/cgroup/memory{memcg}/memory.limit_in_bytes) memcg={memcg} freezer=$(grep :freezer: /proc/self/cgroup | cut -d: -f3)\"; {wait}"
    );
    let bg = k.srun_bg(
        &[],
        &[
            "-n1",
            "-c2",
            "--enclave=cores=1,mem=128M",
            "sh",
            "-c",
            &script,
        ],
    );
    let e = k.wait_enclaves(0, 1).remove(0);
    let job = num(&e["slurm"]["job_id"]);
    let core = num(&e["cores"][0]);
    let nest = format!("/job_{job}/step_0/hobbes-slurm-{job}.0");
    k.wait_apps(0, 1);
    let dirs = wait_for(
        "the enclave's cgroups in the step",
        Duration::from_secs(20),
        || {
            let e = k.enclaves(0).into_iter().next().ok_or("no enclave")?;
            match e["step_cgroups"].as_array() {
                Some(d) if d.len() == 2 => Ok(d
                    .iter()
                    .filter_map(|d| d.as_str().map(String::from))
                    .collect::<Vec<_>>()),
                _ => Err(e.to_string()),
            }
        },
    );
    for d in &dirs {
        assert!(
            d.ends_with(&nest) && Path::new(d).is_dir(),
            "{d} is not {nest}"
        );
    }
    std::fs::write(&gate, "").unwrap();
    let out = bg.wait(Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let t = &tagged(&out, "T")[0];
    assert_eq!(field(t, "cpus"), core.to_string(), "{}", text(&out));
    assert!(
        field(t, "pid").parse::<u64>().is_ok_and(|p| p < 10),
        "a small pid (the enclave's PID namespace): {}",
        text(&out)
    );
    assert!(
        field(t, "cg").contains("/slurm_n0/") && field(t, "cg").ends_with(&nest),
        "{}",
        text(&out)
    );
    let m = &tagged(&out, "M")[0];
    assert_eq!(
        field(m, "limit"),
        (128u64 << 20).to_string(),
        "{}",
        text(&out)
    );
    assert!(field(m, "memcg").ends_with(&nest), "{}", text(&out));
    assert!(
        field(m, "freezer").ends_with(&format!("/job_{job}/step_0")),
        "Slurm still tracks the task: {}",
        text(&out)
    );
    k.no_enclave_left("the step ended");
    // Slurm removed its step's (and job's) cgroups: nothing of ours stood in the way.
    for d in &dirs {
        let job_dir = Path::new(d)
            .parent()
            .and_then(Path::parent)
            .expect("job dir");
        wait_for(
            &format!("{} removed by Slurm", job_dir.display()),
            Duration::from_secs(20),
            || {
                if job_dir.exists() {
                    Err("still there".to_string())
                } else {
                    Ok(())
                }
            },
        );
    }

    let out = k.srun(&["-n1", "-c2", "--enclave=cores=2", "true"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node n0") && err.contains("step's allocation"),
        "{}",
        text(&out)
    );
    k.no_enclave_left("the step failed");
}

fn enclave_per_step(k: &mut Cluster) {
    let (gate, wait) = k.gate();
    let script = format!("TAG=T; {REPORT}; {wait}");
    let bg = k.srun_bg(
        &[],
        &["-N2", "-n2", "--enclave=shared", "sh", "-c", &script],
    );
    // While it runs: each node's leviathan has the step's enclave, tagged,
    // and the task as a joined app with its Slurm ids.
    let mut ids = Vec::new();
    for node in 0..2 {
        let e = k.wait_enclaves(node, 1).remove(0);
        let slurm = &e["slurm"];
        let name = format!("slurm-{}.{}", num(&slurm["job_id"]), num(&slurm["step_id"]));
        assert_eq!(e["name"], name.as_str(), "{e}");
        assert_eq!(slurm["node"], format!("n{node}").as_str(), "{e}");
        assert_eq!(e["shared"], true, "{e}");
        let a = k.wait_apps(node, 1).remove(0);
        assert_eq!(a["enclave"], e["id"], "{a}");
        assert_eq!(a["slurm"]["job_id"], slurm["job_id"], "{a}");
        assert_eq!(a["slurm"]["step_id"], slurm["step_id"], "{a}");
        assert_eq!(num(&a["slurm"]["local_id"]), 0, "{a}");
        assert_eq!(
            a["name"],
            format!("task-{}", num(&a["slurm"]["task_id"])).as_str()
        );
        ids.push(num(&e["id"]));
    }
    std::fs::write(&gate, "").unwrap();
    let out = bg.wait(Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let lines = tagged(&out, "T");
    assert_eq!(lines.len(), 2, "{}", text(&out));
    for l in &lines {
        let node: usize = field(l, "node").trim_start_matches('n').parse().unwrap();
        assert_eq!(
            field(l, "cpus"),
            k.c.node(node).core.to_string(),
            "the task runs on its node's core: {l:?}"
        );
        let pid: u32 = field(l, "pid").parse().unwrap();
        assert!(
            pid <= 10,
            "a small pid, in the enclave's PID namespace: {l:?}"
        );
        let cg = field(l, "cg");
        assert!(
            in_enclave_cgroup(cg, ids[node]),
            "in its enclave's cgroup: {l:?}"
        );
    }
    k.no_enclave_left("after the step");
}

fn enclave_per_application(k: &mut Cluster) {
    let (gate, wait) = k.gate();
    let script = format!("TAG=G; {REPORT}; {wait}");
    let bg = k.srun_bg(
        &[("HOBBES_ENCLAVE_GROUPS", "a=0-1,b=2-3")],
        &[
            "-N2",
            "-n4",
            "--ntasks-per-node=2",
            "--distribution=cyclic",
            "--enclave=shared",
            "sh",
            "-c",
            &script,
        ],
    );
    // Cyclic: n0 has tasks 0 (a) and 2 (b), n1 tasks 1 (a) and 3 (b).
    let mut by_name = std::collections::BTreeMap::new();
    for node in 0..2 {
        let es = k.wait_enclaves(node, 2);
        let s = &es[0]["slurm"];
        let base = format!("slurm-{}.{}", num(&s["job_id"]), num(&s["step_id"]));
        let mut names: Vec<String> = es
            .iter()
            .map(|e| e["name"].as_str().unwrap_or("").to_string())
            .collect();
        names.sort();
        assert_eq!(names, [format!("{base}-a"), format!("{base}-b")], "n{node}");
        for e in &es {
            assert_eq!(e["cores"].as_array().map_or(0, Vec::len), 1, "{e}");
            let app = e["name"]
                .as_str()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .to_string();
            by_name.insert((node, app), num(&e["id"]));
        }
        let apps = k.wait_apps(node, 2);
        for a in &apps {
            let task = num(&a["slurm"]["task_id"]);
            let app = if task < 2 { "a" } else { "b" };
            assert_eq!(
                num(&a["enclave"]),
                by_name[&(node, app.to_string())],
                "task {task} on n{node} is in {app}'s enclave: {a}"
            );
        }
    }
    std::fs::write(&gate, "").unwrap();
    let out = bg.wait(Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let lines = tagged(&out, "G");
    assert_eq!(lines.len(), 4, "{}", text(&out));
    for l in &lines {
        let rank: u32 = field(l, "rank").parse().unwrap();
        let node: usize = field(l, "node").trim_start_matches('n').parse().unwrap();
        assert_eq!(node as u32, rank % 2, "cyclic: {l:?}");
        let app = if rank < 2 { "a" } else { "b" };
        let id = by_name[&(node, app.to_string())];
        assert!(
            in_enclave_cgroup(field(l, "cg"), id),
            "rank {rank} in {app}'s enclave {id}: {l:?}"
        );
    }
    k.no_enclave_left("after the grouped step");

    // A bad value fails the step, naming the variable.
    let out = k.srun_env(
        &[("HOBBES_ENCLAVE_GROUPS", "a=0-1,b=1-3")],
        &["-N2", "-n2", "--enclave=shared", "true"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HOBBES_ENCLAVE_GROUPS") && err.contains("overlap"),
        "{}",
        text(&out)
    );
    k.no_enclave_left("after the refused groups");
}

/// The job's user owns its enclaves and tasks: as that user (nobody),
/// `hobbes kill-app` ends its task and `destroy-enclave` its enclave.
fn owned_by_the_job_user(k: &mut Cluster) {
    let nobody = 65534;
    // The job user reaches the daemons' sockets through the cluster's
    // directory (a 0700 temporary directory).
    std::fs::set_permissions(k.c.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (_gate, wait) = k.gate();
    let script = format!("TAG=O; {REPORT}; {wait}");
    let bg = k.srun_bg(
        &[],
        &[
            "--uid=65534",
            "--gid=65534",
            "-N2",
            "-n2",
            "--enclave=shared",
            "sh",
            "-c",
            &script,
        ],
    );
    let mut enclaves = Vec::new();
    for node in 0..2 {
        let e = k.wait_enclaves(node, 1).remove(0);
        assert_eq!(num(&e["owner_uid"]), nobody, "{e}");
        assert_eq!(num(&e["owner_gid"]), nobody, "{e}");
        let a = k.wait_apps(node, 1).remove(0);
        assert_eq!(num(&a["owner_uid"]), nobody, "{a}");
        enclaves.push((e, a));
    }
    let as_nobody = |node: usize, args: &[&str]| {
        let mut cmd: Vec<String> = vec![
            "setpriv".into(),
            "--reuid=65534".into(),
            "--regid=65534".into(),
            "--clear-groups".into(),
            k.c.hobbes().display().to_string(),
            "--socket".into(),
            k.c.node(node).socket.display().to_string(),
        ];
        cmd.extend(args.iter().map(|s| s.to_string()));
        k.c.node_exec(node, &cmd)
    };
    // Another user may not.
    let out = k.c.node_exec(
        0,
        &[
            "setpriv",
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            k.c.hobbes().to_str().unwrap(),
            "--socket",
            k.c.node(0).socket.to_str().unwrap(),
            "destroy-enclave",
            enclaves[0].0["name"].as_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        text(&out)
    );
    // n0: the user kills its task; n1: the user destroys its enclave.
    let app = num(&enclaves[0].1["id"]).to_string();
    let out = as_nobody(0, &["kill-app", &app]);
    assert!(
        out.status.success(),
        "kill-app as the job user: {}",
        text(&out)
    );
    let name = enclaves[1].0["name"].as_str().unwrap().to_string();
    let out = as_nobody(1, &["destroy-enclave", &name]);
    assert!(
        out.status.success(),
        "destroy-enclave as the job user: {}",
        text(&out)
    );
    // Both tasks are gone: the step ends, unsuccessfully.
    let out = bg.wait(Duration::from_secs(60));
    assert!(!out.status.success(), "{}", text(&out));
    let lines = tagged(&out, "O");
    assert!(
        lines.iter().all(|l| field(l, "uid") == "65534"),
        "{}",
        text(&out)
    );
    k.no_enclave_left("after the job user's kill and destroy");

    // A batch job of that user: its srun step runs in the user's enclaves.
    let dir = k.gates.path().to_path_buf();
    let batch = dir.join("batch.sh");
    std::fs::write(
        &batch,
        format!("#!/bin/sh\nsrun --enclave=shared sh -c '{REPORT}'\necho \"TAG=B srun_rc=$?\"\n")
            .replace("$TAG", "B"),
    )
    .unwrap();
    std::fs::set_permissions(&batch, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = dir.join("batch.out");
    let out =
        k.c.client("sbatch")
            .args(["--parsable", "--uid=65534", "--gid=65534", "-N2", "-n2"])
            .arg(format!("--chdir={}", dir.display()))
            .arg(format!("--output={}", output.display()))
            .arg(&batch)
            .output()
            .expect("sbatch");
    assert!(out.status.success(), "sbatch: {}", text(&out));
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    wait_for(
        &format!("batch job {job} to end"),
        Duration::from_secs(60),
        || {
            let q =
                k.c.client("squeue")
                    .args(["-h", "-j", &job])
                    .output()
                    .map_err(|e| e.to_string())?;
            if q.stdout.is_empty() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&q.stdout).into_owned())
            }
        },
    );
    let log = std::fs::read_to_string(&output).unwrap_or_default();
    let tasks: Vec<&str> = log.lines().filter(|l| l.starts_with("B rank=")).collect();
    assert_eq!(tasks.len(), 2, "{log}");
    for t in &tasks {
        let words: Vec<String> = t.split_whitespace().map(String::from).collect();
        assert_eq!(field(&words, "uid"), "65534", "{log}");
        assert!(
            field(&words, "pid").parse::<u64>().is_ok_and(|p| p < 10),
            "{log}"
        );
        assert!(field(&words, "cg").contains("/hobbes/enclave-"), "{log}");
    }
    assert!(log.contains("srun_rc=0"), "{log}");
    k.no_enclave_left("after the batch job");
}

fn exit_and_signal(k: &Cluster) {
    let out = k.srun(&["-N1", "-n1", "--enclave=shared", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Exited with exit code 3"),
        "{}",
        text(&out)
    );
    let out = k.srun(&[
        "-N1",
        "-n1",
        "--enclave=shared",
        "sh",
        "-c",
        "kill -TERM $$",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Terminated"),
        "{}",
        text(&out)
    );
    eprintln!("  SIGTERM: srun rc {:?}", out.status.code());
    k.no_enclave_left("after exit and signal");
}

fn too_many_cores(k: &Cluster) {
    for spec in ["--enclave=exclusive,cores=4", "--enclave=shared,cores=4"] {
        let out = k.srun(&["-N2", "-n2", spec, "true"]);
        assert!(!out.status.success(), "{spec}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            (err.contains("node n0") || err.contains("node n1"))
                && err.contains("no room for enclave"),
            "{spec}: {}",
            text(&out)
        );
    }
    k.no_enclave_left("after the refused steps");
}

fn rank_crash(k: &mut Cluster) {
    let (_gate, wait) = k.gate();
    let script = format!("if [ $SLURM_PROCID = 1 ]; then kill -SEGV $$; fi; {wait}");
    let out = k.srun(&[
        "-N2",
        "-n2",
        "--kill-on-bad-exit=1",
        "--enclave=shared",
        "sh",
        "-c",
        &script,
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Segmentation fault"),
        "{}",
        text(&out)
    );
    k.no_enclave_left("after a rank crash");
}

fn scancel(k: &mut Cluster) {
    let (_gate, wait) = k.gate();
    let bg = k.srun_bg(&[], &["-N2", "-n2", "--enclave=shared", "sh", "-c", &wait]);
    let e = k.wait_enclaves(0, 1).remove(0);
    k.wait_enclaves(1, 1);
    let job = num(&e["slurm"]["job_id"]).to_string();
    let out =
        k.c.client("squeue")
            .args(["-h", "-o", "%i"])
            .output()
            .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == job),
        "squeue shows job {job}: {}",
        text(&out)
    );
    let out = k.c.client("scancel").arg(&job).output().unwrap();
    assert!(out.status.success(), "scancel: {}", text(&out));
    let out = bg.wait(Duration::from_secs(60));
    assert!(!out.status.success(), "{}", text(&out));
    k.no_enclave_left("after scancel");
}

fn mpich(k: &Cluster) {
    if Command::new("mpicc.mpich").arg("-v").output().is_err() {
        return Skip("mpicc.mpich not installed (scripts/deps.sh)".into())
            .print("mpich_across_nodes_in_enclaves");
    }
    let exe = k.gates.path().join("hello");
    let src = slurm::repo_root().join("crates/remora/tests/c/hello.c");
    let out = Command::new("mpicc.mpich")
        .args(["-O1", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "mpicc: {}", text(&out));
    let out = k.srun(&[
        "--mpi=pmi2",
        "-N2",
        "-n2",
        "--enclave=shared",
        exe.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "MPI hello: {}", text(&out));
    let hellos = tagged(&out, "hello");
    assert_eq!(hellos.len(), 2, "{}", text(&out));
    for h in &hellos {
        assert_eq!(field(h, "size"), "2", "{h:?}");
        assert_eq!(field(h, "sum"), "2", "{h:?}");
    }
    k.no_enclave_left("after MPICH");
}

fn slurmd_killed(k: &mut Cluster) {
    let (gate, wait) = k.gate();
    let bg = k.srun_bg(&[], &["-N2", "-n2", "--enclave=shared", "sh", "-c", &wait]);
    k.wait_enclaves(0, 1);
    let e = k.wait_enclaves(1, 1).remove(0);
    let stepd = num(&e["bound_to"]["pid"]);
    let slurmd = k.c.node(1).slurmd_pid;
    let st = Command::new("kill")
        .args(["-9", &slurmd.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_for("n1's slurmd to die", Duration::from_secs(10), || {
        let s = std::fs::read_to_string(format!("/proc/{slurmd}/stat")).unwrap_or_default();
        match s.rsplit_once(") ") {
            Some((_, rest)) if !rest.starts_with('Z') => Err(rest[..1].to_string()),
            _ => Ok(()),
        }
    });
    // slurmstepd outlives slurmd: the step goes on, and its enclave with it.
    let alive = Path::new(&format!("/proc/{stepd}")).exists();
    eprintln!("  after slurmd's kill -9: slurmstepd (pid {stepd}) alive: {alive}");
    assert_eq!(
        k.enclaves(1).len(),
        1,
        "the step's enclave stays while its slurmstepd runs"
    );
    // The step ends normally; its enclave goes with its slurmstepd.
    std::fs::write(&gate, "").unwrap();
    let out = bg.wait(Duration::from_secs(60));
    eprintln!(
        "  the step without n1's slurmd: {}",
        text(&out).replace('\n', " | ")
    );
    wait_for("n1's enclave to go", Duration::from_secs(20), || {
        let e = k.enclaves(1);
        if e.is_empty() {
            Ok(())
        } else {
            Err(format!("{e:?}"))
        }
    });
    // The node returns: slurmd restarted, the node idle again, no enclave.
    k.c.restart_slurmd(1);
    wait_for("n1 idle again", Duration::from_secs(30), || {
        let out =
            k.c.client("sinfo")
                .args(["-h", "-N", "-n", "n1", "-o", "%t"])
                .output()
                .map_err(|e| e.to_string())?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if s == "idle" {
            Ok(())
        } else {
            Err(s)
        }
    });
    k.no_enclave_left("after n1's slurmd returned");
    // And it runs steps in enclaves again.
    let out = k.srun(&["-N2", "-n2", "--enclave=shared", "true"]);
    assert!(
        out.status.success(),
        "a step after n1's return: {}",
        text(&out)
    );
    k.no_enclave_left("after the step on the returned node");
}
