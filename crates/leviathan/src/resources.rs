//! Core and memory allocation: pure functions over the NIS records, so the
//! rules (no over-commit, NUMA preference, shared vs exclusive) are testable
//! without a daemon.

use std::collections::BTreeMap;

use hobbes_proto::model::{BlockId, CoreId, CoreRecord, EnclaveId, MemBlockRecord, Ownership};
use hobbes_proto::spec::{CpuRequest, MemRequest};

use crate::config::format_cpu_list;

/// A request the node cannot satisfy, or one naming resources it cannot have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Not enough free cores or memory, or a named core or block is taken;
    /// might succeed later. The daemon answers `overcommit` with the message,
    /// which says what is available and how to make room.
    #[error("{0}")]
    Overcommit(String),
    /// The request can never succeed on this node: it names a core or a
    /// memory block that does not exist. The daemon answers
    /// `invalid_spec` with the message.
    #[error("{0}")]
    Invalid(String),
}

fn owner_text(o: Ownership, names: &dyn Fn(EnclaveId) -> String) -> String {
    match o {
        Ownership::Host => "kept by the host".into(),
        Ownership::Free => "free".into(),
        Ownership::Allocated(e) => format!("owned by enclave {}", names(e)),
    }
}

/// Pick cores for an exclusive enclave (from free cores) or a shared one
/// (pinned to host cores, least shared first).
pub fn pick_cores(
    cores: &[CoreRecord],
    req: &CpuRequest,
    shared: bool,
    names: &dyn Fn(EnclaveId) -> String,
) -> Result<Vec<CoreId>, AllocError> {
    let wanted_state = if shared {
        Ownership::Host
    } else {
        Ownership::Free
    };
    let mut picked = Vec::new();
    for &id in &req.ids {
        let core = cores.iter().find(|c| c.id == id).ok_or_else(|| {
            AllocError::Invalid(format!(
                "core {id} does not exist on this node (cores: {})",
                format_cpu_list(&cores.iter().map(|c| c.id).collect::<Vec<_>>())
            ))
        })?;
        if core.ownership != wanted_state {
            let hint = if shared {
                "shared enclaves run on the host's cores"
            } else if core.ownership == Ownership::Host {
                "exclusive enclaves take free cores; use --shared to pin to host cores, or give the host fewer cores (--host-cores)"
            } else {
                "pick a free core (hobbes list-cpus)"
            };
            return Err(AllocError::Overcommit(format!(
                "core {id} is {}: {hint}",
                owner_text(core.ownership, names)
            )));
        }
        picked.push(id);
    }
    if req.count == 0 {
        return Ok(picked);
    }
    let mut candidates: Vec<&CoreRecord> = cores
        .iter()
        .filter(|c| c.ownership == wanted_state && !picked.contains(&c.id))
        .filter(|c| req.numa.is_none_or(|n| c.numa_node == n))
        .collect();
    if candidates.len() < req.count as usize {
        let free: Vec<CoreId> = candidates.iter().map(|c| c.id).collect();
        let what = if shared { "host" } else { "free" };
        let numa = req
            .numa
            .map(|n| format!(" on NUMA node {n}"))
            .unwrap_or_default();
        return Err(AllocError::Overcommit(format!(
            "not enough {what} cores{numa}: asked for {}, {} available ({}){}",
            req.count,
            free.len(),
            if free.is_empty() {
                "none".into()
            } else {
                format_cpu_list(&free)
            },
            if shared {
                ""
            } else {
                "; destroy an enclave, or use --shared to pin to host cores"
            }
        )));
    }
    // NUMA preference: the node of explicitly requested cores, else the node
    // with the most candidates; least-shared cores first for shared enclaves.
    let mut per_node: BTreeMap<u32, usize> = BTreeMap::new();
    for c in &candidates {
        *per_node.entry(c.numa_node).or_default() += 1;
    }
    let preferred = req
        .ids
        .first()
        .and_then(|id| cores.iter().find(|c| c.id == *id))
        .map(|c| c.numa_node)
        .filter(|n| per_node.get(n).copied().unwrap_or(0) >= req.count as usize)
        .or_else(|| {
            per_node
                .iter()
                .max_by_key(|(n, count)| (**count, std::cmp::Reverse(**n)))
                .map(|(n, _)| *n)
        });
    candidates.sort_by_key(|c| (Some(c.numa_node) != preferred, c.shared_by.len(), c.id));
    picked.extend(candidates.iter().take(req.count as usize).map(|c| c.id));
    Ok(picked)
}

/// Pick memory blocks: explicit ones, then enough free blocks for `size_mib`,
/// preferring `req.numa`, else the NUMA nodes of `near_nodes` (the enclave's cores).
pub fn pick_blocks(
    blocks: &[MemBlockRecord],
    req: &MemRequest,
    near_nodes: &[u32],
    names: &dyn Fn(EnclaveId) -> String,
) -> Result<Vec<BlockId>, AllocError> {
    let mut picked = Vec::new();
    let mut bytes = 0u64;
    for &id in &req.blocks {
        let b = blocks.iter().find(|b| b.id == id).ok_or_else(|| {
            AllocError::Invalid(format!(
                "memory block {id} does not exist on this node (hobbes list-memory)"
            ))
        })?;
        if b.ownership != Ownership::Free {
            return Err(AllocError::Overcommit(format!(
                "memory block {id} is {}: pick a free block (hobbes list-memory)",
                owner_text(b.ownership, names)
            )));
        }
        picked.push(id);
        bytes += b.size;
    }
    let want = req.size_mib.saturating_mul(1 << 20);
    if want == 0 {
        return Ok(picked);
    }
    let mut candidates: Vec<&MemBlockRecord> = blocks
        .iter()
        .filter(|b| b.ownership == Ownership::Free && !picked.contains(&b.id))
        .filter(|b| req.numa.is_none_or(|n| b.numa_node == n))
        .collect();
    let available: u64 = candidates.iter().map(|b| b.size).sum();
    if available < want {
        let numa = req
            .numa
            .map(|n| format!(" on NUMA node {n}"))
            .unwrap_or_default();
        return Err(AllocError::Overcommit(format!(
            "not enough free memory{numa}: asked for {} MiB, {} MiB free; the host keeps the rest (--host-memory)",
            req.size_mib,
            available >> 20
        )));
    }
    candidates.sort_by_key(|b| (!near_nodes.contains(&b.numa_node), b.id));
    let mut got = 0u64;
    for b in candidates {
        if got >= want {
            break;
        }
        picked.push(b.id);
        got += b.size;
        bytes += b.size;
    }
    let _ = bytes;
    Ok(picked)
}

/// Choose which cores and blocks the host keeps, given the configuration.
pub fn host_share(
    cores: &[CoreRecord],
    blocks: &[MemBlockRecord],
    host_cores: Option<&[CoreId]>,
    host_memory_mib: Option<u64>,
) -> anyhow::Result<(Vec<CoreId>, Vec<BlockId>)> {
    let all: Vec<CoreId> = cores.iter().map(|c| c.id).collect();
    let host: Vec<CoreId> = match host_cores {
        Some(list) => {
            for c in list {
                anyhow::ensure!(
                    all.contains(c),
                    "host core {c} does not exist (cores: {})",
                    format_cpu_list(&all)
                );
            }
            list.to_vec()
        }
        None => all.first().copied().into_iter().collect(),
    };
    anyhow::ensure!(!host.is_empty(), "the host must keep at least one core");
    let total: u64 = blocks.iter().map(|b| b.size).sum();
    let keep = match host_memory_mib {
        Some(m) => m << 20,
        None => (total / 4).max(1 << 30),
    };
    anyhow::ensure!(
        keep < total,
        "host memory {} MiB is all of the node's {} MiB",
        keep >> 20,
        total >> 20
    );
    let mut host_blocks = Vec::new();
    let mut got = 0;
    for b in blocks {
        if got >= keep {
            break;
        }
        host_blocks.push(b.id);
        got += b.size;
    }
    Ok((host, host_blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(id: CoreId, numa: u32, o: Ownership) -> CoreRecord {
        CoreRecord {
            id,
            numa_node: numa,
            package: 0,
            core: id,
            ownership: o,
            shared_by: vec![],
            rev: 0,
        }
    }
    fn block(id: BlockId, numa: u32, o: Ownership) -> MemBlockRecord {
        MemBlockRecord {
            id,
            base: id as u64 * (128 << 20),
            size: 128 << 20,
            numa_node: numa,
            ownership: o,
            rev: 0,
        }
    }
    fn names(e: EnclaveId) -> String {
        format!("#{e}")
    }

    #[test]
    fn exclusive_takes_free_cores_only() {
        let cores = vec![core(0, 0, Ownership::Host), core(1, 0, Ownership::Free)];
        let req = CpuRequest {
            count: 1,
            ..Default::default()
        };
        assert_eq!(pick_cores(&cores, &req, false, &names).unwrap(), vec![1]);
        let req = CpuRequest {
            count: 2,
            ..Default::default()
        };
        let err = pick_cores(&cores, &req, false, &names).unwrap_err();
        assert!(matches!(err, AllocError::Overcommit(_)));
        assert!(
            err.to_string().contains("asked for 2, 1 available (1)"),
            "{err}"
        );
        let req = CpuRequest {
            ids: vec![0],
            ..Default::default()
        };
        assert!(pick_cores(&cores, &req, false, &names)
            .unwrap_err()
            .to_string()
            .contains("kept by the host"));
    }

    #[test]
    fn shared_goes_to_least_shared_host_core() {
        let mut c0 = core(0, 0, Ownership::Host);
        c0.shared_by = vec![4];
        let cores = vec![
            c0,
            core(1, 0, Ownership::Host),
            core(2, 0, Ownership::Allocated(3)),
        ];
        let req = CpuRequest {
            count: 1,
            ..Default::default()
        };
        assert_eq!(pick_cores(&cores, &req, true, &names).unwrap(), vec![1]);
        let req = CpuRequest {
            ids: vec![2],
            ..Default::default()
        };
        assert!(pick_cores(&cores, &req, true, &names)
            .unwrap_err()
            .to_string()
            .contains("owned by enclave #3"));
    }

    #[test]
    fn numa_preference_keeps_cores_on_one_node() {
        let cores = vec![
            core(0, 0, Ownership::Host),
            core(1, 0, Ownership::Free),
            core(2, 1, Ownership::Free),
            core(3, 1, Ownership::Free),
        ];
        let req = CpuRequest {
            count: 2,
            ..Default::default()
        };
        assert_eq!(pick_cores(&cores, &req, false, &names).unwrap(), vec![2, 3]);
        let req = CpuRequest {
            count: 1,
            numa: Some(0),
            ..Default::default()
        };
        assert_eq!(pick_cores(&cores, &req, false, &names).unwrap(), vec![1]);
        let req = CpuRequest {
            count: 2,
            numa: Some(0),
            ..Default::default()
        };
        assert!(pick_cores(&cores, &req, false, &names).is_err());
    }

    #[test]
    fn memory_prefers_near_nodes_and_refuses_overcommit() {
        let blocks = vec![
            block(0, 0, Ownership::Host),
            block(1, 0, Ownership::Free),
            block(2, 1, Ownership::Free),
            block(3, 1, Ownership::Allocated(9)),
        ];
        let req = MemRequest {
            size_mib: 100,
            ..Default::default()
        };
        assert_eq!(pick_blocks(&blocks, &req, &[1], &names).unwrap(), vec![2]);
        let req = MemRequest {
            size_mib: 256,
            ..Default::default()
        };
        assert_eq!(
            pick_blocks(&blocks, &req, &[1], &names).unwrap(),
            vec![2, 1]
        );
        let req = MemRequest {
            size_mib: 257,
            ..Default::default()
        };
        assert!(pick_blocks(&blocks, &req, &[], &names)
            .unwrap_err()
            .to_string()
            .contains("256 MiB free"));
        let req = MemRequest {
            blocks: vec![3],
            ..Default::default()
        };
        assert!(pick_blocks(&blocks, &req, &[], &names)
            .unwrap_err()
            .to_string()
            .contains("enclave #9"));
        let req = MemRequest {
            blocks: vec![99],
            ..Default::default()
        };
        assert!(matches!(
            pick_blocks(&blocks, &req, &[], &names).unwrap_err(),
            AllocError::Invalid(_)
        ));
    }

    #[test]
    fn host_share_defaults() {
        let cores = vec![core(0, 0, Ownership::Free), core(1, 0, Ownership::Free)];
        let blocks: Vec<_> = (0..64).map(|i| block(i, 0, Ownership::Free)).collect();
        let (hc, hb) = host_share(&cores, &blocks, None, None).unwrap();
        assert_eq!(hc, vec![0]);
        assert_eq!(hb.len(), 16, "25% of 8 GiB is 2 GiB = 16 blocks");
        assert!(host_share(&cores, &blocks, Some(&[7]), None).is_err());
    }
}
