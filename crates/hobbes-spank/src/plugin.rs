//! What the hooks do, in plain Rust: each returns [`Outcome`].

use std::sync::{Mutex, MutexGuard};

use hobbes_client::{Client, ClientError};
use hobbes_proto::model::{EnclaveId, EnclaveKind, ExitStatus};
use hobbes_proto::msg::{EnclaveRef, ErrorCode, Owner, Request};
use hobbes_proto::slurm::{
    parse_mib, EnclaveGroup, EnclaveGroups, EnclaveOption, SlurmStep, SlurmTask, GROUPS_ENV,
};
use hobbes_proto::spec::{CpuRequest, EnclaveSpec, MemRequest};

/// `Ok(None)`: done; `Ok(Some(note))`: done, with a note for the log;
/// `Err(message)`: the hook fails with this message (naming the node).
pub type Outcome = Result<Option<String>, String>;

/// Step ids from here on are Slurm's special steps (batch script, extern,
/// interactive, pending): they get no enclave (`SLURM_MAX_NORMAL_STEP_ID`).
pub const MAX_NORMAL_STEP_ID: u32 = 0xffff_fff0;

/// Memory per node when neither SPEC, step nor job says, MiB.
pub const DEFAULT_MEM_MIB: u64 = 256;

/// Where root's leviathan listens by default (`/run/hobbes`, its state directory).
pub const DEFAULT_SOCKET: &str = "/run/hobbes/leviathan.sock";

/// The abstract socket a privileged leviathan holds as its node lock: one per
/// network namespace, so one per (simulated) node.
pub const NODE_LOCK: &str = "@hobbes-leviathan-node-lock";

/// The plugin's arguments (the rest of its `plugstack.conf` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// leviathan's client socket; `%n` is replaced by the Slurm node name
    /// (several simulated nodes on one host, one daemon each). `None`: the
    /// socket of the leviathan holding this network namespace's node lock,
    /// else [`DEFAULT_SOCKET`].
    pub socket: Option<String>,
    /// Memory per node when neither SPEC, step nor job says, MiB.
    pub default_mem_mib: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            default_mem_mib: DEFAULT_MEM_MIB,
        }
    }
}

impl Config {
    /// Parse `socket=PATH` and `default_mem=SIZE` arguments.
    pub fn parse(args: &[String]) -> Result<Config, String> {
        let mut c = Config::default();
        for a in args {
            match a.split_once('=') {
                Some(("socket", v)) if !v.is_empty() => c.socket = Some(v.to_string()),
                Some(("default_mem", v)) => {
                    c.default_mem_mib = parse_mib(v).map_err(|e| {
                        format!("plugstack.conf: {}", e.trim_start_matches("--enclave: "))
                    })?
                }
                _ => {
                    return Err(format!(
                        "plugstack.conf: unknown argument {a:?}: expected socket=PATH (%n: the node name) or default_mem=SIZE"
                    ))
                }
            }
        }
        Ok(c)
    }

    /// The socket of node `node`'s leviathan.
    pub fn socket_for(&self, node: &str) -> String {
        match &self.socket {
            Some(s) => s.replace("%n", node),
            None => node_leviathan_socket().unwrap_or_else(|| DEFAULT_SOCKET.to_string()),
        }
    }
}

/// The client socket of the privileged leviathan that holds this network
/// namespace's node lock: the process with the lock's socket open, and its
/// listening `.../leviathan.sock`, both found in `/proc/self/net/unix` (this
/// namespace's Unix sockets) and `/proc/*/fd`. `None` when no daemon holds
/// the lock here.
pub fn node_leviathan_socket() -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/net/unix").ok()?;
    let (locks, sockets) = unix_sockets(&table);
    if locks.is_empty() {
        return None;
    }
    // One daemon listening here (a node's usual case): it holds the lock.
    // Walking every process's descriptors costs milliseconds on the step's
    // critical path, so only when several daemons listen in this namespace.
    if let [(_, path)] = sockets.as_slice() {
        return Some(path.clone());
    }
    let lock_links: Vec<String> = locks.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let links: Vec<String> = fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        if !links.iter().any(|l| lock_links.contains(l)) {
            continue;
        }
        // The node lock's holder: its listening client socket.
        if let Some((_, path)) = sockets
            .iter()
            .find(|(inode, _)| links.contains(&format!("socket:[{inode}]")))
        {
            return Some(path.clone());
        }
    }
    None
}

/// From `/proc/net/unix`: the inodes of the node lock's sockets, and the
/// listening sockets named `.../leviathan.sock` with their inodes.
pub fn unix_sockets(table: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut locks = Vec::new();
    let mut sockets = Vec::new();
    // Num RefCount Protocol Flags Type St Inode Path
    for f in table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        let (Some(state), Some(inode), Some(path)) = (f.get(5), f.get(6), f.get(7)) else {
            continue;
        };
        if *path == NODE_LOCK {
            locks.push(inode.to_string());
        } else if path.ends_with("/leviathan.sock") && *state == "01" {
            sockets.push((inode.to_string(), path.to_string()));
        }
    }
    (locks, sockets)
}

/// The step's enclaves on this node, once created (slurmstepd; inherited by
/// the tasks it forks): one, or one per application of
/// `HOBBES_ENCLAVE_GROUPS` with tasks here.
#[derive(Debug, Clone)]
struct StepEnclaves {
    /// Each enclave's name, id, and the application it is for.
    enclaves: Vec<(String, EnclaveId, Option<EnclaveGroup>)>,
    socket: String,
    node: String,
    /// The job's user: the enclaves' owner, and the joined tasks'.
    owner: Owner,
    /// A task was placed inside the step's own cgroups (Slurm confines the
    /// job): the daemon must have removed its directories there before
    /// slurmstepd removes the step's, so task ends are waited for.
    nested: bool,
}

impl StepEnclaves {
    /// The enclave global task `task` joins.
    fn enclave_of(&self, task: u32) -> Option<&str> {
        self.enclaves
            .iter()
            .find(|(_, _, g)| match g {
                Some(g) => g.contains(task),
                None => true,
            })
            .map(|(name, _, _)| name.as_str())
    }
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);
static OPTION: Mutex<Option<EnclaveOption>> = Mutex::new(None);
static STEP: Mutex<Option<StepEnclaves>> = Mutex::new(None);
/// Why this step's enclave, or this task's join, failed: each task fails
/// with it before exec ([`task_check`]).
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Remember `outcome`'s failure for [`task_check`], and pass it on.
fn fail_tasks_on_error(outcome: Outcome) -> Outcome {
    if let Err(e) = &outcome {
        *lock(&FAILED) = Some(e.clone());
    }
    outcome
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn config() -> Config {
    lock(&CONFIG).clone().unwrap_or_default()
}

/// `slurm_spank_init`: read the plugin's arguments.
pub fn init(args: &[String]) -> Outcome {
    *lock(&CONFIG) = Some(Config::parse(args)?);
    Ok(None)
}

/// The `--enclave` option's callback (srun/sbatch/salloc to check it,
/// slurmstepd to take it): parse SPEC and refuse what tasks cannot join.
pub fn option(spec: Option<&str>) -> Outcome {
    let opt = EnclaveOption::parse(spec)?;
    opt.check_joinable()?;
    *lock(&OPTION) = Some(opt);
    Ok(None)
}

/// What `slurm_spank_init_post_opt` knows of the step on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInfo {
    /// The step, with this node's name.
    pub step: SlurmStep,
    /// Tasks of the step on this node.
    pub local_tasks: u32,
    /// The step's (else the job's) memory on this node in MiB; 0: not set.
    pub mem_mib: u64,
    /// The process the enclave's life is bound to: slurmstepd.
    pub stepd_pid: u32,
    /// The job's user (`S_JOB_UID`, `S_JOB_GID`): the enclaves' owner.
    pub owner: Owner,
    /// `HOBBES_ENCLAVE_GROUPS` from the job's environment, when set
    /// (`Err`: it could not be read whole).
    pub groups: Option<Result<String, String>>,
    /// The global task ids of this node's tasks (`S_JOB_LOCAL_TO_GLOBAL_ID`).
    pub global_ids: Vec<u32>,
    /// The CPUs of the step's allocation on this node (`S_STEP_ALLOC_CORES`),
    /// when Slurm says: where Slurm confines jobs the enclaves' cores come
    /// from these.
    pub step_cpus: Option<Vec<u32>>,
}

/// The enclave spec for a step: SPEC's values, else the step's.
pub fn spec_for(opt: &EnclaveOption, info: &StepInfo, cfg: &Config) -> EnclaveSpec {
    let mem = opt
        .mem_mib
        .or((info.mem_mib > 0).then_some(info.mem_mib))
        .unwrap_or(cfg.default_mem_mib);
    EnclaveSpec {
        name: info.step.enclave_name(),
        kind: EnclaveKind::Native,
        shared: opt.shared.unwrap_or(false),
        host_ipc: opt.host_ipc,
        cpus: CpuRequest {
            count: opt.cores.unwrap_or(info.local_tasks.max(1)),
            ..Default::default()
        },
        memory: MemRequest {
            size_mib: mem,
            ..Default::default()
        },
        vm: None,
    }
}

/// One enclave to create on this node: its spec, and the application it is
/// for (`None`: the whole step).
pub type Planned = (EnclaveSpec, Option<EnclaveGroup>);

/// The enclaves a step gets on this node: without `HOBBES_ENCLAVE_GROUPS`,
/// one ([`spec_for`]); with it, one per application with tasks here, named
/// `slurm-<job>.<step>-<name>`, each with SPEC's `cores=` or else its tasks
/// here in cores, and the node's memory (SPEC's, else the step's, else the
/// default) split among them in proportion to their tasks here (1 MiB at
/// least). A bad value, or a task of this node in no application, is an
/// error naming the variable.
pub fn plan(opt: &EnclaveOption, info: &StepInfo, cfg: &Config) -> Result<Vec<Planned>, String> {
    let whole = spec_for(opt, info, cfg);
    let Some(value) = &info.groups else {
        return Ok(vec![(whole, None)]);
    };
    let groups = value.clone().and_then(|v| EnclaveGroups::parse(&v))?;
    if info.global_ids.len() != info.local_tasks as usize {
        return Err(format!(
            "{GROUPS_ENV}: Slurm did not give the global ids of this node's {} tasks, so they cannot be placed in their applications' enclaves",
            info.local_tasks
        ));
    }
    let mut counts = vec![0u32; groups.groups.len()];
    for &t in &info.global_ids {
        let Some(i) = groups.groups.iter().position(|g| g.contains(t)) else {
            return Err(format!(
                "{GROUPS_ENV}={value}: task {t} is in no application (each task of the step needs one; the step's tasks are its global ids, SLURM_PROCID)",
                value = groups
            ));
        };
        counts[i] += 1;
    }
    let local: u64 = counts.iter().map(|&n| u64::from(n)).sum();
    Ok(groups
        .groups
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(g, n)| {
            let mut spec = whole.clone();
            spec.name = format!("{}-{}", whole.name, g.name);
            spec.cpus.count = opt.cores.unwrap_or(n);
            let share =
                u128::from(whole.memory.size_mib) * u128::from(n) / u128::from(local.max(1));
            spec.memory.size_mib = u64::try_from(share).unwrap_or(u64::MAX).max(1);
            (spec, Some(g.clone()))
        })
        .collect())
}

/// `slurm_spank_init_post_opt` (slurmstepd, root, once per step and node):
/// with `--enclave`, have this node's leviathan create the step's enclave,
/// bound to slurmstepd.
pub fn step_begin(info: &StepInfo) -> Outcome {
    fail_tasks_on_error(create_step_enclave(info))
}

fn create_step_enclave(info: &StepInfo) -> Outcome {
    let Some(opt) = lock(&OPTION).clone() else {
        return Ok(None);
    };
    let node = &info.step.node;
    if info.step.step_id >= MAX_NORMAL_STEP_ID {
        return Ok(Some(format!(
            "node {node}: job {}: the batch, extern and interactive steps run outside an enclave; each srun step gets its own",
            info.step.job_id
        )));
    }
    let cfg = config();
    let socket = cfg.socket_for(node);
    let planned =
        plan(&opt, info, &cfg).map_err(|e| format!("node {node}: step {}: {e}", info.step))?;
    let mut client = connect(node, &socket)?;
    let mut made = StepEnclaves {
        enclaves: Vec::new(),
        socket,
        node: node.clone(),
        owner: info.owner,
        nested: false,
    };
    let mut notes = Vec::new();
    let mut failed = None;
    for (spec, group) in planned {
        let what = format!(
            "enclave {} ({} {} cores, {} MiB{})",
            spec.name,
            spec.cpus.count,
            if spec.shared { "shared" } else { "exclusive" },
            spec.memory.size_mib,
            if spec.host_ipc { ", host IPC" } else { "" }
        );
        let name = spec.name.clone();
        match client.create_enclave_for_job(
            spec,
            Some(info.step.clone()),
            Some(info.stepd_pid),
            Some(info.owner),
            info.step_cpus.clone(),
        ) {
            Ok(rec) => {
                notes.push(format!("{what}, id {}", rec.id));
                made.enclaves.push((name, rec.id, group));
            }
            Err(e) if e.code() == Some(ErrorCode::Overcommit) => {
                failed = Some(format!(
                    "node {node}: no room for {what}: {e}; ask for fewer cores or less memory (--enclave=cores=N,mem=SIZE)"
                ));
                break;
            }
            Err(e) => {
                failed = Some(format!("node {node}: cannot create {what}: {e}"));
                break;
            }
        }
    }
    // Those made are destroyed at step end (or with slurmstepd) even when
    // a later one failed.
    *lock(&STEP) = Some(made);
    match failed {
        Some(e) => Err(e),
        None => Ok(Some(format!(
            "node {node}: step {} runs in {}",
            info.step,
            notes.join("; ")
        ))),
    }
}

fn connect(node: &str, socket: &str) -> Result<Client, String> {
    Client::connect(socket).map_err(|e| {
        format!("node {node}: no leviathan at {socket} ({e}): start leviathan on the node, or run without --enclave")
    })
}

/// What `slurm_spank_task_init_privileged` knows of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task's Slurm ids.
    pub task: SlurmTask,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// This node's name.
    pub node: String,
}

/// `slurm_spank_task_init_privileged` (the task's process, root, before
/// exec): join the step's enclave, then enter its namespaces through the
/// relay ([`crate::relay::enter`]). Returns in the task only.
pub fn task_join(info: &TaskInfo) -> Outcome {
    if lock(&FAILED).is_some() {
        return Ok(None); // the step has no enclave: task_check fails the task
    }
    fail_tasks_on_error(join(info))
}

/// `slurm_spank_task_init` (the task, as the user, its stdio srun's, before
/// exec): fail it if its step's enclave or its join failed, with why; else,
/// in the enclave's PID namespace, fork: the program runs in the child, and
/// this process stays as the relay ([`crate::relay`]). Forked here, not when
/// joining: only now is the task in its cgroups (Slurm's, then the
/// enclave's), which the child inherits.
pub fn task_check() -> Outcome {
    if let Some(e) = lock(&FAILED).clone() {
        return Err(e);
    }
    crate::relay::fork_if_entered()?;
    Ok(None)
}

fn join(info: &TaskInfo) -> Outcome {
    let Some(step) = lock(&STEP).clone() else {
        return Ok(None);
    };
    let t = &info.task;
    let Some(name) = step.enclave_of(t.task_id).map(str::to_string) else {
        return Err(format!(
            "node {}: task {} is in no application of {GROUPS_ENV}: it has no enclave to join",
            step.node, t.task_id
        ));
    };
    let joined = {
        let mut client = connect(&step.node, &step.socket)?;
        client
            .join_enclave_as(
                EnclaveRef::Name(name.clone()),
                std::process::id(),
                info.argv.clone(),
                Some(t.clone()),
                Some(step.owner),
                // slurmstepd puts the task into the step's cgroups after
                // this hook: the daemon places it after that (task_place).
                true,
            )
            .map_err(|e| {
                format!(
                    "node {}: task {} cannot join enclave {name}: {e}",
                    step.node, t.task_id
                )
            })?
        // The connection closes here, before the fork.
    };
    crate::relay::enter(joined.ns_pid, &joined.namespaces).map_err(|e| {
        format!(
            "node {}: task {} cannot enter enclave {name}: {e}",
            step.node, t.task_id
        )
    })?;
    Ok(None)
}

/// `slurm_spank_task_post_fork` (slurmstepd, root, once Slurm put task
/// process `pid` into the step's cgroups and before it execs): put it into
/// its enclave's cgroups, inside the step's where Slurm confines the job.
pub fn task_place(pid: u32, task_id: u32) -> Outcome {
    let mut guard = lock(&STEP);
    let Some(step) = guard.as_mut() else {
        return Ok(None);
    };
    if lock(&FAILED).is_some() {
        return Ok(None); // the task fails in task_check, with why
    }
    let Some(name) = step.enclave_of(task_id).map(str::to_string) else {
        return Ok(None); // task_join failed it already
    };
    let mut client = connect(&step.node, &step.socket)?;
    client
        .place_task(EnclaveRef::Name(name.clone()), pid)
        .map_err(|e| {
            format!(
                "node {}: task {task_id} cannot be placed in enclave {name}: {e}",
                step.node
            )
        })?;
    let marker = format!("/hobbes-{name}");
    if std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|c| c.lines().any(|l| l.ends_with(&marker)))
    {
        step.nested = true;
    }
    Ok(None)
}

/// A wait status as an exit status (`None`: neither exited nor killed).
pub fn exit_of(status: i32) -> Option<ExitStatus> {
    if libc::WIFEXITED(status) {
        Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(ExitStatus::Signal(libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// `slurm_spank_task_exit` (slurmstepd): report how task process `pid`
/// ended, so its app record has the status (the daemon alone only sees that
/// it ended).
pub fn task_exit(pid: u32, status: i32) -> Outcome {
    let Some(step) = lock(&STEP).clone() else {
        return Ok(None);
    };
    let Some(exit) = exit_of(status) else {
        return Ok(None);
    };
    let mut client = connect(&step.node, &step.socket)?;
    // Only the step's enclaves' apps: the task is one of them.
    let mut found = None;
    for (_, id, _) in &step.enclaves {
        let apps = client
            .list_apps(Some(EnclaveRef::Id(*id)))
            .map_err(|e| e.to_string())?;
        found = apps
            .into_iter()
            .filter(|a| a.joined.is_some_and(|j| j.pid == pid))
            .max_by_key(|a| a.id);
        if found.is_some() {
            break;
        }
    }
    let Some(app) = found else {
        return Ok(None);
    };
    if step.nested {
        // Waited for: the daemon removes the enclave's directories inside
        // the step's cgroups once its last task ended, and slurmstepd
        // removes the step's own right after its tasks' ends.
        client.task_exited(app.id, exit).map_err(|e| {
            format!(
                "node {}: cannot report the end of app {}: {e}",
                step.node, app.id
            )
        })?;
        return Ok(None);
    }
    // Posted, not waited for: slurmstepd tells srun of the task's end only
    // after this hook (see step_end). Lost only with the daemon, which then
    // records the app as ended with no status, as when this hook is not run.
    client
        .post(&Request::TaskExited { app: app.id, exit })
        .map_err(|e| {
            format!(
                "node {}: cannot report the end of app {}: {e}",
                step.node, app.id
            )
        })?;
    Ok(None)
}

/// `slurm_spank_exit` (slurmstepd, step end): destroy the step's enclaves.
///
/// Asked, not waited for: `srun` returns only once slurmstepd closed the
/// step's I/O, after this hook, and a destroy (the control process killed,
/// the cgroups removed) takes about 12 ms here, a tenth of an MPI hello's
/// step (measured: 1.26x of a plain `srun` waited, 1.19x asked). The daemon
/// carries each request through on its own; should it not (a daemon that
/// stopped just then), the enclave is bound to this slurmstepd and goes when
/// it exits, and the epilog sweeps the job's.
pub fn step_end() -> Outcome {
    let Some(step) = lock(&STEP).take() else {
        return Ok(None);
    };
    if step.enclaves.is_empty() {
        return Ok(None);
    }
    let mut failed = Vec::new();
    let mut asked = Vec::new();
    for (name, _, _) in &step.enclaves {
        // One connection per request: the daemon ends a connection whose
        // answer it cannot write, so a second request on it would be lost.
        let sent = connect(&step.node, &step.socket).and_then(|client| {
            client
                .post(&Request::DestroyEnclave {
                    enclave: EnclaveRef::Name(name.clone()),
                })
                .map_err(|e| e.to_string())
        });
        match sent {
            Ok(()) => asked.push(name.as_str()),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "node {}: cannot ask to destroy enclave(s) {} (they go with this slurmstepd)",
            step.node,
            failed.join("; ")
        ));
    }
    Ok(Some(format!(
        "node {}: enclave(s) {} being destroyed",
        step.node,
        asked.join(", ")
    )))
}

/// `slurm_spank_job_epilog` (the node's epilog, also after a crash): destroy
/// every enclave of job `job_id` on this node that is left. No leviathan:
/// nothing to do.
pub fn job_epilog(job_id: u32, node: &str) -> Outcome {
    let socket = config().socket_for(node);
    let Ok(mut client) = Client::connect(&socket) else {
        return Ok(None);
    };
    let left: Vec<String> = client
        .list_enclaves()
        .map_err(|e| format!("node {node}: cannot list enclaves: {e}"))?
        .into_iter()
        .filter(|e| e.slurm.as_ref().is_some_and(|s| s.job_id == job_id))
        .map(|e| e.name)
        .collect();
    let mut failed = Vec::new();
    for name in &left {
        match client.destroy_enclave(EnclaveRef::Name(name.clone())) {
            Ok(()) => {}
            Err(ClientError::Refused(e)) if e.code == ErrorCode::NotFound => {}
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "node {node}: job {job_id}: cannot destroy enclaves left behind: {}",
            failed.join("; ")
        ));
    }
    Ok((!left.is_empty()).then(|| {
        format!(
            "node {node}: job {job_id}: destroyed enclaves left behind: {}",
            left.join(", ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(local_tasks: u32, mem_mib: u64) -> StepInfo {
        StepInfo {
            step: SlurmStep {
                job_id: 7,
                step_id: 1,
                het_component: None,
                node: "n2".into(),
            },
            local_tasks,
            mem_mib,
            stepd_pid: 1,
            owner: Owner {
                uid: 1000,
                gid: 1000,
            },
            groups: None,
            global_ids: (0..local_tasks).collect(),
            step_cpus: None,
        }
    }

    fn grouped(value: &str, global_ids: &[u32], mem_mib: u64) -> StepInfo {
        StepInfo {
            groups: Some(Ok(value.to_string())),
            global_ids: global_ids.to_vec(),
            ..info(global_ids.len() as u32, mem_mib)
        }
    }

    #[test]
    fn one_enclave_per_step_without_groups() {
        let p = plan(&EnclaveOption::default(), &info(2, 512), &Config::default()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0.name, "slurm-7.1");
        assert_eq!((p[0].0.cpus.count, p[0].0.memory.size_mib), (2, 512));
        assert!(p[0].1.is_none());
    }

    #[test]
    fn an_enclave_per_application_with_tasks_here() {
        // Cyclic over two nodes: this node has tasks 0 and 2 (a) and 4 (b);
        // c has none here.
        let p = plan(
            &EnclaveOption::default(),
            &grouped("a=0-3,b=4-5,c=6-7", &[0, 2, 4], 900),
            &Config::default(),
        )
        .unwrap();
        let got: Vec<(&str, u32, u64)> = p
            .iter()
            .map(|(s, _)| (s.name.as_str(), s.cpus.count, s.memory.size_mib))
            .collect();
        assert_eq!(got, [("slurm-7.1-a", 2, 600), ("slurm-7.1-b", 1, 300)]);
        assert!(p.iter().all(|(s, _)| s.validate().is_ok()));
        // SPEC's cores are per enclave; its memory is per node, split.
        let opt = EnclaveOption::parse(Some("cores=1,mem=1G,shared")).unwrap();
        let p = plan(
            &opt,
            &grouped("a=0-1,b=2-3", &[1, 2], 0),
            &Config::default(),
        )
        .unwrap();
        let got: Vec<(u32, u64, bool)> = p
            .iter()
            .map(|(s, _)| (s.cpus.count, s.memory.size_mib, s.shared))
            .collect();
        assert_eq!(got, [(1, 512, true), (1, 512, true)]);
    }

    #[test]
    fn bad_groups_fail_the_step_naming_the_variable() {
        let cfg = Config::default();
        let opt = EnclaveOption::default();
        let e = plan(&opt, &grouped("a=0-1,a=2-3", &[0], 0), &cfg).unwrap_err();
        assert!(
            e.contains("HOBBES_ENCLAVE_GROUPS") && e.contains("twice"),
            "{e}"
        );
        let e = plan(&opt, &grouped("a=0-1", &[0, 5], 0), &cfg).unwrap_err();
        assert!(
            e.contains("HOBBES_ENCLAVE_GROUPS") && e.contains("task 5"),
            "{e}"
        );
        let e = plan(&opt, &grouped("a=0-1", &[], 0), &cfg);
        assert!(e.unwrap().is_empty(), "no tasks here, no enclaves");
        let mut i = grouped("a=0-1", &[0], 0);
        i.global_ids.clear();
        assert!(plan(&opt, &i, &cfg).unwrap_err().contains("global ids"));
        i.groups = Some(Err("HOBBES_ENCLAVE_GROUPS is too long".into()));
        assert!(plan(&opt, &i, &cfg).unwrap_err().contains("too long"));
    }

    #[test]
    fn tasks_find_their_application_enclave() {
        let g = |n: &str, first, last| {
            Some(EnclaveGroup {
                name: n.into(),
                first,
                last,
            })
        };
        let s = StepEnclaves {
            enclaves: vec![
                ("slurm-7.1-a".into(), 3, g("a", 0, 1)),
                ("slurm-7.1-b".into(), 4, g("b", 2, 3)),
            ],
            socket: String::new(),
            node: "n0".into(),
            owner: Owner { uid: 1, gid: 1 },
            nested: false,
        };
        assert_eq!(s.enclave_of(1), Some("slurm-7.1-a"));
        assert_eq!(s.enclave_of(2), Some("slurm-7.1-b"));
        assert_eq!(s.enclave_of(4), None);
        let one = StepEnclaves {
            enclaves: vec![("slurm-7.1".into(), 3, None)],
            ..s
        };
        assert_eq!(one.enclave_of(9), Some("slurm-7.1"));
    }

    #[test]
    fn plugin_arguments() {
        assert_eq!(Config::parse(&[]), Ok(Config::default()));
        let c = Config::parse(&[
            "socket=/run/hobbes/%n/leviathan.sock".into(),
            "default_mem=1G".into(),
        ])
        .unwrap();
        assert_eq!(c.socket_for("n3"), "/run/hobbes/n3/leviathan.sock");
        assert_eq!(Config::default().socket, None);
        assert_eq!(c.default_mem_mib, 1024);
        assert!(Config::parse(&["sockets=/x".into()])
            .unwrap_err()
            .contains("unknown argument"));
        assert!(Config::parse(&["default_mem=lots".into()]).is_err());
    }

    #[test]
    fn node_lock_and_daemon_sockets_in_proc_net_unix() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 51234 @hobbes-leviathan-node-lock
0000000000000000: 00000002 00000000 00010000 0001 01 51240 /tmp/n1/hobbes/leviathan.sock
0000000000000000: 00000003 00000000 00000000 0001 03 51250 /tmp/n1/hobbes/leviathan.sock
0000000000000000: 00000002 00000000 00010000 0001 01 51260 /tmp/n1/hobbes/control.sock
0000000000000000: 00000003 00000000 00000000 0001 03  1179
";
        let (locks, sockets) = unix_sockets(table);
        assert_eq!(locks, ["51234"]);
        assert_eq!(
            sockets,
            [(
                "51240".to_string(),
                "/tmp/n1/hobbes/leviathan.sock".to_string()
            )]
        );
    }

    #[test]
    fn defaults_come_from_the_step() {
        let cfg = Config::default();
        let s = spec_for(&EnclaveOption::default(), &info(3, 0), &cfg);
        assert_eq!(s.name, "slurm-7.1");
        assert_eq!(s.cpus.count, 3);
        assert_eq!(s.memory.size_mib, DEFAULT_MEM_MIB);
        assert!(!s.shared && !s.host_ipc);
        let s = spec_for(&EnclaveOption::default(), &info(0, 700), &cfg);
        assert_eq!((s.cpus.count, s.memory.size_mib), (1, 700));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn spec_wins_over_the_step() {
        let opt = EnclaveOption::parse(Some("cores=2,mem=1G,shared,host-ipc")).unwrap();
        let s = spec_for(&opt, &info(4, 700), &Config::default());
        assert_eq!((s.cpus.count, s.memory.size_mib), (2, 1024));
        assert!(s.shared && s.host_ipc);
    }

    #[test]
    fn option_refuses_guests() {
        let e = option(Some("lwk")).unwrap_err();
        assert!(e.contains("only join native enclaves"), "{e}");
        assert!(option(Some("cores=x")).is_err());
    }

    #[test]
    fn wait_statuses() {
        assert_eq!(exit_of(3 << 8), Some(ExitStatus::Code(3)));
        assert_eq!(
            exit_of(libc::SIGTERM),
            Some(ExitStatus::Signal(libc::SIGTERM))
        );
        assert_eq!(exit_of(0x137f), None); // stopped
    }
}
