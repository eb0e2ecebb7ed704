//! Enclave lifecycle: create, destroy, assign and revoke resources, crash.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use hobbes_nis::{NisError, NisTxn};
use hobbes_proto::model::{
    BlockId, BoundProcess, CoreId, EnclaveId, EnclaveRecord, EnclaveState, ExitStatus, Ownership,
    HOST_ENCLAVE,
};
use hobbes_proto::msg::{EnclaveRef, ErrorCode};
use hobbes_proto::slurm::SlurmStep;
use hobbes_proto::spec::{CpuRequest, EnclaveSpec, MemRequest};

use super::{internal, now_ms, refuse, remove_tree, Daemon, Refusal};
use crate::config::OnCrash;
use crate::kinds::StartContext;
use crate::resources::{pick_blocks, pick_cores, AllocError};
use crate::sys::PeerCred;
use hobbes_cgroups::step_nest::StepNest;

/// How long a new control process may take to attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Carry a refusal out of a NIS transaction (which aborts it: nothing changes).
pub(super) enum TxError {
    Refused(Refusal),
    Nis(NisError),
}

impl From<NisError> for TxError {
    fn from(e: NisError) -> Self {
        TxError::Nis(e)
    }
}

impl From<Refusal> for TxError {
    fn from(r: Refusal) -> Self {
        TxError::Refused(r)
    }
}

impl From<AllocError> for TxError {
    fn from(e: AllocError) -> Self {
        TxError::Refused(match e {
            AllocError::Overcommit(m) => refuse(ErrorCode::Overcommit, m),
            AllocError::Invalid(m) => refuse(ErrorCode::InvalidSpec, m),
        })
    }
}

impl Daemon {
    /// Run a transaction that may refuse; a refusal aborts it (nothing changes).
    pub(super) fn tx<T>(
        &self,
        f: impl FnOnce(&mut NisTxn) -> Result<T, TxError>,
    ) -> Result<T, Refusal> {
        self.nis.update(f).map_err(|e| match e {
            TxError::Refused(r) => r,
            TxError::Nis(e) => internal(e),
        })
    }

    /// Find an enclave by id or name (not the host).
    pub fn resolve(&self, r: &EnclaveRef) -> Result<EnclaveRecord, Refusal> {
        let reader = self.nis.reader();
        let found = match r {
            EnclaveRef::Id(HOST_ENCLAVE) => {
                return Err(refuse(
                    ErrorCode::InvalidSpec,
                    "enclave 0 is the host itself; name a created enclave",
                ))
            }
            EnclaveRef::Id(id) => reader.enclave(*id).map_err(internal)?,
            EnclaveRef::Name(n) => reader.enclave_by_name(n).map_err(internal)?,
        };
        found.ok_or_else(|| {
            refuse(
                ErrorCode::NotFound,
                format!("no enclave {r} (hobbes list-enclaves shows them)"),
            )
        })
    }

    /// Allow `peer` to change something owned by uid `owner` only if it is root
    /// or that uid; otherwise `permission_denied` naming `what` (e.g. "enclave
    /// 3 (sim)"), its owner and the peer's uid.
    pub fn authorize_owner(peer: &PeerCred, owner: u32, what: &str) -> Result<(), Refusal> {
        if peer.uid == 0 || peer.uid == owner {
            Ok(())
        } else {
            Err(refuse(
                ErrorCode::PermissionDenied,
                format!("permission denied: {what} belongs to uid {owner}; only it or root may change it (you are uid {})", peer.uid),
            ))
        }
    }

    /// Who a `create_enclave` (or `join_enclave`) with `owner` creates for:
    /// the peer itself without one; with one, root only
    /// (`permission_denied`: a user may not give away enclaves or apps), and
    /// then the owner's uid and gid in the peer's place (its pid kept, for
    /// the logs and the hang-up check).
    pub fn creator(
        peer: &PeerCred,
        owner: Option<hobbes_proto::msg::Owner>,
        what: &str,
    ) -> Result<PeerCred, Refusal> {
        let Some(o) = owner else {
            return Ok(*peer);
        };
        if peer.uid != 0 {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!("permission denied: only root may give {what} another owner (owner uid {}, gid {}); you are uid {}: leave owner out to own it yourself", o.uid, o.gid, peer.uid),
            ));
        }
        Ok(PeerCred {
            pid: peer.pid,
            uid: o.uid,
            gid: o.gid,
        })
    }

    fn names(&self) -> impl Fn(EnclaveId) -> String {
        let names: Vec<(EnclaveId, String)> = self
            .nis
            .reader()
            .enclaves()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.id, e.name))
            .collect();
        move |id| {
            names
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(i, n)| format!("{i} ({n})"))
                .unwrap_or_else(|| id.to_string())
        }
    }

    /// Serve `create_enclave` for `peer`, who becomes the owner: in one NIS
    /// transaction check the name is free (`conflict`), pick cores and memory
    /// blocks (`overcommit`, `invalid_spec`) and record the enclave as
    /// `starting`; then have its kind's driver start the control process and
    /// wait up to 10 s for it to attach. Returns the record once it is running.
    /// A bad spec or a kind with no driver is `invalid_spec`, a daemon shutting
    /// down `unavailable`; a failed start is `internal` and rolled back (the
    /// resources are free again; if the roll-back fails too, the record stays,
    /// crashed, holding them until `hobbes destroy-enclave`).
    pub fn create_enclave(
        &self,
        peer: &PeerCred,
        spec: EnclaveSpec,
    ) -> Result<EnclaveRecord, Refusal> {
        self.create_enclave_with(peer, spec, None, None, None)
    }

    /// [`Daemon::create_enclave`] with what a Slurm step adds: its tag, kept
    /// in the record, and the process whose end destroys the enclave
    /// (`bound_to_pid`, which must exist: `invalid_spec`; watched by
    /// [`super::bound::BoundWatch`]). Where Slurm confines jobs
    /// (`--slurm-cgroups`), a step's enclave takes its cores from
    /// `step_cpus`, the step's allocation on this node.
    pub fn create_enclave_with(
        &self,
        peer: &PeerCred,
        spec: EnclaveSpec,
        slurm: Option<SlurmStep>,
        bound_to_pid: Option<u32>,
        step_cpus: Option<&[CoreId]>,
    ) -> Result<EnclaveRecord, Refusal> {
        let within = step_cpus.filter(|_| self.cfg.slurm_cgroups && slurm.is_some());
        spec.validate()
            .map_err(|e| refuse(ErrorCode::InvalidSpec, e.to_string()))?;
        let bound_to = bound_to_pid.map(bound_process).transpose()?;
        if self.is_shutting_down() {
            return Err(refuse(ErrorCode::Unavailable, "leviathan is shutting down"));
        }
        let Some(driver) = self.driver(spec.kind) else {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                format!("cannot create a {} enclave", spec.kind),
            ));
        };
        let names = self.names();
        let paths = self.paths.clone();
        // 1. Reserve resources and write the record, atomically.
        let rec = self.tx(|t| {
            if t.enclaves()?.iter().any(|e| e.name == spec.name) {
                return Err(refuse(
                    ErrorCode::Conflict,
                    format!("an enclave named {:?} exists already", spec.name),
                )
                .into());
            }
            let mut pool = t.cores()?;
            if let Some(within) = within {
                pool.retain(|c| within.contains(&c.id));
            }
            let cores = pick_cores(&pool, &spec.cpus, spec.shared, &names).map_err(|e| {
                match (e, within) {
                    (AllocError::Overcommit(m), Some(within)) => AllocError::Overcommit(format!(
                        "{m} (Slurm confines this node's jobs: the enclave's cores come from the step's allocation, cores {})",
                        hobbes_kind::format_cpu_list(within)
                    )),
                    (e, _) => e,
                }
            })?;
            let core_nodes: Vec<u32> = t
                .cores()?
                .iter()
                .filter(|c| cores.contains(&c.id))
                .map(|c| c.numa_node)
                .collect();
            let blocks = pick_blocks(&t.blocks()?, &spec.memory, &core_nodes, &names)?;
            let mut header = t.header()?.ok_or_else(|| internal("NIS has no header"))?;
            header.counters.next_enclave_id = header.counters.next_enclave_id.max(1);
            let id = header.counters.next_enclave_id;
            header.counters.next_enclave_id += 1;
            header.counters.enclaves_created += 1;
            header.updated_ms = now_ms();
            t.put_header(&header)?;
            let (mem_bytes, numa_nodes) = claim(t, id, &cores, &blocks, spec.shared)?;
            let mut rec = EnclaveRecord {
                id,
                name: spec.name.clone(),
                kind: spec.kind,
                state: EnclaveState::Starting,
                parent: HOST_ENCLAVE,
                owner_uid: peer.uid,
                owner_gid: peer.gid,
                shared: spec.shared,
                host_ipc: spec.host_ipc,
                cores,
                mem_blocks: blocks,
                mem_bytes,
                numa_nodes,
                // The kind's driver describes both when it starts the enclave.
                isolation: Default::default(),
                control_pid: None,
                control_start_time: None,
                control: Default::default(),
                // Inside a privileged enclave the primary's path shows its replica.
                nis_dir: paths.nis().display().to_string(),
                created_ms: now_ms(),
                last_heartbeat_ms: 0,
                crash_reason: None,
                vm: spec.vm.clone(),
                slurm: slurm.clone(),
                bound_to,
                step_cgroups: vec![],
                rev: 0,
            };
            t.put_enclave(&mut rec)?;
            Ok(rec)
        })?;
        tracing::info!(enclave = rec.id, name = %rec.name, cores = ?rec.cores, mem_mib = rec.mem_bytes >> 20, "creating enclave");

        // 2. Start it; on any failure give everything back.
        match self.start_enclave(driver, &rec) {
            Ok(rec) => {
                if rec.bound_to.is_some() {
                    super::bound::bindings_changed();
                }
                Ok(rec)
            }
            Err(e) => {
                tracing::warn!(enclave = rec.id, error = %e.message, "enclave failed to start; rolling back");
                self.roll_back_creation(&rec);
                Err(e)
            }
        }
    }

    /// Undo a creation that failed half-way. The failure may be exhaustion
    /// (descriptors, memory): the roll-back runs with the daemon's reserved
    /// descriptors given back, so it can open the cgroup and `/proc` files it
    /// needs. If the enclave still cannot be stopped, its record stays, marked
    /// crashed with the reason, holding its resources, so that nothing is
    /// reported free that is not (`hobbes destroy-enclave` retries).
    fn roll_back_creation(&self, rec: &EnclaveRecord) {
        let mut outcome = Ok(());
        self.fd_reserve
            .with_all_released(|| outcome = self.remove_enclave(rec, "enclave failed to start"));
        let Err(undo) = outcome else { return };
        tracing::error!(enclave = rec.id, error = %undo.message, "cannot roll back a failed creation; marking it crashed");
        let _ = self.tx(|t| {
            if let Some(mut r) = t.enclave(rec.id)? {
                r.state = EnclaveState::Crashed;
                r.crash_reason = Some(format!(
                    "failed to start, and could not be rolled back: {}; hobbes destroy-enclave retries",
                    undo.message
                ));
                t.put_enclave(&mut r)?;
            }
            Ok(())
        });
    }

    fn start_enclave(
        &self,
        driver: &dyn crate::kinds::EnclaveDriver,
        rec: &EnclaveRecord,
    ) -> Result<EnclaveRecord, Refusal> {
        let dir = self.paths.enclave_dir(rec.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        if self.privileged {
            self.nis
                .attach_replica(rec.id, dir.join("nis"))
                .map_err(internal)?;
        }
        let credential = self
            .new_control_credential(rec.id)
            .map_err(|e| internal(format!("cannot make the control credential: {e}")))?;
        let ctx = StartContext {
            daemon_socket: self.paths.control_socket(),
            cores: rec.cores.clone(),
            blocks: rec.mem_blocks.clone(),
            mem_bytes: rec.mem_bytes,
            numa_nodes: rec.numa_nodes.clone(),
            enclave_dir: dir.clone(),
            nis_replica: dir.join("nis"),
            nis_mount: self.paths.nis(),
            memory_dir: self
                .nis
                .reader()
                .header()
                .ok()
                .and_then(|h| h.segment_files.dir)
                .map(PathBuf::from),
            control_credential: credential.0,
        };
        let record = |started: &crate::kinds::Started| {
            self.tx(|t| {
                let mut r = t
                    .enclave(rec.id)?
                    .ok_or_else(|| internal("enclave record vanished"))?;
                r.control_pid = Some(started.control_pid);
                r.control_start_time = started.control_start_time;
                r.isolation = started.isolation.clone();
                r.control = started.control.clone();
                t.put_enclave(&mut r)?;
                Ok(())
            })
            .map_err(|e| e.message)
        };
        driver.start(rec, &ctx, &record).map_err(|e| {
            refuse(
                ErrorCode::Internal,
                format!("cannot start enclave {}: {e}", rec.name),
            )
        })?;
        if self.wait_for_link(rec.id, ATTACH_TIMEOUT).is_none() {
            return Err(refuse(
                ErrorCode::Internal,
                format!("enclave {}: the control process did not attach within {ATTACH_TIMEOUT:?} (see leviathan's log)", rec.name),
            ));
        }
        self.nis
            .reader()
            .enclave(rec.id)
            .map_err(internal)?
            .ok_or_else(|| internal("enclave record vanished"))
    }

    /// Serve `destroy_enclave`: stop the enclave through its driver (its apps
    /// die with it and are marked), remove its directory, free its cores and
    /// blocks and delete its record. Root or the owner only; `not_found` for an
    /// unknown enclave, `conflict` while it is still starting, `internal` when
    /// the driver cannot stop it (the record stays, so a retry can finish).
    pub fn destroy_enclave(&self, peer: &PeerCred, r: &EnclaveRef) -> Result<(), Refusal> {
        let rec = self.resolve(r)?;
        Self::authorize_owner(
            peer,
            rec.owner_uid,
            &format!("enclave {} ({})", rec.id, rec.name),
        )?;
        let rec = self.tx(|t| {
            let mut rec = t
                .enclave(rec.id)?
                .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no enclave {r}")))?;
            if rec.state == EnclaveState::Starting {
                return Err(refuse(
                    ErrorCode::Conflict,
                    format!("enclave {} is still starting; retry when it runs", rec.name),
                )
                .into());
            }
            rec.state = EnclaveState::Stopping;
            t.put_enclave(&mut rec)?;
            Ok(rec)
        })?;
        tracing::info!(enclave = rec.id, name = %rec.name, "destroying enclave");
        self.teardown(&rec, "enclave destroyed")?;
        self.tx(|t| {
            release(t, &rec)?;
            t.delete_enclave(rec.id)?;
            let mut h = t.header()?.ok_or_else(|| internal("NIS has no header"))?;
            h.counters.enclaves_destroyed += 1;
            h.updated_ms = now_ms();
            t.put_header(&h)?;
            Ok(())
        })
    }

    /// Stop an enclave at the OS level and mark its unfinished apps.
    fn teardown(&self, rec: &EnclaveRecord, why: &str) -> Result<(), Refusal> {
        self.drop_link(rec.id);
        self.links.forget_reattach(rec.id);
        if let Some(driver) = self.driver(rec.kind) {
            // Not stopped: keep its directory (the replica it may still read) for a retry.
            driver
                .stop(rec)
                .map_err(|e| internal(format!("cannot stop enclave {}: {e}", rec.name)))?;
        }
        if !rec.step_cgroups.is_empty() {
            let nest = StepNest::from_dirs(&rec.step_cgroups);
            nest.kill_all(hobbes_cgroups::KILL_TIMEOUT)
                .and_then(|()| nest.release())
                .map_err(|e| {
                    internal(format!(
                        "cannot remove enclave {}'s cgroups in its Slurm step: {e}",
                        rec.name
                    ))
                })?;
        }
        self.nis.detach_replica(rec.id);
        remove_tree(&self.paths.enclave_dir(rec.id));
        let unfinished: Vec<_> = self
            .nis
            .reader()
            .apps()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.enclave == rec.id && !a.state.is_final())
            .collect();
        for app in unfinished {
            self.app_ended(
                app.id,
                Some(ExitStatus::Signal(libc::SIGKILL)),
                Some(format!("killed: {why}")),
            );
        }
        Ok(())
    }

    /// Stop an enclave at the OS level and forget it: its resources return to the pool.
    pub(super) fn remove_enclave(&self, rec: &EnclaveRecord, why: &str) -> Result<(), Refusal> {
        self.teardown(rec, why)?;
        self.tx(|t| {
            release(t, rec)?;
            t.delete_enclave(rec.id)?;
            Ok(())
        })
    }

    /// Mark an enclave crashed; reclaim or hold its resources as configured.
    pub fn enclave_crashed(&self, id: EnclaveId, reason: &str) {
        let Ok(Some(rec)) = self.nis.reader().enclave(id) else {
            return;
        };
        if !matches!(rec.state, EnclaveState::Running | EnclaveState::Starting) {
            return;
        }
        tracing::warn!(enclave = id, name = %rec.name, reason, "enclave crashed");
        let policy = self.cfg.on_crash;
        let marked = self.tx(|t| {
            let Some(mut r) = t.enclave(id)? else { return Ok(None) };
            if !matches!(r.state, EnclaveState::Running | EnclaveState::Starting) {
                return Ok(None);
            }
            r.state = EnclaveState::Crashed;
            r.crash_reason = Some(match policy {
                OnCrash::Reclaim => format!("{reason}; resources reclaimed"),
                OnCrash::Hold => format!("{reason}; resources held for inspection (hobbes destroy-enclave releases them)"),
            });
            t.put_enclave(&mut r)?;
            let mut h = t.header()?.ok_or_else(|| internal("NIS has no header"))?;
            h.counters.enclaves_crashed += 1;
            t.put_header(&h)?;
            Ok(Some(r))
        });
        let Ok(Some(rec)) = marked else { return };
        self.drop_link(id);
        // Apps the enclave was running are lost: nobody can report their end now.
        for app in self
            .nis
            .reader()
            .apps()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.enclave == id && !a.state.is_final())
        {
            self.app_ended(
                app.id,
                None,
                Some(format!("lost: enclave crashed ({reason})")),
            );
        }
        if policy == OnCrash::Reclaim {
            if let Err(e) = self.teardown(&rec, "enclave crashed") {
                tracing::error!(enclave = id, error = %e.message, "cannot reclaim crashed enclave");
                return;
            }
            let _ = self.tx(|t| {
                release(t, &rec)?;
                if let Some(mut r) = t.enclave(id)? {
                    r.cores.clear();
                    r.mem_blocks.clear();
                    r.mem_bytes = 0;
                    r.control_pid = None;
                    t.put_enclave(&mut r)?;
                }
                Ok(())
            });
        }
    }

    /// Serve `assign_cpus`: add cores to a running enclave, picked as at
    /// creation (free cores for an exclusive enclave, host cores for a shared
    /// one), and apply the new set through the driver (cpuset or affinity).
    /// `not_found` for an unknown enclave, `permission_denied` unless `peer` is
    /// root or the enclave's owner, `conflict` unless it is running,
    /// `invalid_spec` for the host enclave, an empty request
    /// `invalid_spec`, too few cores `overcommit`; if the driver fails the
    /// records are restored and the answer is `internal`.
    pub fn assign_cpus(
        &self,
        peer: &PeerCred,
        r: &EnclaveRef,
        req: &CpuRequest,
    ) -> Result<EnclaveRecord, Refusal> {
        let rec = self.modifiable(peer, r)?;
        if req.is_empty() {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                "give a core count or core ids to assign",
            ));
        }
        let names = self.names();
        let (before, after) = self.tx(|t| {
            let cores = pick_cores(&t.cores()?, req, rec.shared, &names)?;
            let before = current(t, rec.id)?;
            claim(t, rec.id, &cores, &[], rec.shared)?;
            let mut after = before.clone();
            after.cores.extend(&cores);
            after.cores.sort_unstable();
            t.put_enclave(&mut after)?;
            Ok((before, after))
        })?;
        self.apply_cpus(&before, &after)
    }

    /// Serve `revoke_cpus`: take `cores` back from a running enclave and apply
    /// the smaller set through the driver. Every core must be the enclave's and
    /// at least one must remain (else `invalid_spec`: destroy it instead).
    /// `not_found` for an unknown enclave, `permission_denied` unless `peer` is
    /// root or the enclave's owner, `conflict` unless it is running,
    /// `invalid_spec` for the host enclave; if the driver
    /// fails the records are restored and the answer is `internal`.
    pub fn revoke_cpus(
        &self,
        peer: &PeerCred,
        r: &EnclaveRef,
        cores: &[CoreId],
    ) -> Result<EnclaveRecord, Refusal> {
        let rec = self.modifiable(peer, r)?;
        let (before, after) = self.tx(|t| {
            let before = current(t, rec.id)?;
            held_by(&before, cores, &before.cores, "core")?;
            if cores.is_empty() || before.cores.len() <= cores.len() {
                return Err(refuse(
                    ErrorCode::InvalidSpec,
                    format!(
                        "enclave {} must keep at least one core; destroy it instead",
                        before.name
                    ),
                )
                .into());
            }
            let mut after = before.clone();
            after.cores.retain(|c| !cores.contains(c));
            release_cores(t, rec.id, cores)?;
            t.put_enclave(&mut after)?;
            Ok((before, after))
        })?;
        self.apply_cpus(&before, &after)
    }

    /// Push a core change to the OS; undo the records if the OS refuses.
    fn apply_cpus(
        &self,
        before: &EnclaveRecord,
        after: &EnclaveRecord,
    ) -> Result<EnclaveRecord, Refusal> {
        let driver = self
            .driver(after.kind)
            .ok_or_else(|| internal("no driver"))?;
        if let Err(e) = driver.set_cpus(after, &after.cores) {
            let _ = self.tx(|t| {
                let added: Vec<CoreId> = after
                    .cores
                    .iter()
                    .copied()
                    .filter(|c| !before.cores.contains(c))
                    .collect();
                let removed: Vec<CoreId> = before
                    .cores
                    .iter()
                    .copied()
                    .filter(|c| !after.cores.contains(c))
                    .collect();
                release_cores(t, before.id, &added)?;
                claim(t, before.id, &removed, &[], before.shared)?;
                let mut b = before.clone();
                t.put_enclave(&mut b)?;
                Ok(())
            });
            return Err(internal(format!(
                "cannot change the cores of enclave {}: {e}",
                after.name
            )));
        }
        self.nis
            .reader()
            .enclave(after.id)
            .map_err(internal)?
            .ok_or_else(|| internal("enclave vanished"))
    }

    /// Serve `assign_memory`: add memory blocks to a running enclave (NUMA
    /// nodes it already uses first) and raise its memory limit through the
    /// driver. `not_found` for an unknown enclave, `permission_denied` unless `peer` is
    /// root or the enclave's owner, `conflict` unless it is running,
    /// `invalid_spec` for the host enclave, an
    /// empty request `invalid_spec`, too little free memory `overcommit`; if the
    /// driver fails the records are restored and the answer is `internal`.
    pub fn assign_memory(
        &self,
        peer: &PeerCred,
        r: &EnclaveRef,
        req: &MemRequest,
    ) -> Result<EnclaveRecord, Refusal> {
        let rec = self.modifiable(peer, r)?;
        if req.is_empty() {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                "give a size or block ids to assign",
            ));
        }
        let names = self.names();
        let (before, after) = self.tx(|t| {
            let before = current(t, rec.id)?;
            let blocks = pick_blocks(&t.blocks()?, req, &before.numa_nodes, &names)?;
            let (bytes, nodes) = claim(t, rec.id, &[], &blocks, rec.shared)?;
            let mut after = before.clone();
            after.mem_blocks.extend(&blocks);
            after.mem_blocks.sort_unstable();
            after.mem_bytes += bytes;
            after.numa_nodes = union(&after.numa_nodes, &nodes);
            t.put_enclave(&mut after)?;
            Ok((before, after))
        })?;
        self.apply_memory(&before, &after)
    }

    /// Serve `revoke_memory`: free `blocks` of a running enclave and lower its
    /// memory limit through the driver. Every block must be the enclave's and
    /// some memory must remain (else `invalid_spec`). `not_found` for an unknown enclave, `permission_denied` unless `peer` is
    /// root or the enclave's owner, `conflict` unless it is running,
    /// `invalid_spec` for the host enclave;
    /// if the driver fails the records are restored and the answer is `internal`.
    pub fn revoke_memory(
        &self,
        peer: &PeerCred,
        r: &EnclaveRef,
        blocks: &[BlockId],
    ) -> Result<EnclaveRecord, Refusal> {
        let rec = self.modifiable(peer, r)?;
        let (before, after) = self.tx(|t| {
            let before = current(t, rec.id)?;
            held_by(&before, blocks, &before.mem_blocks, "memory block")?;
            if blocks.is_empty() || before.mem_blocks.len() <= blocks.len() {
                return Err(refuse(
                    ErrorCode::InvalidSpec,
                    format!(
                        "enclave {} must keep some memory; destroy it instead",
                        before.name
                    ),
                )
                .into());
            }
            let mut after = before.clone();
            let all = t.blocks()?;
            let mut freed = 0;
            for b in all.into_iter().filter(|b| blocks.contains(&b.id)) {
                freed += b.size;
                let mut b = b;
                b.ownership = Ownership::Free;
                t.put_block(&mut b)?;
            }
            after.mem_blocks.retain(|b| !blocks.contains(b));
            after.mem_bytes -= freed;
            after.numa_nodes = nodes_of_blocks(&t.blocks()?, &after.mem_blocks);
            t.put_enclave(&mut after)?;
            Ok((before, after))
        })?;
        self.apply_memory(&before, &after)
    }

    fn apply_memory(
        &self,
        before: &EnclaveRecord,
        after: &EnclaveRecord,
    ) -> Result<EnclaveRecord, Refusal> {
        let driver = self
            .driver(after.kind)
            .ok_or_else(|| internal("no driver"))?;
        if let Err(e) = driver.set_memory(after, &after.numa_nodes, after.mem_bytes) {
            let _ = self.tx(|t| {
                for mut b in t.blocks()? {
                    let want = if before.mem_blocks.contains(&b.id) {
                        Ownership::Allocated(before.id)
                    } else if after.mem_blocks.contains(&b.id) {
                        Ownership::Free
                    } else {
                        continue;
                    };
                    if b.ownership != want {
                        b.ownership = want;
                        t.put_block(&mut b)?;
                    }
                }
                let mut b = before.clone();
                t.put_enclave(&mut b)?;
                Ok(())
            });
            return Err(refuse(
                ErrorCode::Conflict,
                format!("cannot change the memory of enclave {}: {e}", after.name),
            ));
        }
        self.nis
            .reader()
            .enclave(after.id)
            .map_err(internal)?
            .ok_or_else(|| internal("enclave vanished"))
    }

    /// An enclave the peer may change, in a state that allows it.
    fn modifiable(&self, peer: &PeerCred, r: &EnclaveRef) -> Result<EnclaveRecord, Refusal> {
        let rec = self.resolve(r)?;
        Self::authorize_owner(
            peer,
            rec.owner_uid,
            &format!("enclave {} ({})", rec.id, rec.name),
        )?;
        if rec.state != EnclaveState::Running {
            return Err(refuse(
                ErrorCode::Conflict,
                format!("enclave {} is {}, not running", rec.name, rec.state),
            ));
        }
        if rec.id == HOST_ENCLAVE {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                "the host enclave is configured at daemon start",
            ));
        }
        Ok(rec)
    }
}

/// Process `pid` with its start time, if it exists (else `invalid_spec`).
fn bound_process(pid: u32) -> Result<BoundProcess, Refusal> {
    let start_time = (pid > 0)
        .then(|| crate::sys::proc_start_time(pid))
        .flatten()
        .ok_or_else(|| {
            refuse(
                ErrorCode::InvalidSpec,
                format!("bound_to_pid: there is no process {pid} to bind the enclave to"),
            )
        })?;
    Ok(BoundProcess {
        pid,
        start_time: Some(start_time),
    })
}

/// The enclave's record as this transaction sees it.
fn current(t: &NisTxn, id: EnclaveId) -> Result<EnclaveRecord, TxError> {
    Ok(t.enclave(id)?.ok_or_else(|| internal("enclave vanished"))?)
}

/// Refuse unless every one of `ids` is among what the enclave holds.
fn held_by(rec: &EnclaveRecord, ids: &[u32], held: &[u32], what: &str) -> Result<(), TxError> {
    match ids.iter().find(|id| !held.contains(id)) {
        Some(id) => Err(refuse(
            ErrorCode::InvalidSpec,
            format!("{what} {id} is not assigned to enclave {}", rec.name),
        )
        .into()),
        None => Ok(()),
    }
}

/// Mark cores and blocks as the enclave's; returns the blocks' bytes and NUMA nodes.
fn claim(
    t: &mut NisTxn,
    id: EnclaveId,
    cores: &[CoreId],
    blocks: &[BlockId],
    shared: bool,
) -> Result<(u64, Vec<u32>), NisError> {
    for mut c in t.cores()?.into_iter().filter(|c| cores.contains(&c.id)) {
        if shared {
            c.shared_by.push(id);
        } else {
            c.ownership = Ownership::Allocated(id);
        }
        t.put_core(&mut c)?;
    }
    let mut bytes = 0;
    let mut nodes = BTreeSet::new();
    for mut b in t.blocks()?.into_iter().filter(|b| blocks.contains(&b.id)) {
        b.ownership = Ownership::Allocated(id);
        bytes += b.size;
        nodes.insert(b.numa_node);
        t.put_block(&mut b)?;
    }
    Ok((bytes, nodes.into_iter().collect()))
}

fn release_cores(t: &mut NisTxn, id: EnclaveId, cores: &[CoreId]) -> Result<(), NisError> {
    for mut c in t.cores()?.into_iter().filter(|c| cores.contains(&c.id)) {
        let before = (c.ownership, c.shared_by.len());
        c.shared_by.retain(|e| *e != id);
        if c.ownership == Ownership::Allocated(id) {
            c.ownership = Ownership::Free;
        }
        if (c.ownership, c.shared_by.len()) != before {
            t.put_core(&mut c)?;
        }
    }
    Ok(())
}

/// Give back everything an enclave holds (by ownership, not by its record's
/// lists, so a half-built enclave is released too).
fn release(t: &mut NisTxn, rec: &EnclaveRecord) -> Result<(), NisError> {
    let all: Vec<CoreId> = t.cores()?.iter().map(|c| c.id).collect();
    release_cores(t, rec.id, &all)?;
    for mut b in t
        .blocks()?
        .into_iter()
        .filter(|b| b.ownership == Ownership::Allocated(rec.id))
    {
        b.ownership = Ownership::Free;
        t.put_block(&mut b)?;
    }
    for p in t.procs()?.into_iter().filter(|p| p.enclave == rec.id) {
        t.delete_proc(p.global_pid)?;
    }
    Ok(())
}

fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    a.iter()
        .chain(b)
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn nodes_of_blocks(all: &[hobbes_proto::model::MemBlockRecord], ids: &[BlockId]) -> Vec<u32> {
    all.iter()
        .filter(|b| ids.contains(&b.id))
        .map(|b| b.numa_node)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hobbes_proto::msg::Owner;

    #[test]
    fn only_root_gives_enclaves_and_apps_another_owner() {
        let root = PeerCred {
            pid: 7,
            uid: 0,
            gid: 0,
        };
        let user = PeerCred {
            pid: 8,
            uid: 1000,
            gid: 100,
        };
        let owner = Owner {
            uid: 1001,
            gid: 101,
        };
        // Without an owner: the peer itself.
        assert_eq!(Daemon::creator(&user, None, "an enclave").unwrap(), user);
        assert_eq!(Daemon::creator(&root, None, "an enclave").unwrap(), root);
        // Root: the owner, the peer's pid kept.
        assert_eq!(
            Daemon::creator(&root, Some(owner), "an enclave").unwrap(),
            PeerCred {
                pid: 7,
                uid: 1001,
                gid: 101
            }
        );
        // Anyone else: refused, saying why.
        let e = Daemon::creator(&user, Some(owner), "an enclave").unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(
            e.message
                .contains("only root may give an enclave another owner")
                && e.message.contains("uid 1000"),
            "{}",
            e.message
        );
        // Not even to itself (one rule: owner is root's).
        let own = Owner {
            uid: 1000,
            gid: 100,
        };
        assert!(Daemon::creator(&user, Some(own), "an enclave").is_err());
    }
}
