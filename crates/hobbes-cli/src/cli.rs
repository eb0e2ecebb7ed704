//! The command table: one subcommand per node-shell command, as in the
//! original `shell/hobbes.c`. The original underscore names are accepted as
//! aliases so old scripts keep working.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};
use hobbes_proto::model::{AppId, EnclaveKind};

use crate::args::{parse_env, parse_kind, parse_mode, parse_signal, parse_size_mib, IdList};

#[derive(Parser, Debug)]
#[command(
    name = "hobbes",
    version,
    about = "Hobbes node shell: partition this node into enclaves and run apps in them",
    after_help = "The original Leviathan names (create_enclave, launch_app, list_cpus, ...) \
                  are accepted as well.\nStart with `hobbes demo`."
)]
/// The whole `hobbes` command line: the global flags and one command.
pub struct Cli {
    /// leviathan's socket (default: $HOBBES_SOCKET, else <state dir>/leviathan.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print records as JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// One node-shell command, with its arguments (kebab-case names; the original underscore
/// names are aliases).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Node overview: cores, memory, enclaves, and how isolated they really are.
    Status,
    /// Create an enclave from an XML file or from flags.
    #[command(alias = "create_enclave")]
    CreateEnclave(CreateArgs),
    /// Destroy an enclave (its apps are killed, its resources freed).
    #[command(alias = "destroy_enclave")]
    DestroyEnclave {
        /// Enclave id or name.
        enclave: String,
    },
    /// List enclaves.
    #[command(alias = "list_enclaves")]
    ListEnclaves,
    /// List XEMEM shared-memory segments: owner, size, page size, attachments.
    #[command(alias = "list_segments")]
    ListSegments,
    /// Launch a program in an enclave.
    #[command(alias = "launch_app")]
    LaunchApp(LaunchArgs),
    /// List apps, of one enclave or all.
    #[command(alias = "list_apps")]
    ListApps {
        /// Enclave id or name.
        enclave: Option<String>,
    },
    /// Send a signal to an app.
    #[command(alias = "kill_app")]
    KillApp {
        /// App id, as `list-apps` shows it.
        app: AppId,
        /// Signal number or name (TERM, SIGKILL, 9...).
        #[arg(short, long, default_value = "TERM", value_parser = parse_signal)]
        signal: i32,
    },
    /// Wait for an app to end; exits with its exit code (128+N for signal N).
    #[command(alias = "wait_app")]
    WaitApp {
        /// App id, as `list-apps` shows it.
        app: AppId,
    },
    /// List the node's cores and who owns them.
    #[command(alias = "list_cpus")]
    ListCpus,
    /// List the node's memory blocks and who owns them.
    #[command(alias = "list_memory")]
    ListMemory {
        /// Only blocks owned by: free, host, or an enclave id or name.
        #[arg(long, value_name = "OWNER")]
        owner: Option<String>,
    },
    /// Give cores to an enclave.
    #[command(alias = "assign_cpus")]
    AssignCpus(AssignCpusArgs),
    /// Take cores back from an enclave.
    #[command(alias = "revoke_cpus")]
    RevokeCpus {
        /// Enclave id or name.
        enclave: String,
        /// Core ids ("2", "2,3", "4-7").
        #[arg(long)]
        ids: IdList,
    },
    /// Give memory to an enclave.
    #[command(alias = "assign_memory")]
    AssignMemory(AssignMemoryArgs),
    /// Take memory blocks back from an enclave.
    #[command(alias = "revoke_memory")]
    RevokeMemory {
        /// Enclave id or name.
        enclave: String,
        /// Memory block ids ("5", "5,6", "8-11").
        #[arg(long)]
        blocks: IdList,
    },
    /// Ping an enclave's control process directly (or through the daemon).
    #[command(aliases = ["ping_enclave", "ping-enclave"])]
    Ping(PingArgs),
    /// Print a file as the enclave sees it.
    #[command(aliases = ["cat_file", "cat-file"])]
    Cat {
        /// Enclave id or name.
        enclave: String,
        /// Path as the enclave sees it (output is cut at 64 MiB).
        path: String,
    },
    /// Attach to an enclave's console (a VM's serial console, a shell in
    /// the guest); detach with Ctrl-] (the console keeps running).
    Console {
        /// Enclave id or name.
        enclave: String,
    },
    /// Write a file in the enclave's view, from a local file or stdin.
    #[command(aliases = ["write_file", "write-file"])]
    Write {
        /// Enclave id or name.
        enclave: String,
        /// Path as the enclave sees it; created, or truncated if it exists.
        path: String,
        /// Local file to copy (default: stdin).
        #[arg(long, value_name = "LOCALFILE")]
        from: Option<PathBuf>,
        /// File mode, octal.
        #[arg(long, default_value = "644", value_parser = parse_mode)]
        mode: u32,
    },
    /// Show Hobbes at work: start a daemon if none runs, create an enclave,
    /// run a program in it, clean up. `demo insitu`: the composed in situ
    /// workflow (simulation + analytics in two enclaves, coupled through XASM).
    Demo {
        /// Which demo; none: the basic one.
        #[command(subcommand)]
        what: Option<DemoKind>,
    },
}

/// The demos `hobbes demo` can run besides the basic one.
#[derive(Subcommand, Debug)]
pub enum DemoKind {
    /// A simulation in one enclave publishing its state every step, analytics
    /// in another reading it; every problem size in every coupling mode; a
    /// report and a plot of the in situ share against problem size.
    ///
    /// Runs `hobbes-insitu demo` (next to hobbes, else in PATH; built by
    /// `cargo build -p hobbes-workloads`) with these flags;
    /// `hobbes demo insitu --help` lists them.
    ///
    /// Inside a Slurm allocation, `--slurm [--nodes N]` runs it on every node
    /// (one simulation and one analytics enclave per node, each node's own
    /// leviathan; `--socket` may name it with `%n`, the node name) and prints
    /// a summary per node.
    #[command(disable_help_flag = true)]
    Insitu {
        /// Flags passed unchanged to `hobbes-insitu demo` (--sizes, --steps,
        /// --modes, --exec, --repeat, --out, ...; --help lists them).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "FLAGS"
        )]
        args: Vec<OsString>,
    },
}

/// Arguments of `create-enclave`: an XML file, or flags describing the enclave.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Enclave XML file, e.g. <native name="sim"><cpus><cores>1</cores></cpus><memory size="512"/></native>.
    #[arg(conflicts_with_all = ["name", "cores", "core_ids", "memory", "blocks", "numa", "shared"])]
    pub file: Option<PathBuf>,
    /// Enclave name (required without FILE).
    #[arg(long)]
    pub name: Option<String>,
    /// Enclave kind (without FILE; a FILE's root element names it): native,
    /// lwk (a lightweight kernel on KVM, on cores of its own), or vm (a Linux
    /// guest under QEMU).
    #[arg(long, default_value = "native", value_parser = parse_kind, conflicts_with = "file")]
    pub kind: EnclaveKind,
    /// Number of cores to allocate.
    #[arg(long)]
    pub cores: Option<u32>,
    /// Explicit core ids ("1,3", "4-7").
    #[arg(long)]
    pub core_ids: Option<IdList>,
    /// Memory size in MiB, or with a unit (512M, 1G).
    #[arg(long, value_parser = parse_size_mib)]
    pub memory: Option<u64>,
    /// Explicit memory block ids ("12,13").
    #[arg(long)]
    pub blocks: Option<IdList>,
    /// Preferred NUMA node for counted cores and sized memory.
    #[arg(long)]
    pub numa: Option<u32>,
    /// Pin to host cores without owning them (NOT isolated).
    #[arg(long)]
    pub shared: bool,
    /// Keep the host's IPC namespace, so MPI jobs spanning enclaves use shared memory.
    #[arg(long)]
    pub host_ipc: bool,
    /// VM: the guest kernel (default: the node's image, scripts/vm-image.sh).
    #[arg(long, value_name = "PATH", conflicts_with = "file")]
    pub kernel: Option<String>,
    /// VM: the guest initramfs (default: the node's image; one of your own
    /// must start the Hobbes guest agent).
    #[arg(long, value_name = "PATH", conflicts_with = "file")]
    pub initrd: Option<String>,
    /// VM: appended to the guest kernel's command line.
    #[arg(long, value_name = "ARGS", conflicts_with = "file")]
    pub cmdline: Option<String>,
    /// VM: accelerator: auto (KVM where the CPU virtualizes, else TCG), kvm or tcg.
    #[arg(long, value_name = "ACCEL", conflicts_with = "file")]
    pub accel: Option<String>,
    /// VM: a host directory the guest sees at the same path, read-only
    /// unless suffixed ":rw" (repeatable).
    #[arg(long = "share", value_name = "DIR[:rw]", conflicts_with = "file")]
    pub shares: Vec<String>,
}

/// Arguments of `launch-app`.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Enclave id or name.
    pub enclave: String,
    /// Display name (default: the program's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Extra environment variable, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory, as the enclave sees it.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Stream the app's output here and exit with its exit code.
    #[arg(long, visible_alias = "stream")]
    pub wait: bool,
    /// Program and its arguments (after `--` when they start with '-').
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub argv: Vec<String>,
}

/// Arguments of `assign-cpus`: `--count`, `--ids` or both.
#[derive(Args, Debug)]
// Explicit ids and a count may be combined: the ids first, then `count` more.
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["count", "ids"])))]
pub struct AssignCpusArgs {
    /// Enclave id or name.
    pub enclave: String,
    /// Number of free cores to add.
    #[arg(long)]
    pub count: Option<u32>,
    /// Preferred NUMA node for --count.
    #[arg(long)]
    pub numa: Option<u32>,
    /// Explicit core ids ("2,3").
    #[arg(long)]
    pub ids: Option<IdList>,
}

/// Arguments of `assign-memory`: `--size`, `--blocks` or both.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["size", "blocks"])))]
pub struct AssignMemoryArgs {
    /// Enclave id or name.
    pub enclave: String,
    /// Memory to add, in MiB or with a unit (256, 1G).
    #[arg(long, value_parser = parse_size_mib)]
    pub size: Option<u64>,
    /// Preferred NUMA node for --size.
    #[arg(long)]
    pub numa: Option<u32>,
    /// Explicit memory block ids ("5,6").
    #[arg(long)]
    pub blocks: Option<IdList>,
}

/// Arguments of `ping`.
#[derive(Args, Debug)]
pub struct PingArgs {
    /// Enclave id or name.
    pub enclave: String,
    /// Number of pings.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Pause between pings, in milliseconds.
    #[arg(short, long, default_value_t = 200)]
    pub interval_ms: u64,
    /// Ask leviathan to ping the control process instead of connecting to it.
    #[arg(long)]
    pub via_daemon: bool,
}
