//! Enclave lifecycle and resources: create, destroy, list, assign/revoke.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use hobbes_client::Client;
use hobbes_proto::model::{AppRecord, EnclaveRecord};
use hobbes_proto::msg::EnclaveRef;
use hobbes_proto::spec::{CpuRequest, EnclaveSpec, MemRequest, VmAccel, VmShare, VmSpec};

use crate::cli::{AssignCpusArgs, AssignMemoryArgs, CreateArgs};
use crate::human;
use crate::table::Table;
use crate::Ctx;

/// The spec from the XML file or the flags, checked before we connect so
/// mistakes are reported even with no daemon running.
fn spec_of(args: CreateArgs) -> Result<EnclaveSpec> {
    if let Some(path) = args.file {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return EnclaveSpec::from_xml(&text).map_err(|e| anyhow!("{}: {e}", path.display()));
    }
    let name = args
        .name
        .ok_or_else(|| anyhow!("give an enclave XML file, or --name with --cores and --memory"))?;
    let spec = EnclaveSpec {
        name,
        kind: args.kind,
        shared: args.shared,
        host_ipc: args.host_ipc,
        cpus: CpuRequest {
            count: args.cores.unwrap_or(0),
            ids: args.core_ids.map(|l| l.0).unwrap_or_default(),
            numa: args.numa,
        },
        memory: MemRequest {
            size_mib: args.memory.unwrap_or(0),
            blocks: args.blocks.map(|l| l.0).unwrap_or_default(),
            numa: args.numa,
        },
        vm: vm_settings(
            &args.kernel,
            &args.initrd,
            &args.cmdline,
            &args.accel,
            &args.shares,
        )?,
    };
    // Checked here first because the validator's hints speak XML, not flags.
    if spec.cpus.is_empty() {
        bail!("an enclave needs at least one core: give --cores N or --core-ids LIST");
    }
    if spec.memory.is_empty() {
        bail!("an enclave needs memory: give --memory MIB or --blocks LIST");
    }
    spec.validate()?;
    Ok(spec)
}

/// The VM flags as a [`VmSpec`]; `None` when none is given (the validator
/// refuses them on other kinds).
fn vm_settings(
    kernel: &Option<String>,
    initrd: &Option<String>,
    cmdline: &Option<String>,
    accel: &Option<String>,
    shares: &[String],
) -> Result<Option<VmSpec>> {
    if kernel.is_none()
        && initrd.is_none()
        && cmdline.is_none()
        && accel.is_none()
        && shares.is_empty()
    {
        return Ok(None);
    }
    let shares = shares
        .iter()
        .map(|s| match s.strip_suffix(":rw") {
            Some(path) => VmShare {
                path: path.to_string(),
                writable: true,
            },
            None => VmShare {
                path: s.strip_suffix(":ro").unwrap_or(s).to_string(),
                writable: false,
            },
        })
        .collect();
    Ok(Some(VmSpec {
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        cmdline: cmdline.clone(),
        accel: match accel {
            Some(a) => VmAccel::parse(a).map_err(|e| anyhow!("--accel: {e}"))?,
            None => VmAccel::Auto,
        },
        shares,
    }))
}

pub fn create(ctx: &Ctx, args: CreateArgs) -> Result<i32> {
    let spec = spec_of(args)?;
    let rec = ctx.connect()?.create_enclave(spec)?;
    if ctx.json {
        ctx.print_json(&rec)?;
    } else {
        println!("created {}", human::describe_enclave(&rec).join("\n"));
    }
    Ok(0)
}

pub fn destroy(ctx: &Ctx, enclave: &str) -> Result<i32> {
    ctx.connect()?.destroy_enclave(EnclaveRef::parse(enclave))?;
    if !ctx.json {
        println!("destroyed enclave {enclave}");
    }
    Ok(0)
}

pub fn list(ctx: &Ctx, client: &mut Client) -> Result<i32> {
    let enclaves = client.list_enclaves()?;
    if ctx.json {
        ctx.print_json(&enclaves)?;
        return Ok(0);
    }
    let apps = client.list_apps(None)?;
    enclave_table(&enclaves, &apps).print_or("no enclaves");
    Ok(0)
}

/// The enclaves table shared by `list-enclaves` and `status`.
pub(super) fn enclave_table(enclaves: &[EnclaveRecord], apps: &[AppRecord]) -> Table {
    let mut running: HashMap<u64, usize> = HashMap::new();
    for a in apps.iter().filter(|a| !a.state.is_final()) {
        *running.entry(a.enclave).or_default() += 1;
    }
    let mut header = vec![
        "ID",
        "NAME",
        "KIND",
        "STATE",
        "CORES",
        "MEMORY",
        "ISOLATION",
        "APPS",
        "CONTROL-PID",
    ];
    // The Slurm step (job.step[+component]@node) when any enclave serves one.
    let slurm = enclaves.iter().any(|e| e.slurm.is_some());
    if slurm {
        header.push("SLURM");
    }
    let mut t = Table::new(&header);
    for e in enclaves {
        let mut row = vec![
            e.id.to_string(),
            e.name.clone(),
            e.kind.to_string(),
            e.state.to_string(),
            human::id_list(&e.cores),
            human::bytes(e.mem_bytes),
            human::isolation_class(e).into(),
            running.get(&e.id).copied().unwrap_or(0).to_string(),
            e.control_pid.map_or("-".into(), |p| p.to_string()),
        ];
        if slurm {
            row.push(e.slurm.as_ref().map_or("-".into(), |s| s.to_string()));
        }
        t.row(row);
    }
    t
}

/// After a resource change: the record, briefly or as JSON.
fn print_resources(ctx: &Ctx, e: &EnclaveRecord) -> Result<i32> {
    if ctx.json {
        ctx.print_json(e)?;
    } else {
        println!(
            "enclave {} \"{}\": cores {}, memory {} (blocks {})",
            e.id,
            e.name,
            human::id_list(&e.cores),
            human::bytes(e.mem_bytes),
            human::id_list(&e.mem_blocks)
        );
    }
    Ok(0)
}

pub fn assign_cpus(ctx: &Ctx, args: AssignCpusArgs) -> Result<i32> {
    let cpus = CpuRequest {
        count: args.count.unwrap_or(0),
        ids: args.ids.map(|l| l.0).unwrap_or_default(),
        numa: args.numa,
    };
    let rec = ctx
        .connect()?
        .assign_cpus(EnclaveRef::parse(&args.enclave), cpus)?;
    print_resources(ctx, &rec)
}

pub fn revoke_cpus(ctx: &Ctx, enclave: &str, ids: Vec<u32>) -> Result<i32> {
    let rec = ctx
        .connect()?
        .revoke_cpus(EnclaveRef::parse(enclave), ids)?;
    print_resources(ctx, &rec)
}

pub fn assign_memory(ctx: &Ctx, args: AssignMemoryArgs) -> Result<i32> {
    let memory = MemRequest {
        size_mib: args.size.unwrap_or(0),
        blocks: args.blocks.map(|l| l.0).unwrap_or_default(),
        numa: args.numa,
    };
    let rec = ctx
        .connect()?
        .assign_memory(EnclaveRef::parse(&args.enclave), memory)?;
    print_resources(ctx, &rec)
}

pub fn revoke_memory(ctx: &Ctx, enclave: &str, blocks: Vec<u32>) -> Result<i32> {
    let rec = ctx
        .connect()?
        .revoke_memory(EnclaveRef::parse(enclave), blocks)?;
    print_resources(ctx, &rec)
}
