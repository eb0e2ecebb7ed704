//! A daemon that manages part of the node (`--cpus`, `--memory`,
//! `--memory-blocks`), against a real node, as root: only the managed cores
//! and blocks are in its inventory, the host keeps the unmanaged cores, and
//! the subset is fixed with its state directory. See tests/common for the
//! harness (which restores the node, also when a test fails).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use hobbes_client::proto::model::{EnclaveState, Ownership};
use hobbes_client::proto::msg::ErrorCode;

/// The v1 host cpuset of a daemon started in the root cgroup.
const V1_HOST_CPUS: &str = "/sys/fs/cgroup/cpuset/hobbes/host/cpuset.cpus";

fn need_two_cores(test: &str) -> bool {
    if ncpus() < 2 {
        skip(
            test,
            "needs at least 2 cores (a managed one and an unmanaged one)",
        );
        return false;
    }
    true
}

/// Every online core, as a CPU list ("0-1").
fn online_cores() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .unwrap()
        .trim()
        .to_string()
}

/// Every online core but `but`, as a CPU list.
fn online_cores_but(but: u32) -> String {
    let mut ids = Vec::new();
    for part in online_cores().split(',') {
        match part.split_once('-') {
            Some((a, b)) => ids.extend(a.parse::<u32>().unwrap()..=b.parse().unwrap()),
            None => ids.push(part.parse().unwrap()),
        }
    }
    ids.retain(|c| *c != but);
    hobbes_client::proto::model::format_id_list(&ids)
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn a_one_core_subset_lists_only_its_core_runs_shared_enclaves_and_keeps_its_flags() {
    let t = "a_one_core_subset_lists_only_its_core_runs_shared_enclaves_and_keeps_its_flags";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let all = online_cores();
    let init_before = host_affinity_of(1);
    let flags = [
        "--cpus",
        "1",
        "--host-cores",
        "1",
        "--memory",
        "1G",
        "--host-memory",
        "256",
    ];
    let mut d = Daemon::start(&flags);
    let mut c = d.client();

    let cores = c.list_cores().unwrap();
    assert_eq!(
        cores
            .iter()
            .map(|c| (c.id, c.ownership))
            .collect::<Vec<_>>(),
        vec![(1, Ownership::Host)],
        "only the managed core, kept by the host"
    );
    let blocks = c.list_memory().unwrap();
    let bytes: u64 = blocks.iter().map(|b| b.size).sum();
    assert!(
        bytes >= 1 << 30 && bytes - (1 << 30) < blocks[0].size,
        "1 GiB in whole blocks, got {bytes} bytes"
    );
    let st = c.status().unwrap();
    assert_eq!(st.cores_total, 1);
    assert_eq!(st.managed_cores.as_deref(), Some("1"));
    assert_eq!(st.node_cores.as_deref(), Some(all.as_str()));
    assert!(st.node_mem.unwrap() > st.mem_total);

    if Path::new(V1_HOST_CPUS).exists() {
        assert_eq!(
            read_trimmed(V1_HOST_CPUS).as_deref(),
            Some(all.as_str()),
            "the host keeps its core of the subset and every unmanaged core"
        );
    }
    assert_eq!(
        host_affinity_of(1),
        init_before,
        "init is not squeezed onto the subset's host core"
    );

    // The host keeps the only core: shared enclaves only.
    let err = c
        .create_enclave(spec("excl", 1, 128, false))
        .expect_err("no free core in a one-core subset");
    assert_eq!(err.code(), Some(ErrorCode::Overcommit), "{err}");
    let e = c.create_enclave(spec("job", 1, 256, true)).unwrap();
    assert_eq!(e.state, EnclaveState::Running);
    assert_eq!(e.cores, vec![1]);
    assert!(
        e.mem_blocks
            .iter()
            .all(|b| blocks.iter().any(|m| m.id == *b)),
        "the enclave's memory comes from the managed blocks"
    );
    let (app, out, err) = run_in(
        &mut c,
        "job",
        &["grep", "Cpus_allowed_list", "/proc/self/status"],
    );
    assert_eq!(
        app.exit,
        Some(hobbes_client::proto::model::ExitStatus::Code(0)),
        "{err}"
    );
    assert_eq!(status_field(&out, "Cpus_allowed_list:"), "1");
    c.destroy_enclave(hobbes_client::proto::msg::EnclaveRef::Name("job".into()))
        .unwrap();
    drop(c);
    assert_eq!(d.stop(), Some(0));

    // Another subset on this state directory is refused, changing nothing.
    for other in [
        vec!["--cpus", "0", "--host-cores", "0", "--memory", "1G"],
        vec!["--cpus", "1", "--host-cores", "1"],
        vec![],
    ] {
        let out = Command::new(leviathan())
            .arg("--state-dir")
            .arg(d.state_dir())
            .args(&other)
            .output()
            .unwrap();
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{other:?} must be refused");
        assert!(
            msg.contains("was created to manage --cpus 1, --memory 1024"),
            "{other:?}: {msg}"
        );
        assert!(
            !Path::new("/sys/fs/cgroup/cpuset/hobbes").exists(),
            "a refused start makes no cgroup"
        );
        assert_eq!(host_affinity_of(1), init_before);
    }

    // The same flags restart it on its recorded inventory.
    d.spawn();
    let mut c = d.client();
    assert_eq!(
        c.list_cores()
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        vec![1]
    );
    let ids = |b: &[hobbes_client::proto::model::MemBlockRecord]| -> Vec<(u32, Ownership)> {
        b.iter().map(|b| (b.id, b.ownership)).collect()
    };
    assert_eq!(ids(&c.list_memory().unwrap()), ids(&blocks));
}

#[test]
fn an_exclusive_enclave_takes_a_managed_core_and_managed_memory_blocks() {
    let t = "an_exclusive_enclave_takes_a_managed_core_and_managed_memory_blocks";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    // The node's cores, the 8 highest online memory blocks: the host keeps
    // core 0 and 2 of the blocks.
    let d = {
        let node = lock_node();
        let mut ids: Vec<u32> = std::fs::read_dir("/sys/devices/system/memory")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let id = e
                    .file_name()
                    .to_str()?
                    .strip_prefix("memory")?
                    .parse()
                    .ok()?;
                (read_trimmed(&format!("{}/state", e.path().display())).as_deref()
                    == Some("online"))
                .then_some(id)
            })
            .collect();
        ids.sort_unstable();
        if ids.len() < 8 {
            skip(t, "needs 8 online memory blocks");
            return;
        }
        let list = ids[ids.len() - 8..]
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        Daemon::start_locked(
            node,
            &[
                "--memory-blocks",
                &list,
                "--host-memory",
                "256",
                "--cpus",
                "0-1",
            ],
        )
    };
    let mut c = d.client();
    let blocks = c.list_memory().unwrap();
    assert_eq!(blocks.len(), 8);
    assert_eq!(
        blocks
            .iter()
            .filter(|b| b.ownership == Ownership::Host)
            .count() as u64,
        (256u64 << 20).div_ceil(blocks[0].size),
        "the host's share is taken from the managed blocks"
    );
    let e = c.create_enclave(spec("excl", 1, 256, false)).unwrap();
    assert_eq!(e.cores, vec![1]);
    assert!(e
        .mem_blocks
        .iter()
        .all(|b| blocks.iter().any(|m| m.id == *b)));
    if Path::new(V1_HOST_CPUS).exists() {
        assert_eq!(
            read_trimmed(V1_HOST_CPUS),
            Some(online_cores_but(1)),
            "the host keeps every core but the enclave's"
        );
    }
    let (_, out, _) = run_in(
        &mut c,
        "excl",
        &["grep", "Cpus_allowed_list", "/proc/self/status"],
    );
    assert_eq!(status_field(&out, "Cpus_allowed_list:"), "1");
    let err = c
        .create_enclave(spec("big", 1, 2048, true))
        .expect_err("more than the managed memory");
    assert_eq!(err.code(), Some(ErrorCode::Overcommit), "{err}");
}
