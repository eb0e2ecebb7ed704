//! `remora`: launch a composition of MPI applications as one job: on one
//! node through leviathan, or across the nodes of a Slurm allocation as one
//! `srun` step ([`slurm`]).

mod slurm;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hobbes_client::proto::composition::{CompApp, CompEnclave, Composition};
use hobbes_client::proto::model::{EnclaveKind, JobRecord};
use hobbes_client::proto::msg::{
    EnclaveRef, ErrorCode, JobApp, JobSpec, MpiFlavor, PmiMode, Stream,
};
use hobbes_client::proto::spec::{CpuRequest, EnclaveSpec, MemRequest};
use hobbes_client::{paths, Client};

#[derive(Parser)]
#[command(
    name = "remora",
    version,
    about = "Compose unmodified MPI applications across Hobbes enclaves into one MPI job"
)]
struct Cli {
    /// leviathan's socket (default: $HOBBES_SOCKET, else <state dir>/leviathan.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// PMI transport: tcp (PMI_PORT) or socketpair (PMI_FD).
    #[arg(long, global = true, value_enum, default_value = "tcp")]
    pmi: Pmi,
    /// Do not preload the rank-space library (one MPI_COMM_WORLD for all).
    #[arg(long, global = true)]
    no_rank_spaces: bool,
    /// The programs' MPI, mpich or openmpi (default: read from each program's
    /// ELF, else from the composition's mpi= attributes, else mpich).
    #[arg(long, global = true, value_parser = MpiFlavor::parse)]
    mpi: Option<MpiFlavor>,
    /// Keep enclaves this command created when the job ends.
    #[arg(long, global = true)]
    keep_enclaves: bool,
    /// Inside a Slurm allocation too, run on this node through leviathan
    /// (by default a job in an allocation runs across its nodes through srun).
    #[arg(long, global = true)]
    local: bool,
    /// Print the srun command line (and its files) instead of running it.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Under Slurm: the --enclave SPEC of the step (default: from the
    /// composition's enclaves), e.g. native,cores=1,mem=512M,shared,host-ipc.
    #[arg(long, global = true, value_name = "SPEC")]
    slurm_enclave: Option<String>,
    /// Under Slurm: no --enclave, even where the Hobbes plugin is loaded.
    #[arg(long, global = true)]
    no_enclave: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Pmi {
    Tcp,
    Socketpair,
}

#[derive(Subcommand)]
enum Cmd {
    /// Launch a composition XML file.
    Launch { file: PathBuf },
    /// MPMD form: `remora run [--enclave E] -n 2 ./a args : -n 2 ./b`; per
    /// part also `-N/--nodes N` and `--ranks-per-node R` (under Slurm).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        parts: Vec<String>,
    },
    /// List jobs.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Signals are taken by a dedicated thread (sigwait), so block them before any thread starts.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    let _ = signals.thread_block();
    let cli = Cli::parse();
    match run(cli, signals) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("remora: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli, signals: nix::sys::signal::SigSet) -> Result<i32> {
    let socket = cli.socket.clone().unwrap_or_else(paths::socket);
    let comp = match &cli.command {
        Cmd::List { json } => return list(&socket, *json),
        Cmd::Launch { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            Composition::from_xml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        }
        Cmd::Run { parts } => parse_run(parts)?,
    };
    // Before anything is created: a composition that mixes MPIs is refused as is.
    let found = app_mpis(&comp.apps)?;
    let mpi = job_mpi(cli.mpi, &comp.apps, &found)?;
    if !cli.local {
        if let Some(srun) = slurm::in_allocation().or_else(|| {
            // --dry-run needs only the allocation's description.
            (cli.dry_run && std::env::var_os("SLURM_JOB_ID").is_some())
                .then(|| PathBuf::from("srun"))
        }) {
            return across_nodes(&cli, &comp, mpi, &found, srun, signals);
        }
    }
    if cli.dry_run {
        bail!("--dry-run shows the srun step of a job across the nodes of a Slurm allocation: run it inside one (salloc, sbatch; SLURM_JOB_ID)");
    }
    if comp
        .apps
        .iter()
        .any(|a| a.nodes.is_some() || a.ranks_per_node.is_some())
    {
        eprintln!("[remora] note: nodes/ranks per node apply across the nodes of a Slurm allocation; on this node they are ignored");
    }
    let mut client = Client::connect(&socket)?;
    let created = ensure_enclaves(&mut client, &comp.enclaves, mpi)?;
    let result = launch(&mut client, &socket, &cli, &comp, (mpi, &found), signals);
    if !cli.keep_enclaves {
        for name in created {
            if let Err(e) = Client::connect(&socket)
                .and_then(|mut c| c.destroy_enclave(EnclaveRef::Name(name.clone())))
            {
                eprintln!("remora: cannot remove enclave {name}: {e}");
            }
        }
    }
    result
}

/// The job across the nodes of the Slurm allocation remora runs in: one
/// srun step (crates/remora/src/slurm.rs).
fn across_nodes(
    cli: &Cli,
    comp: &Composition,
    mpi: MpiFlavor,
    found: &[Option<(MpiFlavor, String)>],
    srun: PathBuf,
    signals: nix::sys::signal::SigSet,
) -> Result<i32> {
    let alloc = if srun.is_absolute() {
        slurm::Allocation::detect(srun)?
    } else {
        // --dry-run without srun: what the environment says, nothing asked.
        let mut a = slurm::Allocation::detect(PathBuf::from("/nonexistent/srun"))?;
        a.srun = srun;
        a
    };
    // libremora in every rank of a known MPI program: it gives each
    // application its world, and checks that the rank reached Slurm's PMI.
    let wanted = !cli.no_rank_spaces && (comp.apps.len() > 1 || found.iter().any(Option::is_some));
    let library = if wanted {
        let lib = hobbes_client::proto::mpi_env::rank_space_library(mpi);
        if lib.is_none() && comp.apps.len() > 1 {
            let (var, name) = hobbes_client::proto::mpi_env::rank_space_library_name(mpi);
            bail!("the rank-space library {name} for {} was not found ({var}, next to remora, /usr/local/lib); build it (cargo build -p remora-pmpi) or pass --no-rank-spaces", mpi.display_name());
        }
        lib
    } else {
        None
    };
    let opts = slurm::Options {
        enclave: cli.slurm_enclave.clone(),
        no_enclave: cli.no_enclave,
        no_rank_spaces: cli.no_rank_spaces,
    };
    let step = slurm::build(comp, &alloc, mpi, &opts, library.as_deref())?;
    if cli.dry_run {
        print!(
            "{}",
            slurm::describe(&step, "<multi-prog.conf>", "<hostfile>")
        );
        return Ok(0);
    }
    slurm::run(&step, comp, signals)
}

/// `-n N [-N nodes] [--ranks-per-node R] [--enclave E] [--env K=V]... prog
/// args` parts separated by `:`.
fn parse_run(parts: &[String]) -> Result<Composition> {
    let mut comp = Composition {
        name: "run".into(),
        universe: "universe".into(),
        enclaves: vec![],
        apps: vec![],
    };
    for (index, part) in parts.split(|p| p == ":").enumerate() {
        let mut np = None::<u32>;
        let mut nodes = None::<u32>;
        let mut ranks_per_node = None::<u32>;
        let mut enclave = "remora".to_string();
        let mut env = vec![];
        let mut it = part.iter();
        let mut argv = vec![];
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "-n" | "-np" if argv.is_empty() => {
                    np = Some(
                        it.next()
                            .context("-n needs a number")?
                            .parse()
                            .context("-n needs a number")?,
                    );
                }
                "-N" | "--nodes" if argv.is_empty() => {
                    nodes = Some(
                        it.next()
                            .context("-N needs a number of nodes")?
                            .parse()
                            .context("-N needs a number of nodes")?,
                    );
                }
                "--ranks-per-node" | "--ntasks-per-node" if argv.is_empty() => {
                    ranks_per_node = Some(
                        it.next()
                            .context("--ranks-per-node needs a number")?
                            .parse()
                            .context("--ranks-per-node needs a number")?,
                    );
                }
                "--enclave" if argv.is_empty() => {
                    enclave = it.next().context("--enclave needs a name")?.clone()
                }
                "--env" if argv.is_empty() => {
                    let kv = it.next().context("--env needs K=V")?;
                    let (k, v) = kv.split_once('=').context("--env needs K=V")?;
                    env.push((k.to_string(), v.to_string()));
                }
                _ => {
                    argv.push(arg.clone());
                    argv.extend(it.by_ref().cloned());
                }
            }
        }
        if argv.is_empty() {
            bail!(
                "part {} of the command line names no program (remora run -n 2 ./a : -n 2 ./b)",
                index + 1
            );
        }
        if !comp.enclaves.iter().any(|e| e.name == enclave) {
            comp.enclaves.push(CompEnclave {
                name: enclave.clone(),
                parent: None,
                cores: 1,
                memory_mib: 256,
                shared: true,
                host_ipc: true,
            });
        }
        let name = std::path::Path::new(&argv[0])
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = if comp.apps.iter().any(|a| a.name == name) {
            format!("{name}{index}")
        } else {
            name
        };
        // Like srun: -N and --ranks-per-node alone say how many.
        let np = np.unwrap_or(match (nodes, ranks_per_node) {
            (Some(n), Some(r)) => n.saturating_mul(r),
            (Some(n), None) => n,
            _ => 1,
        });
        comp.apps.push(CompApp {
            comm: name.clone(),
            name,
            enclave,
            np,
            argv,
            env,
            cwd: None,
            mpi: None,
            nodes,
            ranks_per_node,
        });
    }
    comp.validate().map_err(anyhow::Error::msg)?;
    Ok(comp)
}

/// Where `program` is, as a rank started in `cwd` would find it: a path with
/// a `/` relative to `cwd` (default: ours), a bare name in `PATH`.
fn resolve_program(program: &str, cwd: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        let path = Path::new(program);
        return Some(match cwd {
            Some(dir) if path.is_relative() => Path::new(dir).join(path),
            _ => path.to_path_buf(),
        });
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The MPI each application's program is built against, when known: its
/// `mpi=` attribute, else its ELF's libraries; with why, for messages.
fn app_mpis(apps: &[CompApp]) -> Result<Vec<Option<(MpiFlavor, String)>>> {
    apps.iter()
        .map(|app| {
            if let Some(mpi) = app.mpi {
                return Ok(Some((mpi, "its mpi= attribute".to_string())));
            }
            // Not found here (it may exist only in the enclave's view): the
            // launch says so if it is missing there too.
            let Some(path) =
                resolve_program(&app.argv[0], app.cwd.as_deref()).filter(|p| p.is_file())
            else {
                return Ok(None);
            };
            // Its errors name the file.
            let found = remora_pmpi::Mpi::detect(&path).map_err(anyhow::Error::msg)?;
            Ok(found.map(|m| {
                let flavor = match m {
                    remora_pmpi::Mpi::Mpich => MpiFlavor::Mpich,
                    remora_pmpi::Mpi::OpenMpi => MpiFlavor::OpenMpi,
                };
                (flavor, format!("{} is linked against it", path.display()))
            }))
        })
        .collect()
}

/// The job's MPI: `--mpi`, else the one its programs are built against
/// (programs that name none, such as scripts, do not count; none at all:
/// MPICH). Applications built against different MPIs cannot be one job:
/// refused, naming them.
fn job_mpi(
    cli_mpi: Option<MpiFlavor>,
    apps: &[CompApp],
    found: &[Option<(MpiFlavor, String)>],
) -> Result<MpiFlavor> {
    if let Some(mpi) = cli_mpi {
        return Ok(mpi);
    }
    let seen: Vec<(MpiFlavor, &str, &str)> = apps
        .iter()
        .zip(found)
        .filter_map(|(app, f)| {
            f.as_ref()
                .map(|(m, why)| (*m, app.name.as_str(), why.as_str()))
        })
        .collect();
    let Some(&(first, first_app, first_why)) = seen.first() else {
        return Ok(MpiFlavor::Mpich);
    };
    if let Some((other, app, why)) = seen.iter().find(|(m, _, _)| *m != first) {
        bail!(
            "this composition mixes two MPI libraries: application {first_app} uses {} ({first_why}), application {app} uses {} ({why}); one MPI job has one MPI library: build both against the same one (mpicc.mpich or mpicc.openmpi), or run them as two jobs",
            first.display_name(),
            other.display_name()
        );
    }
    Ok(first)
}

/// Create the enclaves that do not exist; returns the names created.
fn ensure_enclaves(
    client: &mut Client,
    enclaves: &[CompEnclave],
    mpi: MpiFlavor,
) -> Result<Vec<String>> {
    let mut created = vec![];
    for e in enclaves {
        match client.enclave(EnclaveRef::Name(e.name.clone())) {
            Ok(existing) => {
                // Open MPI ranks across enclaves use TCP anyway (leviathan
                // sets it: vader cannot span PID namespaces).
                if mpi == MpiFlavor::Mpich
                    && enclaves.len() > 1
                    && !existing.host_ipc
                    && existing.isolation.confined()
                {
                    eprintln!(
                        "[remora] warning: enclave {} has its own IPC namespace: MPICH's UCX netmod talks to it over TCP, \
                         and with several processes per enclave MPI_Finalize may hang (create it with --host-ipc, or let remora create it)",
                        e.name
                    );
                }
                continue;
            }
            Err(err) if err.code() == Some(ErrorCode::NotFound) => {}
            Err(err) => return Err(err.into()),
        }
        let spec = EnclaveSpec {
            name: e.name.clone(),
            kind: EnclaveKind::Native,
            shared: e.shared,
            host_ipc: e.host_ipc,
            cpus: CpuRequest {
                count: e.cores,
                ..Default::default()
            },
            memory: MemRequest {
                size_mib: e.memory_mib,
                ..Default::default()
            },
            vm: None,
        };
        let rec = client
            .create_enclave(spec)
            .with_context(|| format!("cannot create enclave {}", e.name))?;
        eprintln!(
            "[remora] created enclave {} ({}, cores {:?})",
            rec.name, rec.isolation.summary, rec.cores
        );
        created.push(e.name.clone());
    }
    Ok(created)
}

fn launch(
    client: &mut Client,
    socket: &std::path::Path,
    cli: &Cli,
    comp: &Composition,
    (mpi, found): (MpiFlavor, &[Option<(MpiFlavor, String)>]),
    signals: nix::sys::signal::SigSet,
) -> Result<i32> {
    let spec = JobSpec {
        mpi: Some(mpi),
        name: comp.name.clone(),
        apps: comp
            .apps
            .iter()
            .zip(found)
            .map(|(a, f)| JobApp {
                name: a.name.clone(),
                enclave: EnclaveRef::Name(a.enclave.clone()),
                np: a.np,
                argv: a.argv.clone(),
                env: a.env.clone(),
                cwd: a.cwd.clone(),
                // --mpi overrides what was read from the program, for its
                // checks too.
                mpi: f.as_ref().map(|(m, _)| cli.mpi.unwrap_or(*m)),
            })
            .collect(),
        pmi: match cli.pmi {
            Pmi::Tcp => PmiMode::Tcp,
            Pmi::Socketpair => PmiMode::Socketpair,
        },
        rank_spaces: cli.no_rank_spaces.then_some(false),
    };
    let mut lines: HashMap<(String, u32, bool), Vec<u8>> = HashMap::new();
    let socket = socket.to_path_buf();
    let job = client.remora_launch(
        spec,
        |job| {
            eprintln!(
                "[remora] job {} ({}): {} processes, kvs {}",
                job.id, job.name, job.size, job.kvsname
            );
            forward_signals(socket.clone(), job.id, signals);
        },
        |app, rank, stream, data| {
            let key = (app.to_string(), rank, stream == Stream::Stderr);
            let buf = lines.entry(key).or_default();
            buf.extend_from_slice(data);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                emit(app, rank, stream, &line);
            }
        },
    )?;
    for ((app, rank, err), rest) in lines {
        if !rest.is_empty() {
            let mut rest = rest;
            rest.push(b'\n');
            emit(
                &app,
                rank,
                if err { Stream::Stderr } else { Stream::Stdout },
                &rest,
            );
        }
    }
    report(&job);
    Ok(job.exit_code.unwrap_or(1))
}

fn emit(app: &str, rank: u32, stream: Stream, line: &[u8]) {
    let prefix = format!("[{app}:{rank}] ");
    let _ = match stream {
        Stream::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(prefix.as_bytes())
                .and_then(|_| o.write_all(line))
        }
        Stream::Stderr => {
            let mut o = std::io::stderr().lock();
            o.write_all(prefix.as_bytes())
                .and_then(|_| o.write_all(line))
        }
    };
}

fn report(job: &JobRecord) {
    let took = job
        .ended_ms
        .unwrap_or(job.started_ms)
        .saturating_sub(job.started_ms);
    match &job.failure {
        None => eprintln!("[remora] job {} {:?} in {took} ms", job.id, job.state),
        Some(why) => eprintln!(
            "[remora] job {} {:?} after {took} ms: {why} (exit {})",
            job.id,
            job.state,
            job.exit_code.unwrap_or(1)
        ),
    }
}

/// Ctrl-C or SIGTERM: forward SIGTERM to every process of the job; a second
/// one sends SIGKILL.
fn forward_signals(socket: PathBuf, job: u64, signals: nix::sys::signal::SigSet) {
    std::thread::spawn(move || {
        let mut count = 0;
        while let Ok(sig) = signals.wait() {
            count += 1;
            let forward = if count == 1 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            eprintln!(
                "[remora] {sig:?}: sending {} to job {job}",
                if forward == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGKILL"
                }
            );
            if let Err(e) = Client::connect(&socket).and_then(|mut c| c.remora_signal(job, forward))
            {
                eprintln!("[remora] cannot signal job {job}: {e}");
            }
        }
    });
}

fn list(socket: &std::path::Path, json: bool) -> Result<i32> {
    // Jobs across nodes are Slurm steps: listed from Slurm (squeue), next
    // to this node's leviathan jobs.
    let steps = slurm::remora_steps();
    let jobs = match Client::connect(socket).and_then(|mut c| c.list_jobs()) {
        Ok(jobs) => jobs,
        // A login node has Slurm but no leviathan.
        Err(e) if steps.is_some() => {
            eprintln!("[remora] no leviathan jobs on this node ({e})");
            vec![]
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        let steps: Vec<serde_json::Value> = steps
            .iter()
            .flatten()
            .map(|(id, name, nodes, time)| {
                serde_json::json!({ "step": id, "name": name, "nodes": nodes, "time": time })
            })
            .collect();
        if steps.is_empty() {
            println!("{}", serde_json::to_string_pretty(&jobs)?);
        } else {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "jobs": jobs, "slurm_steps": steps })
                )?
            );
        }
        return Ok(0);
    }
    println!(
        "{:<5} {:<16} {:<9} {:>5}  {:<6} APPS",
        "ID", "NAME", "STATE", "SIZE", "EXIT"
    );
    for j in &jobs {
        let apps: Vec<String> = j
            .apps
            .iter()
            .map(|a| format!("{}x{}", a.name, a.np))
            .collect();
        println!(
            "{:<5} {:<16} {:<9} {:>5}  {:<6} {}",
            j.id,
            j.name,
            format!("{:?}", j.state).to_lowercase(),
            j.size,
            j.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            apps.join(" ")
        );
    }
    if let Some(steps) = steps.filter(|s| !s.is_empty()) {
        println!();
        println!("{:<14} {:<24} {:<10} NODES", "SLURM STEP", "NAME", "TIME");
        for (id, name, nodes, time) in steps {
            println!("{id:<14} {name:<24} {time:<10} {nodes}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, mpi: Option<MpiFlavor>) -> CompApp {
        CompApp {
            name: name.into(),
            enclave: "e".into(),
            np: 1,
            comm: name.into(),
            argv: vec!["/nonexistent/program".into()],
            env: vec![],
            cwd: None,
            mpi,
            nodes: None,
            ranks_per_node: None,
        }
    }

    #[test]
    fn one_job_has_one_mpi() {
        let apps = [
            app("sim", Some(MpiFlavor::OpenMpi)),
            app("script", None),
            app("ana", Some(MpiFlavor::OpenMpi)),
        ];
        let found = app_mpis(&apps).unwrap();
        assert_eq!(
            found[1], None,
            "a program that cannot be found does not vote"
        );
        assert_eq!(job_mpi(None, &apps, &found).unwrap(), MpiFlavor::OpenMpi);
        assert_eq!(
            job_mpi(Some(MpiFlavor::Mpich), &apps, &found).unwrap(),
            MpiFlavor::Mpich,
            "--mpi wins"
        );
        let none = [app("a", None)];
        let f = app_mpis(&none).unwrap();
        assert_eq!(job_mpi(None, &none, &f).unwrap(), MpiFlavor::Mpich);
        let mixed = [
            app("sim", Some(MpiFlavor::Mpich)),
            app("ana", Some(MpiFlavor::OpenMpi)),
        ];
        let f = app_mpis(&mixed).unwrap();
        let e = job_mpi(None, &mixed, &f).unwrap_err().to_string();
        assert!(
            e.contains("mixes two MPI libraries")
                && e.contains("sim uses MPICH")
                && e.contains("ana uses Open MPI"),
            "{e}"
        );
    }

    #[test]
    fn run_parts_take_placement_like_srun() {
        let parts: Vec<String> =
            "-n 4 -N 2 ./sim x : --nodes 2 --ranks-per-node 1 ./ana : -N 2 ./viz"
                .split(' ')
                .map(str::to_string)
                .collect();
        let c = parse_run(&parts).unwrap();
        assert_eq!(
            (c.apps[0].np, c.apps[0].nodes, c.apps[0].ranks_per_node),
            (4, Some(2), None)
        );
        assert_eq!(c.apps[0].argv, ["./sim", "x"]);
        assert_eq!(
            (c.apps[1].np, c.apps[1].nodes, c.apps[1].ranks_per_node),
            (2, Some(2), Some(1))
        );
        assert_eq!(c.apps[2].np, 2, "-N alone: one rank per node");
        let bad: Vec<String> = "-n 1 -N 2 ./sim".split(' ').map(str::to_string).collect();
        assert!(parse_run(&bad)
            .unwrap_err()
            .to_string()
            .contains("every node needs one"));
    }

    #[test]
    fn programs_are_found_as_ranks_would_find_them() {
        assert_eq!(
            resolve_program("./a.out", Some("/work")),
            Some(PathBuf::from("/work/./a.out"))
        );
        assert_eq!(
            resolve_program("/bin/true", Some("/work")),
            Some(PathBuf::from("/bin/true"))
        );
        assert!(resolve_program("sh", None).is_some_and(|p| p.ends_with("sh")));
        assert_eq!(resolve_program("no-such-program-here", None), None);
    }
}
