//! `hobbes-bench vm`: VM enclaves against raw QEMU, same image, same
//! accelerator, same core, same cgroups, same run.
//!
//! * create -> first app ran: `hobbes create-enclave` of a VM and a launch
//!   of `true` to its end, against QEMU started directly (`kind_vm::vm::Vm`,
//!   what the monitor runs, without the daemon, the monitor process or the
//!   control link) booting the same image to the same point: the guest agent
//!   ready and `true` run once. Alternating, median of `--reps`.
//! * control round trip: a ping through the enclave's agent (client ->
//!   enclave socket -> monitor -> virtio-serial -> guest agent -> back),
//!   against a bare echo over the same virtio-serial channel (the guest
//!   agent's echo mode, `hobbes.echo=1`: every byte straight back).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hobbes_client::proto::model::{EnclaveKind, ExitStatus};
use hobbes_client::proto::msg::{EnclaveRef, LaunchSpec};
use hobbes_client::proto::spec::{CpuRequest, EnclaveSpec, MemRequest, VmAccel};
use hobbes_client::EnclaveConn;
use kind_vm::vm::{Vm, VmConfig};

use crate::{header, median, row, BenchDaemon};

/// What `hobbes-bench vm` takes.
pub struct Opts {
    reps: usize,
    pings: usize,
    memory_mib: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            reps: 5,
            pings: 200,
            memory_mib: 512,
        }
    }
}

impl Opts {
    /// `--reps N`, `--pings N`, `--memory MIB`.
    pub fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut num = |what: &str| -> Result<u64> {
                it.next()
                    .with_context(|| format!("{what} needs a value"))?
                    .parse()
                    .with_context(|| format!("{what} takes a number"))
            };
            match a.as_str() {
                "--reps" => o.reps = num("--reps")?.max(1) as usize,
                "--pings" => o.pings = num("--pings")?.max(10) as usize,
                "--memory" => o.memory_mib = num("--memory")?,
                other => bail!("vm: unknown option {other:?} (--reps N, --pings N, --memory MIB)"),
            }
        }
        Ok(o)
    }
}

fn image_dir() -> PathBuf {
    std::env::var_os(kind_vm::IMAGE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(kind_vm::DEFAULT_IMAGE_DIR))
}

/// The cgroups the raw QEMU runs in: siblings of the enclave's on cgroup v1
/// (the same core, a memory limit of the same size); none elsewhere (its
/// vCPU is still pinned to the core).
struct RawCgroups(Vec<PathBuf>);

impl RawCgroups {
    fn make(core: u32, mem_bytes: u64) -> RawCgroups {
        let cpuset = PathBuf::from("/sys/fs/cgroup/cpuset/hobbes/vmraw");
        let memory = PathBuf::from("/sys/fs/cgroup/memory/hobbes-vmraw");
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&cpuset)?;
            std::fs::write(cpuset.join("cpuset.cpus"), core.to_string())?;
            std::fs::write(cpuset.join("cpuset.mems"), "0")?;
            std::fs::create_dir_all(&memory)?;
            std::fs::write(memory.join("memory.limit_in_bytes"), mem_bytes.to_string())?;
            Ok(())
        })();
        match made {
            Ok(()) => RawCgroups(vec![cpuset, memory]),
            Err(e) => {
                println!("(raw QEMU without cgroups: {e}; its vCPU is pinned all the same)");
                let _ = std::fs::remove_dir(&cpuset);
                let _ = std::fs::remove_dir(&memory);
                RawCgroups(Vec::new())
            }
        }
    }
}

impl Drop for RawCgroups {
    fn drop(&mut self) {
        // QEMU is reaped, but virtiofsd's sandboxed child leaves a moment
        // later (its parent-death signal): kill what is left, retry a while.
        for dir in &self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill takes plain integers.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The raw side's VM: what the enclave's monitor would start.
fn raw_config(
    o: &Opts,
    dir: &std::path::Path,
    cgroups: &RawCgroups,
    echo: bool,
) -> Result<VmConfig> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let accel = kind_vm::choose_accel(VmAccel::Auto, &cpuinfo, kvm).map_err(anyhow::Error::msg)?;
    let image = image_dir();
    Ok(VmConfig {
        name: "raw".into(),
        dir: dir.to_path_buf(),
        cores: vec![1],
        guest_bytes: kind_vm::guest_ram_bytes(o.memory_mib << 20).map_err(anyhow::Error::msg)?,
        numa_nodes: vec![0],
        accel,
        kernel: image.join("vmlinuz"),
        initrd: image.join("initrd.img"),
        cmdline: if echo {
            format!("{} hobbes.echo=1", kind_vm::BASE_CMDLINE)
        } else {
            kind_vm::BASE_CMDLINE.to_string()
        },
        host_files: true,
        shares: Vec::new(),
        cgroups: cgroups.0.clone(),
        boot_timeout: Duration::from_secs(300),
        echo,
    })
}

/// Raw QEMU booted to its agent's ready, `true` run once: ms.
fn raw_boot(o: &Opts, cgroups: &RawCgroups) -> Result<f64> {
    let dir = tempfile::Builder::new()
        .prefix("hobbes-bench-vm-")
        .tempdir()?;
    let cfg = raw_config(o, dir.path(), cgroups, false)?;
    let t = Instant::now();
    let mut vm = Vm::start(&cfg)?;
    vm.serve_link()?;
    let status = vm.run(
        1,
        &["true".to_string()],
        None,
        std::io::sink(),
        std::io::sink(),
    )?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if status != ExitStatus::Code(0) {
        bail!("`true` in the raw VM ended with {status}");
    }
    Ok(ms)
}

/// A bare echo over the guest's virtio-serial port: round trips of a
/// ping-sized message, µs.
fn raw_echo(o: &Opts, cgroups: &RawCgroups, msg_len: usize) -> Result<Vec<f64>> {
    let dir = tempfile::Builder::new()
        .prefix("hobbes-bench-vm-")
        .tempdir()?;
    let cfg = raw_config(o, dir.path(), cgroups, true)?;
    let mut vm = Vm::start(&cfg)?;
    let mut port = vm.guest_reader.take().context("the echo VM's channel")?;
    let msg = vec![b'p'; msg_len];
    let mut back = vec![0u8; msg_len];
    // The first round trip waits for the boot (the bytes wait in the socket
    // until the guest opens its port).
    port.set_read_timeout(Some(Duration::from_secs(300)))?;
    port.write_all(&msg)?;
    port.read_exact(&mut back)?;
    let mut rtts = Vec::with_capacity(o.pings);
    for _ in 0..o.pings + 10 {
        let t = Instant::now();
        port.write_all(&msg)?;
        port.read_exact(&mut back)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(vm);
    Ok(rtts.split_off(10))
}

fn vm_spec(o: &Opts) -> EnclaveSpec {
    EnclaveSpec {
        name: "vmbench".into(),
        kind: EnclaveKind::Vm,
        shared: false,
        host_ipc: false,
        cpus: CpuRequest {
            ids: vec![1],
            ..Default::default()
        },
        memory: MemRequest {
            size_mib: o.memory_mib,
            ..Default::default()
        },
        vm: None,
    }
}

/// The bench (inside `with_daemon`).
pub fn bench(d: &BenchDaemon, o: &Opts) -> Result<()> {
    if !d.privileged() {
        println!("\n== vm: SKIP (needs root: cgroups, virtiofsd)");
        return Ok(());
    }
    if crate::online_cores() < 2 {
        println!("\n== vm: SKIP (needs 2 cores: one for the host, one for the VM)");
        return Ok(());
    }
    if !image_dir().join("image.json").exists() {
        println!(
            "\n== vm: SKIP (no VM image in {}: scripts/vm-image.sh)",
            image_dir().display()
        );
        return Ok(());
    }
    let mut c = d.client()?;
    // Made for each raw run only: a cpuset on core 1 beside an enclave's
    // would keep the enclave from making core 1 exclusive.
    let raw_cg = || RawCgroups::make(1, o.memory_mib << 20);
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    let mut rtts = Vec::new();
    for rep in 0..o.reps {
        let t = Instant::now();
        let e = c.create_enclave(vm_spec(o))?;
        let rec = c.launch_streaming(
            LaunchSpec {
                enclave: EnclaveRef::Name("vmbench".into()),
                name: None,
                argv: vec!["true".into()],
                env: vec![],
                cwd: None,
                stream: true,
            },
            |_| {},
            |_, _| {},
        )?;
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        if rec.exit != Some(ExitStatus::Code(0)) {
            bail!("`true` in the VM enclave ended with {:?}", rec.exit);
        }
        if rep == 0 {
            let mut conn = EnclaveConn::to_enclave(&e)?;
            for i in 0..o.pings + 10 {
                let (_, rtt) = conn.ping()?;
                if i >= 10 {
                    rtts.push(rtt.as_secs_f64() * 1e6);
                }
            }
        }
        c.destroy_enclave(EnclaveRef::Name("vmbench".into()))?;
        raw.push(raw_boot(o, &raw_cg())?);
    }
    // The agent's ping frame is about this long; the echo moves as many bytes.
    let ping_len = hobbes_client::proto::frame::encode(&vm_guest_proto::ToGuest::Ping { seq: 1 })
        .map(|f| f.len())
        .unwrap_or(32);
    let echo = raw_echo(o, &raw_cg(), ping_len)?;
    header(&format!(
        "vm: VM enclaves vs raw QEMU (same image, accelerator, core; median of {} / {} pings)",
        o.reps, o.pings
    ));
    row(
        "create -> first app ran vs raw QEMU boot + first app",
        median(ours),
        median(raw),
        "ms",
        "target <= 1.2x",
    );
    row(
        "control round trip via the agent vs bare echo",
        median(rtts),
        median(echo),
        "us",
        "target <= 1.5x",
    );
    Ok(())
}
