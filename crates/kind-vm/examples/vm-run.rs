//! `vm-run`: boot the node's guest image without a daemon and run one
//! command in it as root, for the cgroup-v2 smoke run
//! (`scripts/vm-cgroup2-smoke.sh`) and for trying the image by hand.
//!
//! ```sh
//! cargo run -p kind-vm --example vm-run -- --cores 0-1 --memory 2048 \
//!     --share /srv/data:rw -- /bin/sh -c 'uname -r; ls /srv/data'
//! ```
//!
//! The guest sees the host's /usr read-only and each share at its path
//! (root only: virtiofsd). Prints the boot time on stderr; exits with the
//! command's exit code (128 + signal when killed).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use hobbes_kind::monitor::{parse_cpu_list, CpuList};
use hobbes_proto::model::ExitStatus;
use hobbes_proto::spec::VmAccel;
use kind_vm::vm::{parse_share, Vm, VmConfig};

#[derive(Parser)]
struct Args {
    /// Host cores, one vCPU pinned to each ("0-1").
    #[arg(long, value_parser = parse_cpu_list, default_value = "0")]
    cores: CpuList,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u64,
    /// auto, kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: String,
    /// The image directory (default: HOBBES_VM_IMAGE or /var/cache/hobbes/vm-image).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Appended to the kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// A host directory for the guest, PATH:ro or PATH:rw (repeatable).
    #[arg(long = "share")]
    shares: Vec<String>,
    /// The guest's working directory for the command.
    #[arg(long)]
    cwd: Option<String>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    argv: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let image = args
        .image
        .or_else(|| std::env::var_os(kind_vm::IMAGE_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(kind_vm::DEFAULT_IMAGE_DIR));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let accel = kind_vm::choose_accel(
        VmAccel::parse(&args.accel).map_err(anyhow::Error::msg)?,
        &cpuinfo,
        kvm,
    )
    .map_err(anyhow::Error::msg)?;
    let root = nix::unistd::geteuid().is_root();
    let dir = tempfile::Builder::new()
        .prefix("hobbes-vm-run-")
        .tempdir()?;
    let shares = args
        .shares
        .iter()
        .map(|s| parse_share(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !root && !shares.is_empty() {
        anyhow::bail!("shares need root (virtiofsd)");
    }
    let cmdline = format!("{} {}", kind_vm::BASE_CMDLINE, args.cmdline);
    let start = Instant::now();
    let mut vm = Vm::start(&VmConfig {
        name: "vm-run".into(),
        dir: dir.path().to_path_buf(),
        cores: args.cores.0.clone(),
        guest_bytes: (args.memory << 20) & !((2 << 20) - 1),
        numa_nodes: Vec::new(),
        accel,
        kernel: image.join("vmlinuz"),
        initrd: image.join("initrd.img"),
        cmdline: cmdline.trim().to_string(),
        host_files: root,
        shares,
        cgroups: Vec::new(),
        boot_timeout: Duration::from_secs(300),
        echo: false,
    })?;
    eprintln!(
        "vm-run: guest {} ready in {:.2} s on {}",
        vm.info.kernel,
        start.elapsed().as_secs_f64(),
        accel.as_str()
    );
    vm.serve_link()?;
    let status = vm.run(
        1,
        &args.argv,
        args.cwd.as_deref(),
        std::io::stdout(),
        std::io::stderr(),
    )?;
    drop(vm);
    // exit() runs no destructors: remove the VM's directory first.
    drop(dir);
    std::process::exit(match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    });
}
