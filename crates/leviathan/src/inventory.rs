//! The node's resources, read from sysfs at start.

use std::path::Path;

use hobbes_proto::model::{BlockId, CoreId, CoreRecord, MemBlockRecord, Ownership};

use crate::config::parse_cpu_list;

const SYS_CPU: &str = "/sys/devices/system/cpu";
const SYS_NODE: &str = "/sys/devices/system/node";
const SYS_MEMORY: &str = "/sys/devices/system/memory";
/// Block size used when the kernel exposes no memory blocks (some VMs).
const SYNTHETIC_BLOCK: u64 = 128 << 20;

/// What [`scan`] found: every online core and online memory block of the node,
/// all still [`Ownership::Free`]. The daemon scans at every start (an
/// unprivileged one keeps only the cores its affinity allows), but writes the
/// cores and blocks into the NIS only on the first start in a state directory,
/// after [`crate::resources::host_share`] picked the host's share; a restart
/// keeps the records already there.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// One record per online CPU (`/sys/devices/system/cpu/online`), in id
    /// order, with its NUMA node, package and core id from sysfs (0, 0 and the
    /// CPU id where sysfs does not say).
    pub cores: Vec<CoreRecord>,
    /// The online memory blocks (`/sys/devices/system/memory/memoryN`), in id
    /// order; `base` and `size` in bytes, `size` being the kernel's block size
    /// (often 128 MiB). The unit in which enclaves get memory.
    pub blocks: Vec<MemBlockRecord>,
    /// True when memory blocks were synthesised from MemTotal.
    pub synthetic_blocks: bool,
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// NUMA node of each online CPU and memory block, from /sys/devices/system/node.
fn numa_nodes() -> Vec<(u32, Vec<CoreId>, Vec<BlockId>)> {
    let mut nodes = Vec::new();
    let Ok(dir) = std::fs::read_dir(SYS_NODE) else {
        return nodes;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(id) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cpus = read(entry.path().join("cpulist"))
            .and_then(|l| parse_cpu_list(&l).ok())
            .unwrap_or_default();
        let blocks = std::fs::read_dir(entry.path())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_prefix("memory")
                            .and_then(|n| n.parse().ok())
                    })
                    .collect()
            })
            .unwrap_or_default();
        nodes.push((id, cpus, blocks));
    }
    nodes.sort_by_key(|n| n.0);
    nodes
}

/// Read the node's cores and memory blocks from sysfs (NUMA nodes from
/// `/sys/devices/system/node`; node 0 for anything no node lists). Where the
/// kernel exposes no memory blocks (some VMs), the memory is cut into 128 MiB
/// blocks from `MemTotal` on NUMA node 0 and `synthetic_blocks` is set. Errors
/// only when `/sys/devices/system/cpu/online` is unreadable or malformed, or
/// when blocks must be synthesised and `/proc/meminfo` has no `MemTotal`.
/// Called once by the daemon at start.
pub fn scan() -> anyhow::Result<Inventory> {
    let nodes = numa_nodes();
    let node_of_cpu = |c: CoreId| {
        nodes
            .iter()
            .find(|n| n.1.contains(&c))
            .map(|n| n.0)
            .unwrap_or(0)
    };
    let node_of_block = |b: BlockId| {
        nodes
            .iter()
            .find(|n| n.2.contains(&b))
            .map(|n| n.0)
            .unwrap_or(0)
    };

    let online = read(format!("{SYS_CPU}/online"))
        .ok_or_else(|| anyhow::anyhow!("cannot read {SYS_CPU}/online"))?;
    let online = parse_cpu_list(&online).map_err(|e| anyhow::anyhow!("{SYS_CPU}/online: {e}"))?;
    let cores = online
        .into_iter()
        .map(|id| {
            let topo = format!("{SYS_CPU}/cpu{id}/topology");
            CoreRecord {
                id,
                numa_node: node_of_cpu(id),
                package: read(format!("{topo}/physical_package_id"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                core: read(format!("{topo}/core_id"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(id),
                ownership: Ownership::Free,
                shared_by: vec![],
                rev: 0,
            }
        })
        .collect();

    let mut blocks = Vec::new();
    let block_size = read(format!("{SYS_MEMORY}/block_size_bytes"))
        .and_then(|v| u64::from_str_radix(&v, 16).ok());
    if let (Some(size), Ok(dir)) = (block_size, std::fs::read_dir(SYS_MEMORY)) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(id) = name
                .strip_prefix("memory")
                .and_then(|n| n.parse::<BlockId>().ok())
            else {
                continue;
            };
            if read(entry.path().join("state")).as_deref() != Some("online") {
                continue;
            }
            let index = read(entry.path().join("phys_index"))
                .and_then(|v| u64::from_str_radix(&v, 16).ok())
                .unwrap_or(id as u64);
            blocks.push(MemBlockRecord {
                id,
                base: index * size,
                size,
                numa_node: node_of_block(id),
                ownership: Ownership::Free,
                rev: 0,
            });
        }
    }
    let synthetic_blocks = blocks.is_empty();
    if synthetic_blocks {
        let total = mem_total()
            .ok_or_else(|| anyhow::anyhow!("cannot read MemTotal from /proc/meminfo"))?;
        for id in 0..(total / SYNTHETIC_BLOCK) as BlockId {
            blocks.push(MemBlockRecord {
                id,
                base: id as u64 * SYNTHETIC_BLOCK,
                size: SYNTHETIC_BLOCK,
                numa_node: 0,
                ownership: Ownership::Free,
                rev: 0,
            });
        }
    }
    blocks.sort_by_key(|b| b.id);
    Ok(Inventory {
        cores,
        blocks,
        synthetic_blocks,
    })
}

/// MemTotal in bytes.
pub fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_node_has_cores_and_memory() {
        let inv = super::scan().unwrap();
        assert!(!inv.cores.is_empty());
        assert!(!inv.blocks.is_empty());
        let total: u64 = inv.blocks.iter().map(|b| b.size).sum();
        assert!(total > 0);
    }
}
