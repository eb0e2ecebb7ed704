//! What every MPI rank of a Remora job starts from, whoever launches it
//! (leviathan on one node, `srun` across the nodes of a Slurm allocation):
//! the transport settings each MPI needs where the job's ranks sit, and the
//! rank-space library (`libremora`) to preload. One table for both
//! launchers, so they cannot drift apart.

use std::path::{Path, PathBuf};

use crate::msg::MpiFlavor;

/// Where a job's ranks sit relative to each other: it decides which of an
/// MPI's transports can work between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankSpan {
    /// One node, one PID namespace (one enclave, or no isolation).
    OneNamespace,
    /// One node, several PID namespaces (ranks in different enclaves).
    PidNamespaces,
    /// Several nodes; `pid_namespaces`: ranks also sit in PID namespaces of
    /// their own (enclaves per node, which on simulated nodes share one kernel).
    Nodes {
        /// Ranks run in enclaves (own PID namespaces).
        pid_namespaces: bool,
    },
}

/// The transport defaults of `mpi`'s ranks for `span`: environment
/// variables, each given only when the application does not set it
/// ([`unless_set`]).
pub fn transport_defaults(
    mpi: MpiFlavor,
    span: RankSpan,
) -> &'static [(&'static str, &'static str)] {
    let pid_namespaces = match span {
        RankSpan::OneNamespace => false,
        RankSpan::PidNamespaces => true,
        RankSpan::Nodes { pid_namespaces } => pid_namespaces,
    };
    let nodes = matches!(span, RankSpan::Nodes { .. });
    match (mpi, pid_namespaces, nodes) {
        // UCX's /proc/PID/fd shm links and CMA (process_vm_readv by pid) do
        // not work across PID namespaces: measured here, MPI_Finalize then
        // hangs. Named /dev/shm segments and TCP work.
        (MpiFlavor::Mpich, true, _) => &[("UCX_POSIX_USE_PROC_LINK", "n"), ("UCX_TLS", "^cma")],
        (MpiFlavor::Mpich, false, _) => &[],
        // Open MPI 4.1 here: its shared-memory BTL, not UCX (whose probing
        // doubles a job's start), and one-sided windows through sm/pt2pt
        // (the default components cannot make a window on this node).
        (MpiFlavor::OpenMpi, false, false) => &[
            ("OMPI_MCA_pml", "ob1"),
            ("OMPI_MCA_btl", "self,vader"),
            ("OMPI_MCA_osc", "sm,pt2pt"),
        ],
        // Across PID namespaces vader cannot work: a shared segment records
        // its creator's pid, and a rank whose own pid (in its namespace) is
        // that number takes itself for the creator and never maps the
        // segment (a segfault in the first send, measured here about one
        // run in two). TCP on loopback between ranks instead.
        (MpiFlavor::OpenMpi, true, false) => &[
            ("OMPI_MCA_pml", "ob1"),
            ("OMPI_MCA_btl", "self,tcp"),
            ("OMPI_MCA_btl_tcp_if_include", "lo"),
            ("OMPI_MCA_osc", "sm,pt2pt"),
        ],
        // Across nodes: TCP (on every interface but loopback, Open MPI's
        // own default), within a node too. vader segfaults in the first
        // collective here when simulated nodes share one kernel, /dev/shm
        // and host name (its segments collide); on real nodes an
        // application may ask for it (OMPI_MCA_btl=self,vader,tcp).
        (MpiFlavor::OpenMpi, _, true) => &[
            ("OMPI_MCA_pml", "ob1"),
            ("OMPI_MCA_btl", "self,tcp"),
            ("OMPI_MCA_osc", "sm,pt2pt"),
        ],
    }
}

/// `defaults` less the variables `app_env` sets itself: the application's
/// own settings win.
pub fn unless_set(
    defaults: impl IntoIterator<Item = (String, String)>,
    app_env: &[(String, String)],
) -> Vec<(String, String)> {
    defaults
        .into_iter()
        .filter(|(k, _)| !app_env.iter().any(|(ak, _)| ak == k))
        .collect()
}

/// The rank-space library of each MPI: the variable that names it, its file name.
pub fn rank_space_library_name(mpi: MpiFlavor) -> (&'static str, &'static str) {
    match mpi {
        MpiFlavor::Mpich => ("HOBBES_REMORA_LIB", "libremora.so"),
        MpiFlavor::OpenMpi => ("HOBBES_REMORA_OMPI_LIB", "libremora-ompi.so"),
    }
}

/// The rank-space library of `mpi`: its variable (`HOBBES_REMORA_LIB`,
/// `HOBBES_REMORA_OMPI_LIB`), else next to the running executable (leviathan,
/// remora: cargo builds them into one directory), else installed
/// (`/usr/local/lib`, `/usr/lib`).
pub fn rank_space_library(mpi: MpiFlavor) -> Option<PathBuf> {
    let (var, name) = rank_space_library_name(mpi);
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    [
        exe.with_file_name(name),
        Path::new("/usr/local/lib").join(name),
        Path::new("/usr/lib").join(name),
    ]
    .into_iter()
    .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_where_ranks_sit() {
        let m = MpiFlavor::Mpich;
        assert!(transport_defaults(m, RankSpan::OneNamespace).is_empty());
        assert_eq!(transport_defaults(m, RankSpan::PidNamespaces).len(), 2);
        assert_eq!(
            transport_defaults(m, RankSpan::PidNamespaces),
            transport_defaults(
                m,
                RankSpan::Nodes {
                    pid_namespaces: true
                }
            )
        );
        let o = MpiFlavor::OpenMpi;
        let across = transport_defaults(
            o,
            RankSpan::Nodes {
                pid_namespaces: false,
            },
        );
        assert!(across.contains(&("OMPI_MCA_btl", "self,tcp")));
        assert!(
            !across
                .iter()
                .any(|(k, _)| *k == "OMPI_MCA_btl_tcp_if_include"),
            "loopback only cannot reach another node"
        );
        let own = vec![("UCX_TLS".to_string(), "tcp".to_string())];
        let kept = unless_set(
            transport_defaults(m, RankSpan::PidNamespaces)
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
            &own,
        );
        assert_eq!(kept, vec![("UCX_POSIX_USE_PROC_LINK".into(), "n".into())]);
    }
}
