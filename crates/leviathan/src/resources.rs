//! Core and memory allocation: pure functions over the NIS records, so the
//! rules (no over-commit, NUMA preference, shared vs exclusive) are testable
//! without a daemon.

use std::collections::BTreeMap;

use hobbes_proto::model::{BlockId, CoreId, CoreRecord, EnclaveId, MemBlockRecord, Ownership};
use hobbes_proto::spec::{CpuRequest, MemRequest};

use crate::config::{format_cpu_list, ManagedMemory};

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

/// The cores and memory blocks a daemon manages, of the node's online ones
/// (`cores` and `blocks`, the inventory): `cpus` (`--cpus`; `None`: every
/// core) and `memory` (`--memory` or `--memory-blocks`; `None`: every
/// block). [`ManagedMemory::Mib`] takes whole blocks, enough to cover the
/// size, from the highest-numbered blocks on the NUMA nodes of the managed
/// cores (any node's when those nodes have no memory): the host's share
/// ([`host_share`]) comes from the lowest ones, and low memory is where the
/// kernel and early boot allocations sit. Errors name the core or block that
/// is not there, or the memory that is missing; nothing is chosen then.
pub fn managed_share(
    cores: &[CoreRecord],
    blocks: &[MemBlockRecord],
    cpus: Option<&[CoreId]>,
    memory: Option<&ManagedMemory>,
) -> anyhow::Result<(Vec<CoreRecord>, Vec<MemBlockRecord>)> {
    let online: Vec<CoreId> = cores.iter().map(|c| c.id).collect();
    let cores: Vec<CoreRecord> = match cpus {
        None => cores.to_vec(),
        Some(list) => {
            anyhow::ensure!(
                !list.is_empty(),
                "--cpus names no core: give at least one (online cores: {})",
                format_cpu_list(&online)
            );
            for c in list {
                anyhow::ensure!(
                    online.contains(c),
                    "--cpus: core {c} is not online (online cores: {})",
                    format_cpu_list(&online)
                );
            }
            cores
                .iter()
                .filter(|c| list.contains(&c.id))
                .cloned()
                .collect()
        }
    };
    let present: Vec<BlockId> = blocks.iter().map(|b| b.id).collect();
    let blocks: Vec<MemBlockRecord> = match memory {
        None => blocks.to_vec(),
        Some(ManagedMemory::Blocks(list)) => {
            anyhow::ensure!(
                !list.is_empty(),
                "--memory-blocks names no block: give at least one (online blocks: {})",
                format_cpu_list(&present)
            );
            for b in list {
                anyhow::ensure!(
                    present.contains(b),
                    "--memory-blocks: memory block {b} is not present or not online (online blocks: {}, /sys/devices/system/memory)",
                    format_cpu_list(&present)
                );
            }
            blocks
                .iter()
                .filter(|b| list.contains(&b.id))
                .cloned()
                .collect()
        }
        Some(ManagedMemory::Mib(mib)) => {
            let mut nodes: Vec<u32> = cores.iter().map(|c| c.numa_node).collect();
            nodes.sort_unstable();
            nodes.dedup();
            let mut candidates: Vec<&MemBlockRecord> = blocks
                .iter()
                .filter(|b| nodes.contains(&b.numa_node))
                .collect();
            if candidates.is_empty() {
                candidates = blocks.iter().collect();
            }
            candidates.sort_by_key(|b| std::cmp::Reverse(b.id));
            let want = mib.saturating_mul(1 << 20);
            let mut got = 0u64;
            let mut picked = Vec::new();
            for b in candidates.iter() {
                if got >= want {
                    break;
                }
                picked.push((*b).clone());
                got += b.size;
            }
            anyhow::ensure!(
                got >= want,
                "--memory {mib} MiB is more than the {} MiB of memory blocks on NUMA node {} of the managed cores",
                candidates.iter().map(|b| b.size).sum::<u64>() >> 20,
                nodes
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            picked.sort_by_key(|b| b.id);
            picked
        }
    };
    Ok((cores, blocks))
}

/// Choose which of the managed cores and blocks the host keeps, given the
/// configuration: `host_cores` (default the first managed core) must be
/// managed ones; `host_memory_mib` (default max(1 GiB, 25%), or 25% of the
/// managed memory when the daemon manages a `subset`, so that a small subset
/// is not swallowed whole) is taken from the lowest blocks and must leave at
/// least one block to enclaves.
pub fn host_share(
    cores: &[CoreRecord],
    blocks: &[MemBlockRecord],
    host_cores: Option<&[CoreId]>,
    host_memory_mib: Option<u64>,
    subset: bool,
) -> anyhow::Result<(Vec<CoreId>, Vec<BlockId>)> {
    let all: Vec<CoreId> = cores.iter().map(|c| c.id).collect();
    let host: Vec<CoreId> = match host_cores {
        Some(list) => {
            for c in list {
                if subset {
                    anyhow::ensure!(
                        all.contains(c),
                        "host core {c} is not one of the managed cores ({}): --host-cores must be within --cpus",
                        format_cpu_list(&all)
                    );
                } else {
                    anyhow::ensure!(
                        all.contains(c),
                        "host core {c} does not exist (cores: {})",
                        format_cpu_list(&all)
                    );
                }
            }
            list.to_vec()
        }
        None => all.first().copied().into_iter().collect(),
    };
    anyhow::ensure!(!host.is_empty(), "the host must keep at least one core");
    let total: u64 = blocks.iter().map(|b| b.size).sum();
    let keep = match (host_memory_mib, subset) {
        (Some(m), _) => m << 20,
        (None, true) => total / 4,
        (None, false) => (total / 4).max(1 << 30),
    };
    let of = if subset { "managed" } else { "node's" };
    anyhow::ensure!(
        keep < total,
        "host memory {} MiB is all of the {of} {} MiB",
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
    anyhow::ensure!(
        host_blocks.len() < blocks.len(),
        "host memory {} MiB takes every {of} memory block ({} of {} MiB): nothing is left for enclaves; give the host less (--host-memory){}",
        keep >> 20,
        blocks.len(),
        blocks.first().map_or(0, |b| b.size >> 20),
        if subset { " or manage more memory (--memory)" } else { "" }
    );
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
        let (hc, hb) = host_share(&cores, &blocks, None, None, false).unwrap();
        assert_eq!(hc, vec![0]);
        assert_eq!(hb.len(), 16, "25% of 8 GiB is 2 GiB = 16 blocks");
        assert!(host_share(&cores, &blocks, Some(&[7]), None, false).is_err());
        // 1 GiB at least, of the whole node.
        let (_, hb) = host_share(&cores, &blocks[..16], None, None, false).unwrap();
        assert_eq!(hb.len(), 8);
    }

    fn node(cores: u32, blocks: u32) -> (Vec<CoreRecord>, Vec<MemBlockRecord>) {
        // Two NUMA nodes: the first half of the cores and blocks on node 0.
        let cores = (0..cores)
            .map(|i| core(i, i / (cores / 2).max(1), Ownership::Free))
            .collect();
        let blocks = (0..blocks)
            .map(|i| block(i, i / (blocks / 2).max(1), Ownership::Free))
            .collect();
        (cores, blocks)
    }

    fn ids<T>(records: &[T], id: fn(&T) -> u32) -> Vec<u32> {
        records.iter().map(id).collect()
    }

    #[test]
    fn managed_share_keeps_the_named_cores_and_blocks() {
        let (cores, blocks) = node(16, 64);
        let (c, b) = managed_share(&cores, &blocks, None, None).unwrap();
        assert_eq!((c.len(), b.len()), (16, 64), "no subset: everything");
        let (c, b) = managed_share(
            &cores,
            &blocks,
            Some(&[4, 5, 6]),
            Some(&ManagedMemory::Blocks(vec![10, 11])),
        )
        .unwrap();
        assert_eq!(ids(&c, |c| c.id), vec![4, 5, 6]);
        assert_eq!(ids(&b, |b| b.id), vec![10, 11]);
    }

    #[test]
    fn managed_memory_comes_from_the_top_of_the_cores_numa_nodes_in_whole_blocks() {
        let (cores, blocks) = node(16, 64);
        // Cores 1-2 are on node 0 (blocks 0-31): 300 MiB is 3 blocks from the top.
        let (_, b) = managed_share(
            &cores,
            &blocks,
            Some(&[1, 2]),
            Some(&ManagedMemory::Mib(300)),
        )
        .unwrap();
        assert_eq!(ids(&b, |b| b.id), vec![29, 30, 31]);
        // Cores 9-10 are on node 1 (blocks 32-63).
        let (_, b) = managed_share(
            &cores,
            &blocks,
            Some(&[9, 10]),
            Some(&ManagedMemory::Mib(256)),
        )
        .unwrap();
        assert_eq!(ids(&b, |b| b.id), vec![62, 63]);
        // Every core: both nodes, the highest blocks.
        let (_, b) = managed_share(&cores, &blocks, None, Some(&ManagedMemory::Mib(128))).unwrap();
        assert_eq!(ids(&b, |b| b.id), vec![63]);
        let err = managed_share(&cores, &blocks, Some(&[1]), Some(&ManagedMemory::Mib(5000)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("5000 MiB is more than the 4096 MiB of memory blocks on NUMA node 0"),
            "{err}"
        );
    }

    #[test]
    fn managed_share_names_what_is_not_there() {
        let (cores, blocks) = node(2, 8);
        let err = |cpus: Option<&[CoreId]>, mem: Option<ManagedMemory>| {
            managed_share(&cores, &blocks, cpus, mem.as_ref())
                .unwrap_err()
                .to_string()
        };
        let e = err(Some(&[1, 5]), None);
        assert!(
            e.contains("core 5 is not online (online cores: 0-1)"),
            "{e}"
        );
        let e = err(Some(&[]), None);
        assert!(e.contains("--cpus names no core"), "{e}");
        let e = err(None, Some(ManagedMemory::Blocks(vec![3, 99])));
        assert!(
            e.contains("memory block 99 is not present or not online (online blocks: 0-7"),
            "{e}"
        );
        let e = err(None, Some(ManagedMemory::Blocks(vec![])));
        assert!(e.contains("--memory-blocks names no block"), "{e}");
    }

    #[test]
    fn host_share_of_a_subset_stays_within_it() {
        let (cores, blocks) = node(16, 64);
        let (c, b) = managed_share(
            &cores,
            &blocks,
            Some(&[4, 5, 6, 7]),
            Some(&ManagedMemory::Mib(2048)),
        )
        .unwrap();
        let (hc, hb) = host_share(&c, &b, None, None, true).unwrap();
        assert_eq!(hc, vec![4], "the first managed core");
        assert_eq!(
            hb,
            vec![16, 17, 18, 19],
            "25% of the managed 2 GiB, its lowest blocks"
        );
        let (_, hb) = host_share(&c, &b, None, Some(256), true).unwrap();
        assert_eq!(hb, vec![16, 17]);
        let e = host_share(&c, &b, Some(&[0]), None, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("host core 0 is not one of the managed cores (4-7): --host-cores must be within --cpus"),
            "{e}"
        );
        let e = host_share(&c, &b, None, Some(2048), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is all of the managed 2048 MiB"), "{e}");
        // One block managed: a quarter of it would take it whole.
        let one = &b[..1];
        let e = host_share(&c, one, None, None, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing is left for enclaves"), "{e}");
        let (_, hb) = host_share(&c, one, None, Some(0), true).unwrap();
        assert!(
            hb.is_empty(),
            "--host-memory 0 leaves the block to enclaves"
        );
    }
}
