//! A composition across the nodes of a Slurm allocation: one `srun` step,
//! so one PMI job (Slurm's PMI-2 for MPICH, its PMIx for Open MPI), so one
//! MPI universe; libremora gives each application its own
//! `MPI_COMM_WORLD` in it, as on one node.
//!
//! Why one homogeneous step with `--multi-prog` and not a heterogeneous one
//! (`srun A : B`): measured with Slurm 22.05 here, a heterogeneous step puts
//! its components on disjoint nodes of the allocation (two applications
//! cannot share a node), and MPICH under `--mpi=pmi2` hangs in its first
//! fence across components. One step whose ranks run each application's
//! program (`--multi-prog`), placed rank by rank (`--distribution=arbitrary`
//! with `SLURM_HOSTFILE`), has neither problem. The SPANK plugin still
//! gives each application its own enclave on every node: the step's
//! `HOBBES_ENCLAVE_GROUPS` names each application's task ids
//! ([`enclave_groups`], docs/slurm.md).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use hobbes_client::proto::composition::Composition;
use hobbes_client::proto::mpi_env::{self, RankSpan};
use hobbes_client::proto::msg::MpiFlavor;

/// The allocation remora runs in, as Slurm describes it to the job.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// `SLURM_JOB_ID`.
    pub job_id: String,
    /// The allocation's nodes, in order (`SLURM_JOB_NODELIST`, expanded).
    pub nodes: Vec<String>,
    /// CPUs of each node in the job (`SLURM_JOB_CPUS_PER_NODE`); empty when unknown.
    pub cpus: Vec<u32>,
    /// The `srun` to run.
    pub srun: PathBuf,
    /// `srun --help` lists `--enclave` (the Hobbes SPANK plugin is loaded).
    pub enclave_plugin: bool,
    /// `srun --mpi=list`; `None` when it could not be asked.
    pub mpi_plugins: Option<Vec<String>>,
}

/// In an allocation: `SLURM_JOB_ID` is set and `srun` is in `PATH`.
pub fn in_allocation() -> Option<PathBuf> {
    std::env::var_os("SLURM_JOB_ID").filter(|v| !v.is_empty())?;
    find_in_path("srun")
}

/// `program` in `PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

impl Allocation {
    /// Read the allocation from the environment and ask `srun` what it can
    /// do (its `--enclave`, its MPI plugins).
    pub fn detect(srun: PathBuf) -> Result<Allocation> {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let job_id = var("SLURM_JOB_ID");
        let list = var("SLURM_JOB_NODELIST");
        let nodes = expand_hostlist(&list)
            .with_context(|| format!("cannot read SLURM_JOB_NODELIST={list:?}"))?;
        if let Ok(n) = var("SLURM_JOB_NUM_NODES").parse::<usize>() {
            if n != nodes.len() {
                bail!(
                    "SLURM_JOB_NUM_NODES={n} but SLURM_JOB_NODELIST={list:?} names {} nodes",
                    nodes.len()
                );
            }
        }
        let cpus = expand_counts(&var("SLURM_JOB_CPUS_PER_NODE")).unwrap_or_default();
        // Bounded: srun without a reachable configuration looks for one in
        // DNS for about a minute; then what it can do is unknown.
        let help = ask(&srun, "--help").map(|(out, _)| out).unwrap_or_default();
        let enclave_plugin = help.contains("--enclave");
        // Slurm 22.05 prints the list on stderr, later ones on stdout.
        let mpi_plugins = ask(&srun, "--mpi=list").map(|(out, err)| parse_mpi_list(&(out + &err)));
        Ok(Allocation {
            job_id,
            nodes,
            cpus,
            srun,
            enclave_plugin,
            mpi_plugins,
        })
    }
}

/// How long remora waits for `srun --help` or `srun --mpi=list`.
const ASK_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a Slurm client can reach a configuration without a DNS search
/// (which takes about a minute where there is none): `SLURM_CONF` names a
/// file, or Debian's default exists, or we run in an allocation (a
/// configless cluster's clients find theirs).
pub fn configured() -> bool {
    match std::env::var_os("SLURM_CONF") {
        Some(c) => Path::new(&c).exists(),
        None => {
            Path::new("/etc/slurm/slurm.conf").exists()
                || Path::new("/etc/slurm-llnl/slurm.conf").exists()
                || std::env::var_os("SLURM_JOB_ID").is_some()
        }
    }
}

/// `srun arg`'s stdout and stderr, if it succeeds within [`ASK_LIMIT`] (else
/// it is killed).
fn ask(srun: &Path, arg: &str) -> Option<(String, String)> {
    bounded(srun, &[arg])
}

/// `program args`' stdout and stderr, if it succeeds within [`ASK_LIMIT`]
/// (else it is killed); `None` without a reachable Slurm configuration.
fn bounded(program: &Path, args: &[&str]) -> Option<(String, String)> {
    if !configured() {
        return None;
    }
    let arg = args.join(" ");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(ASK_LIMIT) {
        Ok(Ok(o)) if o.status.success() => Some((
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )),
        Ok(_) => None,
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; the child
            // is not reaped until the waiting thread does.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            eprintln!(
                "[remora] warning: {} {arg} gave no answer in {} s; going on without it",
                program.display(),
                ASK_LIMIT.as_secs()
            );
            None
        }
    }
}

/// The plugin names of `srun --mpi=list`'s answer.
pub fn parse_mpi_list(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.contains(':') && !l.contains("plugin"))
        .map(|l| l.trim().trim_start_matches("srun:").trim())
        .filter(|l| !l.is_empty() && !l.contains(' '))
        .map(str::to_string)
        .collect()
}

/// Slurm's hostlist notation expanded: `n[1-3,7],login01` → n1 n2 n3 n7 login01
/// (zero padding kept: `c[01-02]` → c01 c02).
pub fn expand_hostlist(list: &str) -> Result<Vec<String>> {
    let mut out = vec![];
    let mut rest = list.trim();
    while !rest.is_empty() {
        // One entry: up to a comma outside brackets.
        let mut depth = 0;
        let end = rest
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    ',' if depth == 0 => return true,
                    _ => {}
                }
                false
            })
            .map_or(rest.len(), |(i, _)| i);
        let entry = &rest[..end];
        rest = rest[end..].trim_start_matches(',');
        match entry.find('[') {
            None if entry.is_empty() => bail!("an empty host name"),
            None => out.push(entry.to_string()),
            Some(open) => {
                let close = entry
                    .find(']')
                    .filter(|c| *c > open)
                    .context("unbalanced [ ]")?;
                let (prefix, ranges, suffix) =
                    (&entry[..open], &entry[open + 1..close], &entry[close + 1..]);
                if suffix.contains('[') {
                    bail!("more than one range in {entry:?}");
                }
                for range in ranges.split(',') {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    let width = lo.len();
                    let (a, b): (u64, u64) = (
                        lo.parse()
                            .with_context(|| format!("{lo:?} is not a number"))?,
                        hi.parse()
                            .with_context(|| format!("{hi:?} is not a number"))?,
                    );
                    if b < a || b - a > 100_000 {
                        bail!("bad range {range:?}");
                    }
                    for n in a..=b {
                        out.push(format!("{prefix}{n:0width$}{suffix}"));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        bail!("no nodes");
    }
    Ok(out)
}

/// `SLURM_JOB_CPUS_PER_NODE`'s notation expanded: `2(x3),1` → 2 2 2 1.
pub fn expand_counts(text: &str) -> Option<Vec<u32>> {
    let mut out = vec![];
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once("(x") {
            Some((n, times)) => {
                let n: u32 = n.parse().ok()?;
                let times: usize = times.strip_suffix(')')?.parse().ok()?;
                out.extend(std::iter::repeat_n(n, times.min(100_000)));
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// How to run: what the command line chose.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--slurm-enclave SPEC`: the `--enclave` SPEC, instead of the one
    /// derived from the composition's enclaves.
    pub enclave: Option<String>,
    /// `--no-enclave`: no `--enclave` even where the plugin is loaded.
    pub no_enclave: bool,
    /// `--no-rank-spaces`.
    pub no_rank_spaces: bool,
}

/// One application's place in the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPlace {
    /// Application name.
    pub name: String,
    /// Its first global rank.
    pub first_rank: u32,
    /// Its processes.
    pub np: u32,
    /// Per node it uses (an index into the allocation's nodes), its ranks there.
    pub nodes: Vec<(usize, u32)>,
}

/// The step to run: the command line, the files it reads, and where ranks go.
#[derive(Debug, Clone)]
pub struct Step {
    /// `srun` and its arguments.
    pub argv: Vec<String>,
    /// Environment for `srun` itself (`SLURM_HOSTFILE`).
    pub env: Vec<(String, String)>,
    /// The `--multi-prog` configuration (one line per application).
    pub multi_prog: String,
    /// The node of every global rank, in rank order (the `SLURM_HOSTFILE`).
    pub hostfile: Vec<String>,
    /// Each application's place.
    pub apps: Vec<AppPlace>,
    /// Ranks exceed a node's CPUs: `--overcommit`.
    pub overcommit: bool,
    /// The `--enclave` SPEC given to srun, if any.
    pub enclave: Option<String>,
    /// Why there is no `--enclave` (printed), when there is none.
    pub no_enclave_why: Option<String>,
}

/// Where each application's ranks go: `nodes`/`ranks_per_node` as asked
/// (else as many nodes as it has ranks, up to the allocation's), block by
/// block; each application starts on the node after the last one the
/// previous application started its ranks on, wrapping around, so small
/// applications spread over the allocation. A placement the allocation
/// cannot hold is an error naming the application.
pub fn place(comp: &Composition, alloc: &Allocation) -> Result<Vec<AppPlace>> {
    let total_nodes = alloc.nodes.len();
    let mut places = vec![];
    let mut next_node = 0usize;
    let mut first_rank = 0u32;
    for app in &comp.apps {
        app.check_placement().map_err(anyhow::Error::msg)?;
        let (n, r) = match (app.nodes, app.ranks_per_node) {
            (Some(n), Some(r)) => (n, r),
            (Some(n), None) => (n, app.np.div_ceil(n)),
            (None, Some(r)) => (app.np.div_ceil(r), r),
            (None, None) => {
                let n = app.np.min(total_nodes as u32).max(1);
                (n, app.np.div_ceil(n))
            }
        };
        if n as usize > total_nodes {
            bail!(
                "application {} asks for {n} nodes ({} processes{}), but allocation {} has {total_nodes} (SLURM_JOB_NUM_NODES): ask salloc/sbatch for more nodes (-N {n}) or place fewer",
                app.name,
                app.np,
                app.ranks_per_node
                    .map(|r| format!(", {r} per node"))
                    .unwrap_or_default(),
                alloc.job_id
            );
        }
        let mut left = app.np;
        let mut nodes = vec![];
        for k in 0..n as usize {
            let here = left.min(r);
            nodes.push(((next_node + k) % total_nodes, here));
            left -= here;
        }
        debug_assert_eq!(left, 0);
        places.push(AppPlace {
            name: app.name.clone(),
            first_rank,
            np: app.np,
            nodes,
        });
        first_rank += app.np;
        next_node = (next_node + n as usize) % total_nodes;
    }
    Ok(places)
}

/// The `--enclave` SPEC for a composition: `--slurm-enclave` if given, else
/// from its enclaves: exclusive unless all are shared, `host-ipc` when all
/// are (the default), and cores per node capped at the allocation's CPUs
/// (the plugin's default is one per task, which an overcommitted node cannot
/// hold).
pub fn enclave_spec(comp: &Composition, opts: &Options, cores: Option<u32>) -> String {
    if let Some(spec) = &opts.enclave {
        return spec.clone();
    }
    let mut items = vec!["native".to_string()];
    if let Some(c) = cores {
        items.push(format!("cores={c}"));
    }
    if comp.enclaves.len() == 1 {
        items.push(format!("mem={}M", comp.enclaves[0].memory_mib));
    }
    let used = |name: &str| comp.apps.iter().any(|a| a.enclave == name);
    let enclaves: Vec<_> = comp.enclaves.iter().filter(|e| used(&e.name)).collect();
    items.push(
        if enclaves.iter().all(|e| e.shared) {
            "shared"
        } else {
            "exclusive"
        }
        .to_string(),
    );
    if enclaves.iter().all(|e| e.host_ipc) {
        items.push("host-ipc".into());
    }
    items.join(",")
}

/// Quote `word` for a `--multi-prog` line when it needs it.
fn quote(word: &str) -> Result<String> {
    if word.contains('\n') {
        bail!("{word:?}: a --multi-prog line cannot hold a newline");
    }
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%^".contains(c))
    {
        return Ok(word.to_string());
    }
    if !word.contains('\'') {
        return Ok(format!("'{word}'"));
    }
    if !word.contains('"') {
        return Ok(format!("\"{word}\""));
    }
    bail!("{word:?}: a --multi-prog argument cannot hold both kinds of quotes");
}

/// Build the step for `comp` in `alloc` (no side effects: `--dry-run` prints
/// it, the unit tests read it). `library`: libremora, to preload.
pub fn build(
    comp: &Composition,
    alloc: &Allocation,
    mpi: MpiFlavor,
    opts: &Options,
    library: Option<&Path>,
) -> Result<Step> {
    let mpi_opt = match mpi {
        MpiFlavor::Mpich => "pmi2",
        MpiFlavor::OpenMpi => "pmix",
    };
    if let Some(plugins) = &alloc.mpi_plugins {
        if !plugins.iter().any(|p| p == mpi_opt) {
            match mpi {
                MpiFlavor::OpenMpi => bail!(
                    "Open MPI across nodes needs Slurm's PMIx plugin (srun --mpi=pmix), and this Slurm has none (srun --mpi=list: {}): ask for Slurm's mpi/pmix plugin, build the programs with MPICH, or run on one node with remora --local",
                    plugins.join(", ")
                ),
                MpiFlavor::Mpich => bail!(
                    "MPICH across nodes needs Slurm's PMI-2 plugin (srun --mpi=pmi2), and this Slurm has none (srun --mpi=list: {}); run on one node with remora --local",
                    plugins.join(", ")
                ),
            }
        }
    }
    let places = place(comp, alloc)?;
    let total: u32 = places.iter().map(|p| p.np).sum();
    // Ranks per node, against its CPUs.
    let mut per_node: BTreeMap<usize, u32> = BTreeMap::new();
    for p in &places {
        for (node, n) in &p.nodes {
            *per_node.entry(*node).or_default() += n;
        }
    }
    let overcommit = per_node
        .iter()
        .any(|(node, n)| alloc.cpus.get(*node).is_some_and(|c| n > c));
    let (enclave, no_enclave_why) = if opts.no_enclave {
        (None, Some("--no-enclave".to_string()))
    } else if !alloc.enclave_plugin && opts.enclave.is_none() {
        (
            None,
            Some(
                "srun has no --enclave (the Hobbes SPANK plugin is not in Slurm's plugstack.conf)"
                    .to_string(),
            ),
        )
    } else {
        let most = per_node.values().copied().max().unwrap_or(1);
        let cores = alloc
            .cpus
            .iter()
            .enumerate()
            .filter(|(i, _)| per_node.contains_key(i))
            .map(|(_, c)| *c)
            .min()
            .filter(|c| *c < most);
        (Some(enclave_spec(comp, opts, cores)), None)
    };
    // Every node's enclave is a PID namespace of its own (and simulated
    // nodes share one kernel): the transports that need one namespace are off.
    let span = RankSpan::Nodes {
        pid_namespaces: enclave.is_some(),
    };
    let rank_spaces = !opts.no_rank_spaces;
    let mut multi_prog = String::new();
    for (app, place) in comp.apps.iter().zip(&places) {
        let mut env: Vec<(String, String)> = mpi_env::unless_set(
            mpi_env::transport_defaults(mpi, span)
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
            &app.env,
        );
        env.extend(app.env.iter().cloned());
        env.push(("REMORA_APP".into(), app.name.clone()));
        env.push(("REMORA_APP_FIRST_RANK".into(), place.first_rank.to_string()));
        env.push(("REMORA_APP_SIZE".into(), place.np.to_string()));
        // libremora checks the world it got against this: a rank that did
        // not reach Slurm's PMI ran alone.
        env.push(("REMORA_JOB_SIZE".into(), total.to_string()));
        if let Some(lib) = library.filter(|_| rank_spaces) {
            env.push(("LD_PRELOAD".into(), lib.display().to_string()));
        }
        let mut words = vec![format!(
            "{}-{}",
            place.first_rank,
            place.first_rank + place.np - 1
        )];
        words.push("env".into());
        if let Some(cwd) = &app.cwd {
            words.push("-C".into());
            words.push(quote(cwd)?);
        }
        // The end of env's options: then assignments, then the program.
        words.push("--".into());
        for (k, v) in &env {
            if k.is_empty() || k.contains('=') {
                bail!("bad environment variable name {k:?}");
            }
            words.push(quote(&format!("{k}={v}"))?);
        }
        if app.argv[0].contains('=') {
            bail!(
                "application {}: a program named {:?} would be taken for an assignment by env",
                app.name,
                app.argv[0]
            );
        }
        for a in &app.argv {
            words.push(quote(a)?);
        }
        multi_prog.push_str(&words.join(" "));
        multi_prog.push('\n');
    }
    let hostfile: Vec<String> = places
        .iter()
        .flat_map(|p| {
            p.nodes
                .iter()
                .flat_map(|(node, n)| std::iter::repeat_n(alloc.nodes[*node].clone(), *n as usize))
        })
        .collect();
    let mut argv = vec![
        alloc.srun.display().to_string(),
        format!("--mpi={mpi_opt}"),
        format!("--ntasks={total}"),
        format!("--nodes={}", per_node.len()),
        "--distribution=arbitrary".into(),
        // The first abnormal end ends the step, as on one node.
        "--kill-on-bad-exit=1".into(),
        // Task ids on every line, turned into [app:rank].
        "--label".into(),
        format!("--job-name=remora:{}", comp.name),
    ];
    if overcommit {
        argv.push("--overcommit".into());
    }
    if let Some(spec) = &enclave {
        argv.push(format!("--enclave={spec}"));
    }
    argv.push("--export=ALL".into());
    argv.push("--multi-prog".into());
    let env = match &enclave {
        Some(_) => vec![(ENCLAVE_GROUPS.to_string(), enclave_groups(&places))],
        None => vec![],
    };
    Ok(Step {
        argv,
        env,
        multi_prog,
        hostfile,
        apps: places,
        overcommit,
        enclave,
        no_enclave_why,
    })
}

/// The SPANK plugin's variable that gives each application of the step its
/// own enclave on every node it has ranks on (docs/slurm.md).
pub const ENCLAVE_GROUPS: &str = "HOBBES_ENCLAVE_GROUPS";

/// `name=FIRST-LAST,...`: each application's global task ids, for the
/// plugin. Names are the composition's, with any character the plugin's
/// grammar (`[A-Za-z0-9._-]`) does not take replaced by `_`, and the
/// application's index appended when that made two names equal.
pub fn enclave_groups(places: &[AppPlace]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    places
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut name: String = p
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if name.is_empty() || !seen.insert(name.clone()) {
                name = format!("{name}{i}");
                seen.insert(name.clone());
            }
            format!(
                "{name}={}-{}",
                p.first_rank,
                p.first_rank + p.np.saturating_sub(1)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The step as a shell would run it, with its files: `--dry-run`'s output.
pub fn describe(step: &Step, conf: &str, hostfile: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!("SLURM_HOSTFILE={hostfile} "));
    for (k, v) in &step.env {
        out.push_str(&format!("{k}={} ", quote(v).unwrap_or_else(|_| v.clone())));
    }
    let words: Vec<String> = step
        .argv
        .iter()
        .map(|w| quote(w).unwrap_or_else(|_| w.clone()))
        .collect();
    out.push_str(&words.join(" "));
    out.push_str(&format!(" {conf}\n# {conf}:\n"));
    for l in step.multi_prog.lines() {
        out.push_str(&format!("#   {l}\n"));
    }
    out.push_str(&format!("# {hostfile}: {}\n", step.hostfile.join(" ")));
    out
}

/// Which application global rank `rank` belongs to.
fn app_of(places: &[AppPlace], rank: u32) -> Option<&str> {
    places
        .iter()
        .find(|p| (p.first_rank..p.first_rank + p.np).contains(&rank))
        .map(|p| p.name.as_str())
}

/// An `srun --label` line (`  3: text`) as remora prints ranks' lines:
/// `[app:3] text`; other lines (srun's own) unchanged.
pub fn relabel(places: &[AppPlace], line: &str) -> String {
    let trimmed = line.trim_start();
    if let Some((id, text)) = trimmed.split_once(": ") {
        if let Ok(rank) = id.parse::<u32>() {
            if let Some(app) = app_of(places, rank) {
                return format!("[{app}:{rank}] {text}");
            }
        }
    }
    line.to_string()
}

/// srun's report of tasks that ended badly (`srun: error: n0: tasks 0,2:
/// Segmentation fault`): the node, the first task, why.
pub fn task_failure(line: &str) -> Option<(String, u32, String)> {
    let rest = line.strip_prefix("srun: error: ")?;
    let (node, rest) = rest.split_once(": ")?;
    let rest = rest
        .strip_prefix("tasks ")
        .or_else(|| rest.strip_prefix("task "))?;
    let (tasks, reason) = rest.split_once(": ")?;
    let first = tasks.split([',', '-']).next()?.trim().parse().ok()?;
    Some((node.to_string(), first, reason.trim().to_string()))
}

/// The failure that ended the step: the first one that is not a task
/// terminated or killed because of it (`--kill-on-bad-exit`, or Ctrl-C).
fn first_failure(failures: &[(String, u32, String)]) -> Option<(String, u32, String)> {
    failures
        .iter()
        .find(|(_, _, why)| why != "Terminated" && why != "Killed")
        .or_else(|| failures.first())
        .cloned()
}

/// Run the step: write its files, start srun in a process group of its own,
/// relabel its output, forward Ctrl-C/SIGTERM, and return its exit code
/// (srun's: the highest exit code of a task, or 128 + signal).
pub fn run(step: &Step, comp: &Composition, signals: nix::sys::signal::SigSet) -> Result<i32> {
    let dir = tempfile::Builder::new()
        .prefix("remora-slurm-")
        .tempdir_in(std::env::current_dir().unwrap_or_else(|_| std::env::temp_dir()))
        .or_else(|_| tempfile::Builder::new().prefix("remora-slurm-").tempdir())
        .context("cannot make a directory for the step's files")?;
    let conf = dir.path().join("multi-prog.conf");
    let hosts = dir.path().join("hostfile");
    std::fs::write(&conf, &step.multi_prog)?;
    std::fs::write(&hosts, step.hostfile.join("\n") + "\n")?;
    {
        use std::os::unix::fs::PermissionsExt;
        // slurmstepd reads the configuration on every node, as the user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    match &step.enclave {
        Some(spec) => eprintln!(
            "[remora] enclaves: --enclave={spec} (one per application per node, {ENCLAVE_GROUPS})"
        ),
        None => eprintln!(
            "[remora] no enclaves: {}",
            step.no_enclave_why.as_deref().unwrap_or("none asked")
        ),
    }
    if step.overcommit {
        eprintln!("[remora] more ranks than CPUs on a node: --overcommit");
    }
    let placement: Vec<String> = step
        .apps
        .iter()
        .map(|p| format!("{} x{} on {} node(s)", p.name, p.np, p.nodes.len()))
        .collect();
    eprintln!(
        "[remora] job {} ({}): srun step of {} processes: {}",
        std::env::var("SLURM_JOB_ID").unwrap_or_default(),
        comp.name,
        step.hostfile.len(),
        placement.join(", ")
    );
    let mut cmd = Command::new(&step.argv[0]);
    cmd.args(&step.argv[1..])
        .arg(&conf)
        .env("SLURM_HOSTFILE", &hosts)
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Its own process group: a terminal's Ctrl-C reaches remora,
                // which forwards it once; and the signals remora blocks
                // are srun's to take.
                libc::setpgid(0, 0);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
    }
    let started = std::time::Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", step.argv[0]))?;
    let pid = child.id() as i32;
    std::thread::spawn(move || {
        let mut count = 0;
        while let Ok(sig) = signals.wait() {
            count += 1;
            // srun ends the step on SIGTERM (its tasks get SIGTERM, then
            // SIGKILL after KillWait); a second signal kills srun itself.
            let forward = if count == 1 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            eprintln!(
                "[remora] {sig:?}: sending {} to srun",
                if count == 1 { "SIGTERM" } else { "SIGKILL" }
            );
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, forward) };
        }
    });
    let out = child.stdout.take().context("srun's stdout")?;
    let err = child.stderr.take().context("srun's stderr")?;
    let places = step.apps.clone();
    let places2 = step.apps.clone();
    let t_out = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out)
            .split(b'\n')
            .map_while(Result::ok)
        {
            let line = String::from_utf8_lossy(&line);
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{}", relabel(&places, &line));
        }
    });
    let t_err = std::thread::spawn(move || {
        // srun's reports of tasks that ended badly, in order.
        let mut failures = vec![];
        for line in std::io::BufReader::new(err)
            .split(b'\n')
            .map_while(Result::ok)
        {
            let line = String::from_utf8_lossy(&line);
            if let Some(f) = task_failure(&line) {
                failures.push(f);
            }
            let mut o = std::io::stderr().lock();
            let _ = writeln!(o, "{}", relabel(&places2, &line));
        }
        failures
    });
    let status = child.wait()?;
    let _ = t_out.join();
    let failures = t_err.join().unwrap_or_default();
    let took = started.elapsed().as_millis();
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    };
    if code == 0 {
        eprintln!("[remora] job {} finished in {took} ms", comp.name);
    } else {
        let why = match first_failure(&failures) {
            Some((node, task, reason)) => format!(
                "rank {task} ({}) on {node}: {reason}",
                app_of(&step.apps, task).unwrap_or("?")
            ),
            None if code > 128 => format!(
                "a rank was killed by signal {} (srun's report above names it)",
                code - 128
            ),
            None => format!("a rank failed with exit code {code} (srun's report above names it)"),
        };
        eprintln!(
            "[remora] job {} failed after {took} ms: {why}; srun ended the step (exit {code})",
            comp.name
        );
    }
    drop(dir);
    Ok(code)
}

/// Remora's steps in Slurm (`squeue --steps`, named `remora:<composition>`):
/// `(step id, name, nodes, time)`; `None` when squeue cannot be asked.
pub fn remora_steps() -> Option<Vec<(String, String, String, String)>> {
    let squeue = find_in_path("squeue")?;
    let (out, _) = bounded(&squeue, &["--steps", "--noheader", "--format=%i|%j|%N|%M"])?;
    Some(
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').map(str::trim).collect();
                (f.len() == 4 && f[1].starts_with("remora:")).then(|| {
                    (
                        f[0].to_string(),
                        f[1].to_string(),
                        f[2].to_string(),
                        f[3].to_string(),
                    )
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hobbes_client::proto::composition::{CompApp, CompEnclave};

    fn alloc(nodes: &[&str], cpus: u32, plugin: bool) -> Allocation {
        Allocation {
            job_id: "42".into(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            cpus: vec![cpus; nodes.len()],
            srun: "/usr/bin/srun".into(),
            enclave_plugin: plugin,
            mpi_plugins: Some(vec!["pmix".into(), "none".into(), "pmi2".into()]),
        }
    }

    fn comp(apps: &[(&str, u32, Option<u32>, Option<u32>)]) -> Composition {
        Composition {
            name: "pair".into(),
            universe: "universe".into(),
            enclaves: vec![CompEnclave {
                name: "remora".into(),
                parent: None,
                cores: 1,
                memory_mib: 256,
                shared: true,
                host_ipc: true,
            }],
            apps: apps
                .iter()
                .map(|(name, np, nodes, rpn)| CompApp {
                    name: name.to_string(),
                    enclave: "remora".into(),
                    np: *np,
                    comm: name.to_string(),
                    argv: vec![format!("./{name}"), "--steps".into(), "a b".into()],
                    env: vec![("OMP_NUM_THREADS".into(), "1".into())],
                    cwd: None,
                    mpi: None,
                    nodes: *nodes,
                    ranks_per_node: *rpn,
                })
                .collect(),
        }
    }

    #[test]
    fn each_application_gets_its_task_range_for_the_plugin() {
        let c = comp(&[("sim", 2, Some(2), Some(1)), ("ana", 2, Some(2), Some(1))]);
        let step = build(
            &c,
            &alloc(&["n0", "n1"], 2, true),
            MpiFlavor::Mpich,
            &Options::default(),
            None,
        )
        .unwrap();
        assert_eq!(
            step.env,
            [(ENCLAVE_GROUPS.to_string(), "sim=0-1,ana=2-3".to_string())]
        );
        // No plugin, no enclaves: nothing for it.
        let step = build(
            &c,
            &alloc(&["n0", "n1"], 2, false),
            MpiFlavor::Mpich,
            &Options::default(),
            None,
        )
        .unwrap();
        assert!(step.env.is_empty());
        // Names outside the plugin's grammar, and clashes, are made safe.
        let places = [
            AppPlace {
                name: "a b".into(),
                first_rank: 0,
                np: 1,
                nodes: vec![],
            },
            AppPlace {
                name: "a_b".into(),
                first_rank: 1,
                np: 3,
                nodes: vec![],
            },
        ];
        assert_eq!(enclave_groups(&places), "a_b=0-0,a_b1=1-3");
    }

    #[test]
    fn hostlists_expand() {
        assert_eq!(expand_hostlist("n[0-1]").unwrap(), ["n0", "n1"]);
        assert_eq!(
            expand_hostlist("c[01-02,07],login,x[9]y").unwrap(),
            ["c01", "c02", "c07", "login", "x9y"]
        );
        assert!(expand_hostlist("n[2-1]").is_err());
        assert!(expand_hostlist("n[1").is_err());
        assert!(expand_hostlist("").is_err());
        assert_eq!(expand_counts("2(x3),1").unwrap(), [2, 2, 2, 1]);
        assert_eq!(expand_counts("1(x2)").unwrap(), [1, 1]);
        assert_eq!(expand_counts("x"), None);
        let list = "srun: MPI types are...\nsrun: cray_shasta\nsrun: none\nsrun: pmi2\nsrun: pmix\nsrun: MPI plugin types are...\n\tpmix\n\tnone\n\tpmi2\nspecific pmix plugin versions available: pmix_v4\n";
        let got = parse_mpi_list(list);
        assert!(
            got.contains(&"pmi2".to_string()) && got.contains(&"pmix".to_string()),
            "{got:?}"
        );
        assert!(!got.iter().any(|p| p.contains("pmix_v4")), "{got:?}");
    }

    #[test]
    fn two_by_two_puts_one_rank_of_each_application_on_each_node() {
        let c = comp(&[("sim", 2, Some(2), Some(1)), ("ana", 2, Some(2), Some(1))]);
        let a = alloc(&["n0", "n1"], 1, true);
        let step = build(
            &c,
            &a,
            MpiFlavor::Mpich,
            &Options::default(),
            Some(Path::new("/lib/libremora.so")),
        )
        .unwrap();
        assert_eq!(step.hostfile, ["n0", "n1", "n0", "n1"]);
        assert!(step.overcommit, "2 ranks on 1-CPU nodes");
        assert_eq!(
            step.argv,
            [
                "/usr/bin/srun",
                "--mpi=pmi2",
                "--ntasks=4",
                "--nodes=2",
                "--distribution=arbitrary",
                "--kill-on-bad-exit=1",
                "--label",
                "--job-name=remora:pair",
                "--overcommit",
                "--enclave=native,cores=1,mem=256M,shared,host-ipc",
                "--export=ALL",
                "--multi-prog"
            ]
        );
        let lines: Vec<&str> = step.multi_prog.lines().collect();
        assert_eq!(
            lines[0],
            "0-1 env -- UCX_POSIX_USE_PROC_LINK=n UCX_TLS=^cma OMP_NUM_THREADS=1 REMORA_APP=sim REMORA_APP_FIRST_RANK=0 REMORA_APP_SIZE=2 REMORA_JOB_SIZE=4 LD_PRELOAD=/lib/libremora.so ./sim --steps 'a b'"
        );
        assert!(
            lines[1].starts_with("2-3 env -- ")
                && lines[1].contains(" REMORA_APP=ana REMORA_APP_FIRST_RANK=2 REMORA_APP_SIZE=2 "),
            "{}",
            lines[1]
        );
        assert_eq!(relabel(&step.apps, "  3: hello"), "[ana:3] hello");
        assert_eq!(relabel(&step.apps, "0: x: y"), "[sim:0] x: y");
        assert_eq!(
            relabel(&step.apps, "srun: error: n1: task 0: Killed"),
            "srun: error: n1: task 0: Killed"
        );
    }

    #[test]
    fn without_the_plugin_or_with_room_there_is_no_enclave_or_overcommit() {
        let c = comp(&[("sim", 2, None, None), ("ana", 1, None, None)]);
        let a = alloc(&["n0", "n1"], 4, false);
        let step = build(&c, &a, MpiFlavor::Mpich, &Options::default(), None).unwrap();
        // sim spreads over both nodes; ana starts after it, wrapping to n0.
        assert_eq!(step.hostfile, ["n0", "n1", "n0"]);
        assert!(!step.overcommit);
        assert!(step.enclave.is_none() && step.no_enclave_why.unwrap().contains("plugstack"));
        assert!(!step
            .argv
            .iter()
            .any(|a| a.starts_with("--enclave") || a == "--overcommit"));
        assert!(
            !step.multi_prog.contains("UCX_"),
            "one PID namespace per node without enclaves"
        );
        assert!(
            !step.multi_prog.contains("LD_PRELOAD"),
            "no library: none preloaded"
        );
        // -N1 each: disjoint nodes.
        let c = comp(&[("sim", 3, Some(1), None), ("ana", 2, Some(1), None)]);
        let step = build(&c, &a, MpiFlavor::Mpich, &Options::default(), None).unwrap();
        assert_eq!(step.hostfile, ["n0", "n0", "n0", "n1", "n1"]);
        // --slurm-enclave wins, even with the plugin unseen; --no-enclave wins over all.
        let opts = Options {
            enclave: Some("native,cores=2".into()),
            ..Default::default()
        };
        let step = build(&c, &a, MpiFlavor::Mpich, &opts, None).unwrap();
        assert_eq!(step.enclave.as_deref(), Some("native,cores=2"));
        let opts = Options {
            enclave: Some("x".into()),
            no_enclave: true,
            ..Default::default()
        };
        assert!(build(&c, &a, MpiFlavor::Mpich, &opts, None)
            .unwrap()
            .enclave
            .is_none());
    }

    #[test]
    fn placement_the_allocation_cannot_hold_is_refused_before_anything_runs() {
        let a = alloc(&["n0", "n1"], 1, true);
        let c = comp(&[("sim", 3, Some(3), None)]);
        let e = build(&c, &a, MpiFlavor::Mpich, &Options::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("application sim asks for 3 nodes") && e.contains("allocation 42 has 2"),
            "{e}"
        );
        let c = comp(&[("sim", 6, None, Some(2))]);
        let e = build(&c, &a, MpiFlavor::Mpich, &Options::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("asks for 3 nodes (6 processes, 2 per node)"),
            "{e}"
        );
        let c = comp(&[("sim", 1, Some(2), None)]);
        let e = build(&c, &a, MpiFlavor::Mpich, &Options::default(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("every node needs one"), "{e}");
    }

    #[test]
    fn open_mpi_needs_slurms_pmix() {
        let c = comp(&[("sim", 2, None, None)]);
        let mut a = alloc(&["n0", "n1"], 1, false);
        let step = build(&c, &a, MpiFlavor::OpenMpi, &Options::default(), None).unwrap();
        assert_eq!(step.argv[1], "--mpi=pmix");
        assert!(
            step.multi_prog.contains("OMPI_MCA_btl=self,tcp"),
            "{}",
            step.multi_prog
        );
        a.mpi_plugins = Some(vec!["pmi2".into(), "none".into()]);
        let e = build(&c, &a, MpiFlavor::OpenMpi, &Options::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Open MPI across nodes needs Slurm's PMIx plugin") && e.contains("--local"),
            "{e}"
        );
        assert!(build(&c, &a, MpiFlavor::Mpich, &Options::default(), None).is_ok());
    }

    #[test]
    fn the_first_bad_end_names_the_rank() {
        assert_eq!(
            task_failure("srun: error: n0: tasks 0,2: Segmentation fault"),
            Some(("n0".into(), 0, "Segmentation fault".into()))
        );
        assert_eq!(
            task_failure("srun: error: n1: task 3: Exited with exit code 7"),
            Some(("n1".into(), 3, "Exited with exit code 7".into()))
        );
        assert_eq!(task_failure("srun: error: Unable to create step"), None);
        assert_eq!(task_failure("[sim:0] hello"), None);
        let seen = [
            ("n1".to_string(), 1, "Terminated".to_string()),
            ("n0".to_string(), 2, "Segmentation fault".to_string()),
        ];
        assert_eq!(
            first_failure(&seen).unwrap().1,
            2,
            "the cause, not its consequence"
        );
        assert_eq!(first_failure(&seen[..1]).unwrap().1, 1);
    }

    #[test]
    fn multi_prog_words_are_quoted() {
        assert_eq!(quote("./a.out").unwrap(), "./a.out");
        assert_eq!(quote("a b").unwrap(), "'a b'");
        assert_eq!(quote("it's").unwrap(), "\"it's\"");
        assert_eq!(quote("").unwrap(), "''");
        assert!(quote("a'\"b").is_err());
        assert!(quote("a\nb").is_err());
        let mut c = comp(&[("sim", 1, None, None)]);
        c.apps[0].cwd = Some("/work dir".into());
        let a = alloc(&["n0"], 1, false);
        let step = build(&c, &a, MpiFlavor::Mpich, &Options::default(), None).unwrap();
        assert!(
            step.multi_prog.starts_with("0-0 env -C '/work dir' -- "),
            "{}",
            step.multi_prog
        );
    }
}
