#![deny(missing_docs)]

//! The native enclave kind: a partition of the node's cores and memory.
//!
//! Privileged: a cpuset (exclusive unless shared) and memory cgroup, and a
//! control process cloned into new PID, mount, IPC and UTS namespaces. The
//! control process runs on the enclave's cores but outside its memory limit
//! (an enclave at its limit must not starve its heartbeats); it puts every
//! app it launches under the limit (`--app-cgroup`).
//! Unprivileged: CPU affinity and a process group only, which the enclave's
//! isolation record says.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hobbes_kind::{
    format_cpu_list, DriverResult, EnclaveDriver, Leftover, NodeSetup, StartContext, Started,
    CONTROL_CREDENTIAL_ENV,
};
use hobbes_proto::model::{
    CgroupMode, ControlEndpoint, CoreId, EnclaveKind, EnclaveRecord, IsolationRecord,
    KindIsolation, NativeIsolation, NisHeader,
};
use hobbes_sys::process as proc_sys;

mod sys;

// The cgroup managers live in `hobbes-cgroups`, shared with the other kinds
// that confine host threads (they grew here).
use hobbes_cgroups::Cgroups;

/// The native kind's driver.
pub struct NativeKind {
    /// The node's cgroups (none when unprivileged).
    pub cgroups: Cgroups,
    /// The `leviathan` executable, which doubles as the control process.
    pub exe: PathBuf,
    privileged: bool,
}

/// cpuset.mems for a set of NUMA nodes.
pub use hobbes_cgroups::mems_of;

impl NativeKind {
    /// The native kind of a daemon: cgroups when `privileged` (found in
    /// /proc/self/mountinfo), CPU affinity only otherwise.
    pub fn new(privileged: bool, exe: PathBuf) -> Self {
        NativeKind {
            cgroups: Cgroups::detect(privileged),
            exe,
            privileged,
        }
    }

    fn control_argv(
        &self,
        rec: &EnclaveRecord,
        ctx: &StartContext,
        namespaces: bool,
    ) -> Vec<String> {
        let mut argv = vec![
            "leviathan".to_string(),
            "enclave-init".into(),
            "--enclave".into(),
            rec.id.to_string(),
            "--daemon-socket".into(),
            ctx.daemon_socket.display().to_string(),
            "--enclave-socket".into(),
            control_socket(ctx).display().to_string(),
            "--owner-uid".into(),
            rec.owner_uid.to_string(),
            "--owner-gid".into(),
            rec.owner_gid.to_string(),
        ];
        if namespaces {
            argv.push("--namespaces".into());
            argv.push("--nis-replica".into());
            argv.push(ctx.nis_replica.display().to_string());
            argv.push("--nis-mount".into());
            argv.push(ctx.nis_mount.display().to_string());
        }
        argv
    }

    fn control_env(ctx: &StartContext) -> Vec<(String, String)> {
        let mut env = vec![(
            CONTROL_CREDENTIAL_ENV.to_string(),
            ctx.control_credential.clone(),
        )];
        for key in ["PATH", "HOBBES_LOG", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(key) {
                env.push((key.to_string(), v));
            }
        }
        env
    }
}

/// The control process's socket: `control.sock` in the enclave's directory.
fn control_socket(ctx: &StartContext) -> PathBuf {
    ctx.enclave_dir.join("control.sock")
}

/// The endpoint clients reach the control process at.
fn control_endpoint(ctx: &StartContext) -> ControlEndpoint {
    ControlEndpoint::unix_socket(control_socket(ctx).display().to_string())
}

/// Describe what isolation was really applied.
fn isolation(rec: &EnclaveRecord, privileged: bool, cgroup_mode: &str) -> IsolationRecord {
    if !privileged {
        return IsolationRecord {
            summary: "degraded (no root): CPU affinity + process group only; other tasks may share these cores; no memory limit".into(),
            detail: KindIsolation::Native(NativeIsolation {
                version: NativeIsolation::VERSION,
                exclusive_cores: false,
                cpuset: false,
                memory_limit: false,
                namespaces: false,
            }),
        };
    }
    let cores = if rec.shared {
        "shared cpuset (not isolated: host cores)"
    } else {
        "exclusive cpuset"
    };
    IsolationRecord {
        summary: if rec.host_ipc {
            format!("{cores} + memory limit ({cgroup_mode}); pid/mnt/uts namespaces, host IPC namespace")
        } else {
            format!("{cores} + memory limit ({cgroup_mode}); pid/mnt/ipc/uts namespaces")
        },
        detail: KindIsolation::Native(NativeIsolation {
            version: NativeIsolation::VERSION,
            exclusive_cores: !rec.shared,
            cpuset: true,
            memory_limit: true,
            namespaces: true,
        }),
    }
}

impl EnclaveDriver for NativeKind {
    fn kind(&self) -> EnclaveKind {
        EnclaveKind::Native
    }

    fn describe_node(&self, header: &mut NisHeader) {
        header.cgroup_mode = self.cgroups.mode();
    }

    fn setup(&self, node: &NodeSetup) -> DriverResult<()> {
        let moved = self.cgroups.setup_node(node)?;
        tracing::info!(mode = ?self.cgroups.mode(), host_tasks_moved = moved, host_cores = %format_cpu_list(&node.host_cores), privileged = self.privileged, "host confined to its cores");
        Ok(())
    }

    fn teardown(&self) -> DriverResult<()> {
        self.cgroups.teardown_node()
    }

    fn leftovers(&self) -> Vec<Box<dyn Leftover>> {
        self.cgroups.leftovers()
    }

    fn clean_up(&self, rec: &EnclaveRecord, node_is_ours: bool) -> DriverResult<()> {
        if let Some(pid) = rec
            .control_pid
            .filter(|p| proc_sys::same_process_alive(*p, rec.control_start_time))
        {
            let _ = proc_sys::kill(pid, libc::SIGKILL);
        }
        // Killing pid 1 ended the enclave's namespace; the cgroups go too when
        // no other daemon may own cgroups of these names.
        for shared in [false, true] {
            self.cgroups.clean_up(rec.id, shared, node_is_ours)?;
        }
        Ok(())
    }

    fn start(
        &self,
        rec: &EnclaveRecord,
        ctx: &StartContext,
        record: &dyn Fn(&Started) -> DriverResult<()>,
    ) -> DriverResult<Started> {
        if let Some(cg) = self.cgroups.enclave(rec.id, rec.shared) {
            cg.create(&ctx.cores, &mems_of(&ctx.numa_nodes), ctx.mem_bytes)
                .map_err(|e| e.to_string())?;
            let mut argv = self.control_argv(rec, ctx, true);
            argv.push("--app-cgroup".into());
            argv.push(cg.app_cgroup().display().to_string());
            let held = match sys::spawn_in_new_namespaces(
                self.exe.as_os_str(),
                &argv,
                &Self::control_env(ctx),
                !rec.host_ipc,
            ) {
                Ok(h) => h,
                Err(e) => {
                    let _ = cg.remove();
                    return Err(format!(
                        "cannot start the control process in new namespaces: {e}"
                    ));
                }
            };
            let pid = held.pid;
            let mode = match self.cgroups.mode() {
                CgroupMode::Legacy => "cgroup v1",
                _ => "cgroup v2",
            };
            let started = Started {
                control_pid: pid,
                control_start_time: proc_sys::proc_start_time(pid),
                isolation: isolation(rec, true, mode),
                control: control_endpoint(ctx),
            };
            let undo = |e: String| {
                let _ = proc_sys::kill(pid, libc::SIGKILL);
                let _ = cg.kill_all(Duration::from_secs(2));
                let _ = cg.remove();
                e
            };
            // Dropping `held` without releasing makes the child exit unexecuted.
            record(&started)?;
            // Released before it joins the cgroups: moving a process into a
            // v1 cpuset waits for an RCU grace period (12 ms measured here,
            // most of a shared enclave's creation), which the control
            // process's exec and start-up now overlap. It runs no app before
            // start returns (apps come after it attached), so every app
            // still starts in the enclave's cgroups.
            held.release()
                .map_err(|e| undo(format!("cannot release the control process: {e}")))?;
            if let Err(e) = cg.add_control_pid(pid) {
                return Err(undo(e.to_string()));
            }
            return Ok(started);
        }
        // Unprivileged: a process group pinned to the enclave's cores.
        let argv = self.control_argv(rec, ctx, false);
        let cores = ctx.cores.clone();
        let mut cmd = Command::new(&self.exe);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(Self::control_env(ctx))
            .process_group(0);
        sys::pin_before_exec(&mut cmd, cores);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the control process: {e}"))?;
        let pid = child.id();
        let started = Started {
            control_pid: pid,
            control_start_time: proc_sys::proc_start_time(pid),
            isolation: isolation(rec, false, ""),
            control: control_endpoint(ctx),
        };
        // Unprivileged start has no hold point; the control process retries its
        // attach until the daemon knows its pid.
        if let Err(e) = record(&started) {
            let _ = proc_sys::kill(pid, libc::SIGKILL);
            return Err(e);
        }
        Ok(started)
    }

    fn set_cpus(&self, rec: &EnclaveRecord, cores: &[CoreId]) -> DriverResult<()> {
        if let Some(cg) = self.cgroups.enclave(rec.id, rec.shared) {
            return cg.set_cpus(cores).map_err(|e| e.to_string());
        }
        // Unprivileged: re-pin the control process and everything below it.
        let mut todo: Vec<u32> = rec.control_pid.into_iter().collect();
        while let Some(pid) = todo.pop() {
            let _ = proc_sys::set_affinity(pid, cores);
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for t in tasks.flatten() {
                    if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                        let _ = proc_sys::set_affinity(tid, cores);
                    }
                }
            }
            todo.extend(proc_sys::children_of(pid));
        }
        Ok(())
    }

    fn set_memory(&self, rec: &EnclaveRecord, numa_nodes: &[u32], bytes: u64) -> DriverResult<()> {
        let Some(cg) = self.cgroups.enclave(rec.id, rec.shared) else {
            return Ok(()); // no memory limit without cgroups; the record says so
        };
        cg.set_mems(&mems_of(numa_nodes))
            .map_err(|e| e.to_string())?;
        cg.set_memory_limit(bytes).map_err(|e| {
            if bytes < rec.mem_bytes {
                format!("{e} (the enclave uses more memory than the new limit)")
            } else {
                e.to_string()
            }
        })
    }

    fn stop(&self, rec: &EnclaveRecord) -> DriverResult<()> {
        if let Some(cg) = self.cgroups.enclave(rec.id, rec.shared) {
            // Killing pid 1 of the PID namespace kills the whole namespace;
            // the cgroup sweep catches anything else.
            if let Some(pid) = rec
                .control_pid
                .filter(|p| proc_sys::same_process_alive(*p, rec.control_start_time))
            {
                let _ = proc_sys::kill(pid, libc::SIGKILL);
            }
            return hobbes_cgroups::kill_and_remove(cg.as_ref());
        }
        // Unprivileged: the control process, its group, and every descendant
        // (apps run in process groups of their own).
        if let Some(pid) = rec
            .control_pid
            .filter(|p| proc_sys::same_process_alive(*p, rec.control_start_time))
        {
            let _ = proc_sys::kill(pid, libc::SIGSTOP); // no new children while we collect
            let mut all = vec![pid];
            let mut i = 0;
            while i < all.len() {
                let kids = proc_sys::children_of(all[i]);
                all.extend(kids);
                i += 1;
            }
            let _ = proc_sys::kill_group(pid, libc::SIGKILL);
            for p in &all {
                let _ = proc_sys::kill(*p, libc::SIGKILL);
            }
            // Return once they are really gone (dead or zombie), as the cgroup path does.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while all.iter().any(|p| proc_sys::same_process_alive(*p, None)) {
                if std::time::Instant::now() > deadline {
                    return Err(format!(
                        "processes of enclave {} survived SIGKILL",
                        rec.name
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }

    fn is_alive(&self, rec: &EnclaveRecord) -> bool {
        rec.control_pid
            .is_some_and(|p| proc_sys::same_process_alive(p, rec.control_start_time))
    }

    fn join(&self, rec: &EnclaveRecord, pid: u32) -> DriverResult<()> {
        if let Some(cg) = self.cgroups.enclave(rec.id, rec.shared) {
            // The apps' cgroups: the enclave's cores and its memory limit.
            return cg.add_pid(pid).map_err(|e| e.to_string());
        }
        // Unprivileged: the enclave is its cores, as affinity.
        proc_sys::set_affinity(pid, &rec.cores).map_err(|e| {
            format!(
                "cannot pin process {pid} to the cores of enclave {}: {e}",
                rec.name
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hobbes_proto::model::EnclaveState;

    fn rec(shared: bool, host_ipc: bool) -> EnclaveRecord {
        EnclaveRecord {
            id: 3,
            name: "sim".into(),
            kind: EnclaveKind::Native,
            state: EnclaveState::Starting,
            parent: 0,
            owner_uid: 0,
            owner_gid: 0,
            shared,
            host_ipc,
            cores: vec![1],
            mem_blocks: vec![0],
            mem_bytes: 128 << 20,
            numa_nodes: vec![0],
            isolation: IsolationRecord::default(),
            control_pid: None,
            control_start_time: None,
            control: ControlEndpoint::None,
            nis_dir: "/state/nis".into(),
            created_ms: 0,
            last_heartbeat_ms: 0,
            crash_reason: None,
            vm: None,
            slurm: None,
            bound_to: None,
            step_cgroups: vec![],
            rev: 0,
        }
    }

    #[test]
    fn the_native_kind_describes_its_isolation() {
        let iso = isolation(&rec(false, false), true, "cgroup v2");
        assert_eq!(
            iso.summary,
            "exclusive cpuset + memory limit (cgroup v2); pid/mnt/ipc/uts namespaces"
        );
        assert_eq!(
            iso.detail,
            KindIsolation::Native(NativeIsolation {
                version: NativeIsolation::VERSION,
                exclusive_cores: true,
                cpuset: true,
                memory_limit: true,
                namespaces: true,
            })
        );
        let shared = isolation(&rec(true, true), true, "cgroup v1");
        assert!(!shared.exclusive_cores() && shared.confined());
        assert!(
            shared.summary.contains("host IPC namespace"),
            "{}",
            shared.summary
        );
        let degraded = isolation(&rec(false, false), false, "");
        assert!(degraded.summary.starts_with("degraded"));
        assert!(!degraded.exclusive_cores() && !degraded.confined());
        assert!(degraded
            .native()
            .is_some_and(|n| !n.cpuset && !n.memory_limit));
    }

    #[test]
    fn its_control_endpoint_is_a_socket_in_the_enclave_dir() {
        let ctx = StartContext {
            memory_dir: None,
            daemon_socket: "/state/control.sock".into(),
            cores: vec![1],
            blocks: vec![0],
            mem_bytes: 128 << 20,
            numa_nodes: vec![0],
            enclave_dir: "/state/enclaves/3".into(),
            nis_replica: "/state/enclaves/3/nis".into(),
            nis_mount: "/state/nis".into(),
            control_credential: "secret".into(),
        };
        assert_eq!(
            control_endpoint(&ctx),
            ControlEndpoint::unix_socket("/state/enclaves/3/control.sock")
        );
        let kind = NativeKind {
            cgroups: Cgroups::default(),
            exe: "/bin/leviathan".into(),
            privileged: false,
        };
        let argv = kind.control_argv(&rec(false, false), &ctx, false);
        let at = argv.iter().position(|a| a == "--enclave-socket").unwrap();
        assert_eq!(argv[at + 1], "/state/enclaves/3/control.sock");
    }
}
