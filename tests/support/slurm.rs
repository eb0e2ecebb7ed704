//! A local Slurm cluster for integration tests: `scripts/slurm-cluster.sh` run
//! into a temporary directory, driven from Rust.
//!
//! Shared by the crates whose tests need Slurm (Remora's, the SPANK plugin's);
//! include it by path, `#[path = "../../../tests/support/slurm.rs"] mod slurm;`.
//! It needs `serde_json` and `tempfile` (as dependencies or dev-dependencies).
//!
//! ```ignore
//! let c = match slurm::SlurmCluster::start(2, None) {
//!     Ok(c) => c,
//!     Err(skip) => return skip.print("my_test"),
//! };
//! let out = c.srun(&["-N2", "-n2", "hostname"]);
//! let st = c.node_exec(0, &[c.hobbes(), "--socket", c.node(0).socket.to_str().unwrap(), "status"]);
//! ```
//!
//! Every node is a network namespace with its own `leviathan` and `slurmd`;
//! `srun` and the other clients run in the root namespace (slurmctld listens
//! on the bridge there). Dropping the cluster stops it (also when the test
//! panics: then the logs' last lines are printed first), so no daemon,
//! namespace, link or cgroup is left. One cluster at a time per test binary
//! (a lock): the nodes' cores are exclusive. Other binaries that start
//! daemons on this node must not run at the same time (CI runs test binaries
//! one after the other; by hand, `flock /tmp/hobbes-daemon-tests.lock`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a test cannot run here; the caller prints `SKIP <test>: <reason>`.
#[derive(Debug, Clone)]
pub struct Skip(pub String);

impl Skip {
    /// Print `SKIP <test>: <reason>` straight to stdout (past the harness's
    /// capture), as the other root tests do.
    pub fn print(&self, test: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "SKIP {test}: {}", self.0);
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One simulated node, as the script's `status --json` describes it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Slurm's name: `n0`, `n1`, ...
    pub name: String,
    /// The core whose exclusive cpuset the node's daemons run in.
    pub core: u32,
    /// The node's address (its veth end in its namespace).
    pub addr: String,
    /// `/run/netns/<ns>`, for `nsenter --net=`.
    pub netns_path: PathBuf,
    /// The node's leviathan's state directory and socket.
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub leviathan_pid: u32,
    pub slurmd_pid: u32,
    /// The node's cgroup directories (v1: its cpuset and memory cgroups).
    pub cgroups: Vec<PathBuf>,
}

/// A running local cluster; stopped when dropped.
pub struct SlurmCluster {
    dir: tempfile::TempDir,
    script: PathBuf,
    /// The script's `start --json` answer.
    pub info: serde_json::Value,
    pub nodes: Vec<Node>,
    /// Wall time of `start` and (once stopped) `stop`.
    pub start_time: Duration,
    pub stop_time: Option<Duration>,
    stopped: bool,
    _one_at_a_time: MutexGuard<'static, ()>,
}

static CLUSTER: Mutex<()> = Mutex::new(());

/// The repository's root: the first directory above the including crate
/// (`CARGO_MANIFEST_DIR`, fixed at build time) that has the script.
pub fn repo_root() -> PathBuf {
    let mut d = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !d.join("scripts/slurm-cluster.sh").exists() {
        assert!(
            d.pop(),
            "no scripts/slurm-cluster.sh above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
    d
}

/// The target directory's profile folder (`target/debug`): where this test
/// binary's `deps/` is, and where `cargo build` put `leviathan` and `hobbes`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn online_cores() -> usize {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    list.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
            None => 1,
        })
        .sum()
}

fn in_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join(bin).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(bin).is_file())
    })
}

/// Run `cmd`, killed after `limit` (`timeout` sends SIGTERM, then SIGKILL 5 s
/// later); its output.
fn bounded(limit: Duration, program: &str, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    Command::new("timeout")
        .arg("--kill-after=5")
        .arg(format!("{}", limit.as_secs().max(1)))
        .arg(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn string(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

fn number(v: &serde_json::Value, key: &str) -> u32 {
    v[key].as_u64().unwrap_or(0) as u32
}

impl SlurmCluster {
    /// Can a cluster of `nodes` run here? `Err(Skip)` without root, without
    /// Slurm (`slurmctld`, `slurmd`, `srun`), with fewer than `max(nodes, 2)`
    /// cores, or without a built `leviathan` and `hobbes`.
    pub fn check(nodes: usize) -> Result<(), Skip> {
        if !is_root() {
            return Err(Skip("needs root (network namespaces, cgroups)".into()));
        }
        for bin in ["slurmctld", "slurmd", "srun", "sinfo", "scontrol"] {
            if !in_path(bin) {
                return Err(Skip(format!(
                    "no {bin} (scripts/deps.sh installs slurmctld slurmd slurm-client)"
                )));
            }
        }
        let cores = online_cores();
        if cores < nodes.max(2) {
            return Err(Skip(format!(
                "needs {} cores (one per node), this machine has {cores}",
                nodes.max(2)
            )));
        }
        let built =
            || profile_dir().join("leviathan").is_file() && profile_dir().join("hobbes").is_file();
        if !built() {
            // `cargo test -p <crate>` builds no other crate's binaries: build them.
            let _ = Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "leviathan", "-p", "hobbes-cli"])
                .status();
        }
        if !built() {
            return Err(Skip(format!(
                "no leviathan and hobbes in {} (cargo build -p leviathan -p hobbes-cli)",
                profile_dir().display()
            )));
        }
        Ok(())
    }

    /// Start a cluster of `nodes` nodes (`--plugin`: the SPANK plugin that
    /// plugstack.conf requires). `Err(Skip)` without root, without Slurm
    /// (`slurmctld`, `slurmd`, `srun`), with fewer than `max(nodes, 2)` cores,
    /// or without a built `leviathan`/`hobbes`. A cluster that does not come
    /// up is a panic, with the script's output (which has the logs' tails).
    pub fn start(nodes: usize, plugin: Option<&Path>) -> Result<SlurmCluster, Skip> {
        SlurmCluster::start_with(nodes, plugin, &[])
    }

    /// [`SlurmCluster::start`] with more of the script's flags (`--slurm-cgroups`).
    pub fn start_with(
        nodes: usize,
        plugin: Option<&Path>,
        flags: &[&str],
    ) -> Result<SlurmCluster, Skip> {
        SlurmCluster::check(nodes)?;
        let leviathan = profile_dir().join("leviathan");
        let guard = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("hobbes-slurm-")
            .tempdir()
            .expect("tempdir");
        let script = repo_root().join("scripts/slurm-cluster.sh");
        let mut args = vec![
            "start".to_string(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--nodes".into(),
            nodes.to_string(),
            "--leviathan".into(),
            leviathan.display().to_string(),
            "--json".into(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        if let Some(p) = plugin {
            args.push("--plugin".into());
            args.push(p.display().to_string());
        }
        let t0 = Instant::now();
        let out = Command::new(&script)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run slurm-cluster.sh");
        let start_time = t0.elapsed();
        let mut c = SlurmCluster {
            dir,
            script,
            info: serde_json::Value::Null,
            nodes: Vec::new(),
            start_time,
            stop_time: None,
            stopped: false,
            _one_at_a_time: guard,
        };
        if out.status.code() == Some(75) {
            // The script's "unsupported here" (no usable cgroups, say); it made nothing.
            let why = String::from_utf8_lossy(&out.stderr);
            let why = why.lines().rev().find(|l| l.contains("unsupported here"));
            return Err(Skip(
                why.unwrap_or("slurm-cluster.sh: unsupported here")
                    .trim()
                    .to_string(),
            ));
        }
        if !out.status.success() {
            // The script stopped what it had started; `stop` in Drop makes sure.
            panic!(
                "slurm-cluster.sh start failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c.info = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "slurm-cluster.sh start --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        c.nodes = c.info["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| Node {
                name: string(n, "name"),
                core: number(n, "core"),
                addr: string(n, "addr"),
                netns_path: string(n, "netns_path").into(),
                state_dir: string(n, "state_dir").into(),
                socket: string(n, "socket").into(),
                leviathan_pid: number(n, "leviathan_pid"),
                slurmd_pid: number(n, "slurmd_pid"),
                cgroups: n["cgroups"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str())
                            .map(PathBuf::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        Ok(c)
    }

    /// The cluster's directory (slurm.conf, logs, the nodes' state); a
    /// temporary directory removed after `stop`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `SLURM_CONF` for this cluster.
    pub fn slurm_conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// The `hobbes` shell next to the `leviathan` the nodes run.
    pub fn hobbes(&self) -> PathBuf {
        profile_dir().join("hobbes")
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// A Slurm client command (`srun`, `sbatch`, `scontrol`, `squeue`, ...)
    /// with `SLURM_CONF` set, run from the root namespace.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.slurm_conf()).stdin(Stdio::null());
        c
    }

    /// `srun args`, killed after 60 s.
    pub fn srun(&self, args: &[&str]) -> Output {
        self.srun_bounded(Duration::from_secs(60), args)
    }

    /// `srun args`, killed after `limit` (SIGTERM, which cancels the step).
    pub fn srun_bounded(&self, limit: Duration, args: &[&str]) -> Output {
        bounded(limit, "srun", args, &[("SLURM_CONF", &self.slurm_conf())])
    }

    /// Run `cmd` in node `i`'s network namespace (and nothing else of the
    /// node's: it stays in our cgroups), killed after 60 s. E.g.
    /// `node_exec(0, &[hobbes, "--socket", socket, "list-enclaves", "--json"])`.
    pub fn node_exec<S: AsRef<std::ffi::OsStr>>(&self, i: usize, cmd: &[S]) -> Output {
        let mut c = Command::new("timeout");
        c.arg("--kill-after=5")
            .arg("60")
            .arg("nsenter")
            .arg(format!("--net={}", self.nodes[i].netns_path.display()))
            .arg("--")
            .args(cmd)
            .env("SLURM_CONF", self.slurm_conf())
            .stdin(Stdio::null());
        c.output().expect("nsenter")
    }

    /// `hobbes --socket <node i's socket> args`, in node `i`'s namespace.
    pub fn hobbes_on(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd: Vec<std::ffi::OsString> = vec![
            self.hobbes().into(),
            "--socket".into(),
            self.nodes[i].socket.clone().into(),
        ];
        cmd.extend(args.iter().map(Into::into));
        self.node_exec(i, &cmd)
    }

    /// Start node `i`'s slurmd again (after a test killed it), as the script
    /// starts it: in the node's cgroups and network namespace, logging to
    /// `<dir>/n<i>/slurmd.out`, its pid in the script's pid file (so `stop`
    /// stops it) and in [`Node::slurmd_pid`]. Returns at once; the caller
    /// waits for the node to be idle.
    pub fn restart_slurmd(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        let procs: Vec<String> = self.nodes[i]
            .cgroups
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(&name).join("slurmd.out"))
            .expect("slurmd.out");
        let child = Command::new("bash")
            .arg("-c")
            .arg(r#"for f in $1; do echo $$ >"$f" || exit 111; done; shift; exec "$@""#)
            .arg("_")
            .arg(procs.join(" "))
            .arg("nsenter")
            .arg(format!("--net={}", self.nodes[i].netns_path.display()))
            .arg("env")
            .arg(format!("SLURM_CONF={}", self.slurm_conf().display()))
            .arg("slurmd")
            .arg("-D")
            .arg("-f")
            .arg(self.slurm_conf())
            .arg("-N")
            .arg(&name)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start slurmd");
        let pid = child.id();
        // Not waited for: the daemon outlives this call (stop ends it; its
        // zombie is reaped when the test process ends).
        std::mem::forget(child);
        std::fs::write(
            self.dir().join(format!("run/slurmd-{name}.pid")),
            format!("{pid}\n"),
        )
        .expect("slurmd pid file");
        self.nodes[i].slurmd_pid = pid;
    }

    /// No step of any job is left (`squeue --steps` lists none).
    pub fn assert_no_step(&self) {
        let out = self
            .client("squeue")
            .args(["--steps", "--noheader"])
            .output()
            .expect("squeue");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "",
            "no step left"
        );
    }

    /// The script's `status --json` now.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(&self.script)
            .args(["status", "--json", "--dir"])
            .arg(self.dir.path())
            .output()
            .expect("slurm-cluster.sh status");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The logs' last lines (the script prints them when start fails; tests
    /// print them when they fail).
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        let mut files = vec![self.dir().join("ctld/slurmctld.log")];
        for n in &self.nodes {
            for f in ["slurmd.log", "slurmd.out", "leviathan.log"] {
                files.push(self.dir().join(&n.name).join(f));
            }
        }
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                let lines: Vec<&str> = text.lines().collect();
                s += &format!("---- {} (last lines)\n", f.display());
                for l in &lines[lines.len().saturating_sub(15)..] {
                    s += l;
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Stop the cluster now (Drop does it otherwise); the script's output.
    pub fn stop(&mut self) -> Output {
        let t0 = Instant::now();
        let out = Command::new(&self.script)
            .args(["stop", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("slurm-cluster.sh stop");
        self.stop_time = Some(t0.elapsed());
        self.stopped = true;
        out
    }

    /// What of this cluster is still on the machine (after `stop`: nothing).
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        // A daemon that exited is a zombie until init reaps it (the script that
        // started it has ended): alive means running, not a zombie.
        let alive = |pid: u32| {
            pid != 0
                && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
                })
        };
        for n in &self.nodes {
            if n.netns_path.exists() {
                left.push(format!("netns {}", n.netns_path.display()));
            }
            for cg in &n.cgroups {
                if cg.exists() {
                    left.push(format!("cgroup {}", cg.display()));
                }
            }
            for (what, pid) in [("leviathan", n.leviathan_pid), ("slurmd", n.slurmd_pid)] {
                if alive(pid) {
                    left.push(format!("{what} of {} (pid {pid})", n.name));
                }
            }
        }
        if let Some(pid) = self.info["controller"]["pid"].as_u64() {
            if alive(pid as u32) {
                left.push(format!("slurmctld (pid {pid})"));
            }
        }
        let bridge = string(&self.info, "bridge");
        if !bridge.is_empty() && Path::new("/sys/class/net").join(&bridge).exists() {
            left.push(format!("bridge {bridge}"));
        }
        // Slurm's own cgroups (`--slurm-cgroups`): slurm_<node> at each v1 root.
        for ctrl in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for n in &self.nodes {
                let dir = ctrl.path().join(format!("slurm_{}", n.name));
                if dir.exists() {
                    left.push(format!("Slurm's cgroup {}", dir.display()));
                }
            }
        }
        left
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "slurm cluster in {} at the failure:\n{}",
                self.dir().display(),
                self.log_tails()
            );
        }
        if !self.stopped {
            let out = self.stop();
            if !out.status.success() {
                eprintln!(
                    "slurm-cluster.sh stop failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// The SPANK plugin, `libhobbes_spank.so`, in the target profile directory:
/// `cargo test` builds it as hobbes-spank's library (into `deps/`; the copy
/// in the profile directory is refreshed only by `cargo build`), so the
/// newer of the two; built here when neither exists, as [`SlurmCluster::check`]
/// builds leviathan and hobbes. `Err(Skip)` when it cannot be had, or was
/// built without Slurm's `spank.h`.
pub fn spank_plugin() -> Result<PathBuf, Skip> {
    let exe = std::env::current_exe().expect("test executable");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    // The newest of the two: `cargo test` rebuilds `deps/` without always
    // refreshing the copy `cargo build` put in the profile directory.
    let find = || {
        [
            profile.join("libhobbes_spank.so"),
            profile.join("deps/libhobbes_spank.so"),
        ]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
    };
    if find().is_none() {
        let _ = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "hobbes-spank"])
            .status();
    }
    let so = find().ok_or_else(|| {
        Skip(format!(
            "no libhobbes_spank.so in {} (cargo build -p hobbes-spank)",
            profile.display()
        ))
    })?;
    let syms = Command::new("nm").arg("-D").arg(&so).output();
    if let Ok(out) = syms {
        if out.status.success()
            && !String::from_utf8_lossy(&out.stdout).contains("slurm_spank_init")
        {
            return Err(Skip(format!(
                "{} was built without spank.h (install libslurm-dev): no plugin",
                so.display()
            )));
        }
    }
    Ok(so)
}
