//! Node-wide views: `status`, `list-cpus`, `list-memory`.

use anyhow::Result;
use hobbes_client::Client;
use hobbes_proto::model::{CgroupMode, Ownership};
use hobbes_proto::msg::EnclaveRef;

use super::enclave::enclave_table;
use crate::human::{self, Names};
use crate::table::Table;
use crate::Ctx;

pub fn status(ctx: &Ctx, client: &mut Client) -> Result<i32> {
    let st = client.status()?;
    if ctx.json {
        ctx.print_json(&st)?;
        return Ok(0);
    }
    let h = &st.header;
    let cgroups = match h.cgroup_mode {
        CgroupMode::Legacy => "v1 (legacy controllers)",
        CgroupMode::Unified => "v2 (unified)",
        CgroupMode::None => "none usable",
    };
    println!(
        "node        {} (leviathan pid {}, generation {}, up {})",
        h.hostname,
        h.daemon_pid,
        h.generation,
        human::age(h.started_ms).trim_end_matches(" ago")
    );
    println!("state       {} (socket {})", st.state_dir, h.socket);
    println!("cgroups     {cgroups}");
    if h.privileged {
        println!("privileges  root: enclaves get cpusets, memory limits and namespaces");
    } else {
        println!("privileges  NONE: leviathan runs unprivileged, so native enclaves are degraded");
        println!("            to CPU affinity + a process group: they are NOT isolated");
        println!("            (no cpuset, no memory limit, no namespaces). Run leviathan as root.");
    }
    println!(
        "cores       {} total: {} host, {} free, {} allocated",
        st.cores_total, st.cores_host, st.cores_free, st.cores_allocated
    );
    println!(
        "memory      {} total: {} host, {} free, {} allocated",
        human::bytes(st.mem_total),
        human::bytes(st.mem_host),
        human::bytes(st.mem_free),
        human::bytes(st.mem_allocated)
    );
    if let (Some(managed), Some(node_cores)) = (&st.managed_cores, &st.node_cores) {
        println!(
            "managing    part of the node: cores {managed} of {node_cores}, {} of {} (leviathan --cpus/--memory)",
            human::bytes(st.mem_total),
            human::bytes(st.node_mem.unwrap_or(0))
        );
    }
    match (&h.segment_files.dir, &h.segment_files.fallback) {
        (Some(dir), _) => println!(
            "segments    huge pages: XEMEM memory of 2 MiB and more is made in the tmpfs {dir} (huge=within_size)"
        ),
        (None, Some(why)) => println!("segments    {why}: 4 KiB pages unless the node enables shmem THP"),
        (None, None) => println!("segments    memfds (a leviathan from before huge-page segments)"),
    }
    if let Some(vm) = &h.vm_support {
        println!("vms         {vm}");
    }
    if h.segment_files.hugetlb_reserved > 0 {
        println!(
            "            {} hugetlb pages reserved by leviathan while it runs (taken first)",
            h.segment_files.hugetlb_reserved
        );
    }
    println!(
        "heartbeat   every {} ms, timeout {} ms",
        h.heartbeat_interval_ms, h.heartbeat_timeout_ms
    );
    println!("apps        {} running", st.apps_running);
    println!();
    // Status carries no app list; ask for it so the table can count apps.
    let apps = client.list_apps(None)?;
    enclave_table(&st.enclaves, &apps).print_or("no enclaves");
    Ok(0)
}

pub fn list_segments(ctx: &Ctx, client: &mut Client) -> Result<i32> {
    let segments = client.xemem_list()?;
    if ctx.json {
        ctx.print_json(&segments)?;
        return Ok(0);
    }
    let names = Names::new(&client.list_enclaves()?);
    let mut t = Table::new(&[
        "SEGID",
        "NAME",
        "SIZE",
        "PAGES",
        "MODE",
        "OWNER",
        "ATTACHMENTS",
    ]);
    for s in &segments {
        let r = &s.record;
        let owner = match r.owner_app {
            Some(app) => format!(
                "{} app {app} pid {}",
                names.of(r.owner_enclave),
                r.owner_pid
            ),
            None => format!("{} pid {}", names.of(r.owner_enclave), r.owner_pid),
        };
        let attachers: Vec<String> = s.attachers.iter().map(|p| p.to_string()).collect();
        // A composite segment's attachments map a pool its versions share:
        // the daemon counts holds on the version instead (docs/xemem.md).
        let (pages, unit) = match &r.composite {
            Some(c) => (
                format!("composite, {} extent{}", c.extents, plural(c.extents)),
                format!(" hold{}", plural(u64::from(s.attachments))),
            ),
            None => (r.page_kind.to_string(), String::new()),
        };
        t.row(vec![
            r.segid.to_string(),
            r.name.clone().unwrap_or_else(|| "-".into()),
            human::bytes(r.size),
            pages,
            format!("{:o}", r.mode),
            owner,
            if attachers.is_empty() {
                format!("0{unit}")
            } else {
                format!("{}{unit} (pids {})", s.attachments, attachers.join(","))
            },
        ]);
    }
    t.print_or("no segments");
    Ok(0)
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

pub fn list_cpus(ctx: &Ctx, client: &mut Client) -> Result<i32> {
    let cores = client.list_cores()?;
    if ctx.json {
        ctx.print_json(&cores)?;
        return Ok(0);
    }
    let names = Names::new(&client.list_enclaves()?);
    let mut t = Table::new(&["ID", "NUMA", "PACKAGE", "CORE", "OWNER", "SHARED-BY"]);
    for c in &cores {
        let shared_by: Vec<String> = c.shared_by.iter().map(|&e| names.of(e)).collect();
        t.row(vec![
            c.id.to_string(),
            c.numa_node.to_string(),
            c.package.to_string(),
            c.core.to_string(),
            names.owner(c.ownership),
            if shared_by.is_empty() {
                "-".into()
            } else {
                shared_by.join(",")
            },
        ]);
    }
    print!("{t}");
    Ok(0)
}

pub fn list_memory(ctx: &Ctx, client: &mut Client, owner: Option<String>) -> Result<i32> {
    let mut blocks = client.list_memory()?;
    let enclaves = client.list_enclaves()?;
    if let Some(owner) = owner {
        let want = match owner.as_str() {
            "host" => Ownership::Host,
            "free" => Ownership::Free,
            other => {
                // Accept a name or an id, but only of an enclave that exists.
                let id = match EnclaveRef::parse(other) {
                    EnclaveRef::Id(id) => enclaves.iter().find(|e| e.id == id),
                    EnclaveRef::Name(n) => enclaves.iter().find(|e| e.name == n),
                }
                .map(|e| e.id)
                .ok_or_else(|| {
                    anyhow::anyhow!("no enclave {other:?}: --owner takes free, host or an enclave")
                })?;
                Ownership::Allocated(id)
            }
        };
        blocks.retain(|b| b.ownership == want);
    }
    if ctx.json {
        ctx.print_json(&blocks)?;
        return Ok(0);
    }
    let names = Names::new(&enclaves);
    let mut t = Table::new(&["ID", "BASE", "SIZE", "NUMA", "OWNER"]);
    let (mut host, mut free, mut allocated) = (0u64, 0u64, 0u64);
    for b in &blocks {
        match b.ownership {
            Ownership::Host => host += b.size,
            Ownership::Free => free += b.size,
            Ownership::Allocated(_) => allocated += b.size,
        }
        t.row(vec![
            b.id.to_string(),
            format!("{:#x}", b.base),
            human::bytes(b.size),
            b.numa_node.to_string(),
            names.owner(b.ownership),
        ]);
    }
    print!("{t}");
    println!(
        "{} blocks, {}: {} host, {} free, {} allocated",
        blocks.len(),
        human::bytes(host + free + allocated),
        human::bytes(host),
        human::bytes(free),
        human::bytes(allocated)
    );
    Ok(0)
}
