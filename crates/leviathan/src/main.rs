//! `leviathan [FLAGS]` runs the daemon; `leviathan cleanup` recovers a node after
//! a daemon was killed for good; `leviathan enclave-init` is the native enclave
//! control process and `leviathan lwk-monitor` an LWK enclave's monitor (both
//! started by the daemon, not by hand).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use leviathan::config::{
    managed_memory, parse_cpu_list, parse_size_mib, Config, FileConfig, OnCrash,
};

#[derive(Parser, Debug)]
#[command(
    name = "leviathan",
    version,
    about = "Hobbes node manager: partitions this node into enclaves"
)]
struct Cli {
    /// State directory (socket, pid file, Node Information Service).
    #[arg(long, env = "HOBBES_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// TOML configuration file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Cores this daemon manages, as a CPU list ("1", "4-15"); only they are
    /// in its inventory. Default: every online core. Fixed when the state
    /// directory is created.
    #[arg(long, value_parser = cpu_list, value_name = "LIST")]
    cpus: Option<CpuList>,
    /// Memory this daemon manages, in MiB or with a suffix ("2048", "2G"):
    /// whole memory blocks, the highest-numbered ones on the NUMA nodes of
    /// the managed cores. Default: all of it.
    #[arg(long, value_parser = parse_size_mib, value_name = "SIZE", conflicts_with = "memory_blocks")]
    memory: Option<u64>,
    /// Memory blocks this daemon manages, as `hobbes list-memory` numbers
    /// them ("96-127"): for daemons sharing a node with disjoint memory.
    #[arg(long, value_parser = cpu_list, value_name = "LIST")]
    memory_blocks: Option<CpuList>,
    /// Cores the host keeps, as a CPU list ("0", "0-1,4"), among the managed
    /// ones. Default: the first managed core.
    #[arg(long, value_parser = cpu_list)]
    host_cores: Option<CpuList>,
    /// Memory the host keeps, in MiB. Default: max(1 GiB, 25%); 25% of the
    /// managed memory with --cpus, --memory or --memory-blocks.
    #[arg(long)]
    host_memory: Option<u64>,
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    #[arg(long)]
    heartbeat_timeout_ms: Option<u64>,
    /// Reclaim a crashed enclave's resources, or hold them for inspection.
    #[arg(long, value_enum)]
    on_crash: Option<OnCrash>,
    /// Run without root features (no cgroups or namespaces), even as root.
    #[arg(long)]
    unprivileged: bool,
    /// Leave enclaves running when the daemon stops (a restart reattaches them).
    #[arg(long)]
    keep_enclaves: bool,
    /// Set shmem transparent huge pages to "advise" while running (XEMEM huge
    /// pages); the previous setting is restored at a clean exit.
    #[arg(long)]
    shmem_thp: bool,
    /// Slurm confines this node's jobs in cgroups of its own
    /// (TaskPlugin=task/cgroup): enclave cores are not cpu-exclusive, and a
    /// Slurm step's enclave takes cores of the step's allocation and nests in
    /// the step's cgroups (cgroup v1; docs/slurm.md).
    #[arg(long)]
    slurm_cgroups: bool,
    /// Reserve N more hugetlb pages (vm.nr_hugepages) while running, for XEMEM
    /// segments; given back at a clean exit (or by `leviathan cleanup`).
    #[arg(long, value_name = "N")]
    hugepages: Option<u64>,
    /// Close a client connection that sends no request for this many seconds
    /// (default 300; clients reconnect transparently).
    #[arg(long)]
    client_idle_timeout_s: Option<u64>,
    /// A request frame must arrive whole this many ms after its first byte (default 10000).
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Connections one user may hold at once (default 64); root has its own allowance.
    #[arg(long)]
    max_clients_per_uid: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Kill the enclaves of a dead daemon, restore the host's cores, remove the state directory.
    Cleanup {
        /// Keep the state directory (NIS, logs).
        #[arg(long)]
        keep_state: bool,
        /// Also kill and remove every other enclave cgroup on the node (enclaves
        /// whose daemon and state directory are gone). Refused while a daemon runs.
        #[arg(long)]
        orphans: bool,
    },
    /// Print the Node Information Service as JSON, read directly (no daemon needed).
    NisDump {
        /// NIS directory (default: $HOBBES_NIS, else <state-dir>/nis).
        #[arg(long)]
        nis: Option<PathBuf>,
        /// Then keep a read transaction open this long (diagnostics).
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
    /// The enclave control process (started by leviathan).
    #[command(hide = true)]
    EnclaveInit(leviathan::control::ControlArgs),
    /// An LWK enclave's monitor: its VM and its control agent (started by leviathan).
    #[command(hide = true)]
    LwkMonitor(kind_lwk::monitor::MonitorArgs),
    /// A VM enclave's monitor: its QEMU and its control agent (started by leviathan).
    #[command(hide = true)]
    VmMonitor(kind_vm::monitor::MonitorArgs),
}

/// A CPU list as one argument (clap would read `Vec` as repeated values).
#[derive(Debug, Clone)]
struct CpuList(Vec<u32>);

fn cpu_list(s: &str) -> Result<CpuList, String> {
    parse_cpu_list(s).map(CpuList)
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("HOBBES_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    // Before any thread: the PMIx server (started at the first Open MPI
    // job) reads its settings from the environment.
    leviathan::pmix::prepare_environment();
    init_logging();
    let result = match cli.command {
        Some(Command::EnclaveInit(args)) => leviathan::control::run(args),
        Some(Command::LwkMonitor(args)) => kind_lwk::monitor::run(args),
        Some(Command::VmMonitor(args)) => kind_vm::monitor::run(args),
        Some(Command::Cleanup {
            keep_state,
            orphans,
        }) => {
            let dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
            leviathan::daemon::cleanup(&dir, keep_state, orphans)
        }
        Some(Command::NisDump { nis, hold_ms }) => {
            let dir = nis
                .or_else(|| std::env::var_os(hobbes_proto::ENV_NIS).map(PathBuf::from))
                .unwrap_or_else(|| {
                    cli.state_dir
                        .clone()
                        .unwrap_or_else(default_state_dir)
                        .join("nis")
                });
            nis_dump(&dir, hold_ms)
        }
        None => config(&cli).and_then(leviathan::daemon::run),
    };
    if let Err(e) = result {
        eprintln!("leviathan: error: {e:#}");
        std::process::exit(1);
    }
}

fn nis_dump(dir: &std::path::Path, hold_ms: u64) -> anyhow::Result<()> {
    let nis = hobbes_nis::NisReader::open(dir)?;
    let snap = nis.snapshot()?;
    let json = serde_json::json!({
        "header": snap.header,
        "cores": snap.cores,
        "memory_blocks": snap.memory.len(),
        "enclaves": snap.enclaves,
        "apps": snap.apps,
        "procs": snap.procs,
        "reader_pid": std::process::id(),
    });
    println!("{json}");
    if hold_ms > 0 {
        nis.hold_read_txn(std::time::Duration::from_millis(hold_ms))?;
    }
    Ok(())
}

fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/hobbes");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("hobbes"),
        None => PathBuf::from(format!("/tmp/hobbes-{}", nix::unistd::geteuid())),
    }
}

fn config(cli: &Cli) -> anyhow::Result<Config> {
    let file = match &cli.config {
        Some(p) => Config::load_file(p)?,
        None => FileConfig::default(),
    };
    let cpus = match (&cli.cpus, &file.cpus) {
        (Some(flag), _) => Some(flag.0.clone()),
        (None, Some(list)) => Some(
            list.resolve()
                .map_err(|e| anyhow::anyhow!("config: cpus: {e}"))?,
        ),
        (None, None) => None,
    };
    let memory = managed_memory(cli.memory, cli.memory_blocks.clone().map(|l| l.0), &file)?;
    Ok(Config {
        state_dir: cli.state_dir.clone().unwrap_or_else(default_state_dir),
        cpus,
        memory,
        host_cores: cli.host_cores.clone().map(|l| l.0).or(file.host_cores),
        host_memory_mib: cli.host_memory.or(file.host_memory_mib),
        heartbeat_interval_ms: cli
            .heartbeat_interval_ms
            .or(file.heartbeat_interval_ms)
            .unwrap_or(1000),
        heartbeat_timeout_ms: cli
            .heartbeat_timeout_ms
            .or(file.heartbeat_timeout_ms)
            .unwrap_or(3000),
        on_crash: cli.on_crash.or(file.on_crash).unwrap_or(OnCrash::Reclaim),
        unprivileged: cli.unprivileged || file.unprivileged.unwrap_or(false),
        keep_enclaves_on_exit: cli.keep_enclaves || file.keep_enclaves_on_exit.unwrap_or(false),
        shmem_thp: cli.shmem_thp || file.shmem_thp.unwrap_or(false),
        slurm_cgroups: cli.slurm_cgroups || file.slurm_cgroups.unwrap_or(false),
        hugepages: cli.hugepages.or(file.hugepages).unwrap_or(0),
        client_idle_timeout_s: cli
            .client_idle_timeout_s
            .or(file.client_idle_timeout_s)
            .unwrap_or(leviathan::config::DEFAULT_CLIENT_IDLE_TIMEOUT_S),
        request_timeout_ms: cli
            .request_timeout_ms
            .or(file.request_timeout_ms)
            .unwrap_or(leviathan::config::DEFAULT_REQUEST_TIMEOUT_MS),
        max_clients_per_uid: cli
            .max_clients_per_uid
            .or(file.max_clients_per_uid)
            .unwrap_or(leviathan::config::DEFAULT_MAX_CLIENTS_PER_UID),
    })
}
