//! The monitor's guest: `lwk_vmm`'s [`Lwk`] behind [`Guest`], and how an
//! app's end reads in its record.

use std::sync::Arc;

use hobbes_proto::model::{CoreId, ExitStatus};
use lwk_vmm::{App, AppExit, ExitKind, LaunchRequest, Lwk, LwkConfig};

use crate::monitor::{Guest, GuestApp};

/// An enclave's VM.
pub(crate) struct Vmm(Arc<Lwk>);

/// Make the enclave's VM: `mem_bytes` of guest RAM (in `memory_dir` when
/// given), populated now (the
/// caller sits in the enclave's memory cgroup meanwhile), vCPUs on `cores`,
/// the system-call proxy on `proxy_cores` (none: every call exits).
pub(crate) fn make(
    mem_bytes: u64,
    memory_dir: Option<&std::path::Path>,
    numa_nodes: &[u32],
    cores: &[CoreId],
    proxy_cores: &[CoreId],
) -> anyhow::Result<Arc<Vmm>> {
    let lwk = Lwk::new(LwkConfig {
        numa_nodes: numa_nodes.to_vec(),
        mem_bytes,
        cores: cores.to_vec(),
        // A file in the daemon's huge-page tmpfs (host 2 MiB pages: far fewer
        // KVM page faults), or a memfd; either is shareable with XEMEM.
        memory_dir: memory_dir.map(Into::into),
        proxy_cores: proxy_cores.to_vec(),
    })
    .map_err(|e| anyhow::anyhow!("cannot make the LWK: {e}"))?;
    Ok(Arc::new(Vmm(lwk)))
}

impl Guest for Vmm {
    type App = App;

    fn launch(&self, req: LaunchRequest) -> Result<App, String> {
        self.0.launch(req).map_err(|e| e.to_string())
    }
}

impl GuestApp for App {
    fn pid(&self) -> u32 {
        App::pid(self)
    }

    fn signal(&self, signal: i32) -> Result<(), String> {
        App::signal(self, signal).map_err(|e| e.to_string())
    }

    fn wait(&self) -> (ExitStatus, Option<String>) {
        ended(App::wait(self))
    }
}

/// An app's end as its record shows it: the status, and a detail that
/// names the fault that ended it (if one did) and sums up its system calls
/// ("page fault (vector 14) at rip 0x401136 accessing 0x0 (read); forwarded:
/// write 1; served: brk 2").
pub(crate) fn ended(exit: AppExit) -> (ExitStatus, Option<String>) {
    let status = match exit.kind {
        ExitKind::Code(c) => ExitStatus::Code(c),
        ExitKind::Signal(s) => ExitStatus::Signal(s),
    };
    let mut parts = Vec::new();
    if let Some(fault) = &exit.fault {
        parts.push(fault.to_string());
    }
    parts.push(exit.calls.to_string());
    (status, Some(parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwk_vmm::{CallSummary, GuestFault, Handling};

    #[test]
    fn an_apps_end_names_its_fault_and_its_calls() {
        let mut calls = CallSummary::default();
        calls
            .counts
            .insert((Handling::Forwarded, "write".into()), 1);
        calls.counts.insert((Handling::Served, "brk".into()), 2);
        let (status, detail) = ended(AppExit {
            kind: ExitKind::Signal(libc::SIGSEGV),
            fault: Some(GuestFault {
                vector: 14,
                error_code: 4,
                rip: 0x401136,
                address: Some(0),
            }),
            calls: calls.clone(),
        });
        assert_eq!(status, ExitStatus::Signal(libc::SIGSEGV));
        assert_eq!(status.shell_code(), 139);
        let detail = detail.unwrap();
        assert!(
            detail.starts_with("page fault (vector 14) at rip 0x401136 accessing 0x0"),
            "{detail}"
        );
        assert!(
            detail.ends_with("; forwarded: write 1; served: brk 2"),
            "{detail}"
        );
        let (status, detail) = ended(AppExit {
            kind: ExitKind::Code(3),
            fault: None,
            calls,
        });
        assert_eq!(status, ExitStatus::Code(3));
        assert_eq!(detail.as_deref(), Some("forwarded: write 1; served: brk 2"));
    }
}
