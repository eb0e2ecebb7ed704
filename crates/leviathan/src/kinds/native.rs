//! Native enclaves: a partition of the node's cores and memory.
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

use hobbes_proto::model::{CgroupMode, CoreId, EnclaveKind, EnclaveRecord, Isolation};

use super::{DriverResult, EnclaveDriver, StartContext, Started};
use crate::cgroup::Cgroups;
use crate::sys;

pub struct NativeDriver {
    pub cgroups: Cgroups,
    /// The `leviathan` executable, which doubles as the control process.
    pub exe: PathBuf,
}

impl NativeDriver {
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
            rec.control_socket.clone(),
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
            super::CONTROL_CREDENTIAL_ENV.to_string(),
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

/// Describe what isolation was really applied.
fn isolation(rec: &EnclaveRecord, privileged: bool, cgroup_mode: &str) -> Isolation {
    if !privileged {
        return Isolation {
            exclusive_cores: false,
            cpuset: false,
            memory_limit: false,
            namespaces: false,
            summary: "degraded (no root): CPU affinity + process group only; other tasks may share these cores; no memory limit".into(),
        };
    }
    let cores = if rec.shared {
        "shared cpuset (not isolated: host cores)"
    } else {
        "exclusive cpuset"
    };
    Isolation {
        exclusive_cores: !rec.shared,
        cpuset: true,
        memory_limit: true,
        namespaces: true,
        summary: if rec.host_ipc {
            format!("{cores} + memory limit ({cgroup_mode}); pid/mnt/uts namespaces, host IPC namespace")
        } else {
            format!("{cores} + memory limit ({cgroup_mode}); pid/mnt/ipc/uts namespaces")
        },
    }
}

impl EnclaveDriver for NativeDriver {
    fn kind(&self) -> EnclaveKind {
        EnclaveKind::Native
    }

    fn start(
        &self,
        rec: &EnclaveRecord,
        ctx: &StartContext,
        record: &dyn Fn(&Started) -> DriverResult<()>,
    ) -> DriverResult<Started> {
        if let Some(cg) = self.cgroups.enclave(rec.id, rec.shared) {
            cg.create(&rec.cores, &ctx.mems, rec.mem_bytes)
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
            if let Err(e) = cg.add_control_pid(pid) {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = cg.kill_all(Duration::from_secs(2));
                let _ = cg.remove();
                return Err(e.to_string());
            }
            let mode = match self.cgroups.mode() {
                CgroupMode::Legacy => "cgroup v1",
                _ => "cgroup v2",
            };
            let started = Started {
                control_pid: pid,
                control_start_time: sys::proc_start_time(pid),
                isolation: isolation(rec, true, mode),
            };
            // Dropping `held` without releasing makes the child exit unexecuted.
            record(&started)?;
            held.release()
                .map_err(|e| format!("cannot release the control process: {e}"))?;
            return Ok(started);
        }
        // Unprivileged: a process group pinned to the enclave's cores.
        let argv = self.control_argv(rec, ctx, false);
        let cores = rec.cores.clone();
        let mut cmd = Command::new(&self.exe);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(Self::control_env(ctx))
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls
        // sched_setaffinity, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || sys::set_affinity(0, &cores));
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the control process: {e}"))?;
        let pid = child.id();
        let started = Started {
            control_pid: pid,
            control_start_time: sys::proc_start_time(pid),
            isolation: isolation(rec, false, ""),
        };
        // Unprivileged start has no hold point; the control process retries its
        // attach until the daemon knows its pid.
        if let Err(e) = record(&started) {
            let _ = sys::kill(pid, libc::SIGKILL);
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
            let _ = sys::set_affinity(pid, cores);
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for t in tasks.flatten() {
                    if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                        let _ = sys::set_affinity(tid, cores);
                    }
                }
            }
            todo.extend(sys::children_of(pid));
        }
        Ok(())
    }

    fn set_memory(&self, rec: &EnclaveRecord, mems: &str, bytes: u64) -> DriverResult<()> {
        let Some(cg) = self.cgroups.enclave(rec.id, rec.shared) else {
            return Ok(()); // no memory limit without cgroups; the record says so
        };
        cg.set_mems(mems).map_err(|e| e.to_string())?;
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
                .filter(|p| sys::same_process_alive(*p, rec.control_start_time))
            {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            cg.kill_all(Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            return cg.remove().map_err(|e| e.to_string());
        }
        // Unprivileged: the control process, its group, and every descendant
        // (apps run in process groups of their own).
        if let Some(pid) = rec
            .control_pid
            .filter(|p| sys::same_process_alive(*p, rec.control_start_time))
        {
            let _ = sys::kill(pid, libc::SIGSTOP); // no new children while we collect
            let mut all = vec![pid];
            let mut i = 0;
            while i < all.len() {
                let kids = sys::children_of(all[i]);
                all.extend(kids);
                i += 1;
            }
            let _ = sys::kill_group(pid, libc::SIGKILL);
            for p in &all {
                let _ = sys::kill(*p, libc::SIGKILL);
            }
            // Return once they are really gone (dead or zombie), as the cgroup path does.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while all.iter().any(|p| sys::same_process_alive(*p, None)) {
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
            .is_some_and(|p| sys::same_process_alive(p, rec.control_start_time))
    }
}
