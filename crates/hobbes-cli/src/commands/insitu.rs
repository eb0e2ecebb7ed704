//! `hobbes demo insitu`: the composed in situ workflow. It lives with the
//! workloads (crates/hobbes-workloads, `hobbes-insitu demo`), so the node
//! shell links none of them: this execs `hobbes-insitu demo` with the flags as
//! given (plus `--socket` and `--json` when given before `demo`), so its
//! output, help and exit status are the demo's own.
//!
//! `hobbes demo insitu --slurm [--nodes N] FLAGS` is the multi-node form,
//! inside a Slurm allocation: XEMEM and XASM are node-local, so the workflow
//! across nodes is one simulation and one analytics enclave per node. It runs
//! `srun -N N --ntasks-per-node=1 hobbes demo insitu --slurm-node FLAGS`;
//! each node's task talks to its own node's leviathan (`--socket` may name
//! it with `%n`, the Slurm node name, as the SPANK plugin's `socket=` does)
//! and writes its report to `<out>/<node>`; then a summary per node.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::Ctx;

/// The binary that holds the demo.
const INSITU: &str = "hobbes-insitu";
/// Tells `hobbes-insitu demo` which command line to show in its usage lines
/// (hobbes_workloads::demo::SHOWN_AS_ENV; this crate does not link it).
const SHOWN_AS_ENV: &str = "HOBBES_INSITU_DEMO_AS";
/// The demo's default report directory (hobbes_workloads::demo::DemoArgs::out).
const DEFAULT_OUT: &str = "insitu-report";

/// Which form of the demo the flags ask for.
#[derive(Debug, PartialEq, Eq)]
enum Form {
    /// On this node.
    Local,
    /// Across the allocation's nodes (`--slurm`, `--nodes N`).
    Slurm { nodes: Option<u32> },
    /// One node's part of the multi-node form (`--slurm-node`, internal).
    SlurmNode,
}

/// Take our own flags (`--slurm`, `--nodes N`, `--slurm-node`) out of the
/// demo's.
fn split_form(args: Vec<OsString>) -> Result<(Form, Vec<OsString>)> {
    let mut form = Form::Local;
    let mut nodes = None;
    let mut rest = vec![];
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--slurm") => {
                if form == Form::SlurmNode {
                    bail!("--slurm and --slurm-node exclude each other");
                }
                form = Form::Slurm { nodes: None };
            }
            Some("--slurm-node") => form = Form::SlurmNode,
            Some("--nodes") => {
                let n = it.next().ok_or_else(|| anyhow!("--nodes needs a number"))?;
                nodes = Some(
                    n.to_string_lossy()
                        .parse()
                        .context("--nodes needs a number")?,
                );
            }
            Some(s) if s.starts_with("--nodes=") => {
                nodes = Some(
                    s["--nodes=".len()..]
                        .parse()
                        .context("--nodes needs a number")?,
                );
            }
            _ => rest.push(a),
        }
    }
    match (&mut form, nodes) {
        (Form::Slurm { nodes: n }, Some(v)) => *n = Some(v),
        (_, Some(_)) => bail!("--nodes goes with --slurm (the multi-node form)"),
        _ => {}
    }
    Ok((form, rest))
}

pub fn run(ctx: &Ctx, args: Vec<OsString>) -> Result<i32> {
    let (form, args) = split_form(args)?;
    match form {
        Form::Local => exec_demo(ctx, &ctx.socket, args),
        Form::SlurmNode => node_part(ctx, args),
        Form::Slurm { nodes } => across_nodes(ctx, nodes, args),
    }
}

/// Exec `hobbes-insitu demo --socket SOCKET [--json] ARGS`.
fn exec_demo(ctx: &Ctx, socket: &Path, args: Vec<OsString>) -> Result<i32> {
    let exe = find_insitu()?;
    let mut cmd = Command::new(&exe);
    cmd.arg("demo").arg("--socket").arg(socket);
    if ctx.json {
        cmd.arg("--json");
    }
    // After ours: a --socket among them wins.
    cmd.args(args).env(SHOWN_AS_ENV, "hobbes demo insitu");
    // Only returns on failure.
    let err = cmd.exec();
    Err(anyhow!("cannot run {}: {err}", exe.display()))
}

/// The demo's `--out` in `args` (default `insitu-report`), and `args`
/// without it.
fn take_out(args: Vec<OsString>) -> (PathBuf, Vec<OsString>) {
    let mut out = PathBuf::from(DEFAULT_OUT);
    let mut rest = vec![];
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--out") => {
                if let Some(v) = it.next() {
                    out = PathBuf::from(v);
                }
            }
            Some(s) if s.starts_with("--out=") => out = PathBuf::from(&s["--out=".len()..]),
            _ => rest.push(a),
        }
    }
    (out, rest)
}

/// `%n` in a socket path: the Slurm node name.
fn node_socket(socket: &Path, node: &str) -> PathBuf {
    PathBuf::from(socket.to_string_lossy().replace("%n", node))
}

/// One node's part: its own leviathan (no embedded one: a node without
/// leviathan fails, naming itself), its report in `<out>/<node>`.
fn node_part(ctx: &Ctx, args: Vec<OsString>) -> Result<i32> {
    let node = std::env::var("SLURMD_NODENAME")
        .map_err(|_| anyhow!("--slurm-node runs inside an srun step (no SLURMD_NODENAME)"))?;
    let socket = node_socket(&ctx.socket, &node);
    if let Err(e) = hobbes_client::Client::connect(&socket) {
        bail!(
            "node {node}: no leviathan at {} ({e}): start leviathan on every node of the allocation (or name each node's socket with --socket PATH, %n for the node name)",
            socket.display()
        );
    }
    // The first line: which node this task is (the launcher labels by it).
    println!("[node] {node}");
    let _ = std::io::stdout().flush();
    let (out, mut rest) = take_out(args);
    rest.push("--out".into());
    rest.push(out.join(&node).into_os_string());
    exec_demo(ctx, &socket, rest)
}

/// The nodes of the allocation (`SLURM_JOB_NUM_NODES`), or why not in one.
fn allocation_nodes() -> Result<u32> {
    if std::env::var_os("SLURM_JOB_ID").is_none() {
        bail!("--slurm runs the demo across the nodes of a Slurm allocation: run it inside one (salloc -N 2 hobbes demo insitu --slurm ...)");
    }
    std::env::var("SLURM_JOB_NUM_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("SLURM_JOB_NUM_NODES is not set"))
}

/// The srun command line of the multi-node form.
fn srun_args(
    ctx: &Ctx,
    hobbes: &Path,
    nodes: u32,
    socket_given: bool,
    args: &[OsString],
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        format!("--nodes={nodes}").into(),
        "--ntasks-per-node=1".into(),
        format!("--ntasks={nodes}").into(),
        "--label".into(),
        "--kill-on-bad-exit=0".into(),
        "--job-name=hobbes-demo-insitu".into(),
        hobbes.into(),
    ];
    if socket_given {
        a.push("--socket".into());
        a.push(ctx.socket.clone().into_os_string());
    }
    a.push("demo".into());
    a.push("insitu".into());
    a.push("--slurm-node".into());
    a.extend(args.iter().cloned());
    a
}

/// The multi-node form: one task per node, each node's output labelled with
/// its node, then a summary per node.
fn across_nodes(ctx: &Ctx, nodes: Option<u32>, args: Vec<OsString>) -> Result<i32> {
    let have = allocation_nodes()?;
    let nodes = nodes.unwrap_or(have);
    if nodes == 0 || nodes > have {
        bail!("--nodes {nodes}: the allocation has {have} nodes (SLURM_JOB_NUM_NODES)");
    }
    let srun = which("srun").ok_or_else(|| anyhow!("srun is not in PATH"))?;
    let hobbes = std::env::current_exe().context("cannot find the hobbes binary")?;
    // The socket the user named (with %n for each node), else each node's default.
    let socket_given = std::env::var_os("HOBBES_SOCKET").is_some() || socket_flag_given();
    let argv = srun_args(ctx, &hobbes, nodes, socket_given, &args);
    let (out_dir, _) = take_out(args.clone());
    println!(
        "[hobbes] in situ demo on {nodes} node(s) of job {}: one simulation and one analytics enclave per node (XEMEM/XASM stay node-local)",
        std::env::var("SLURM_JOB_ID").unwrap_or_default()
    );
    let mut child = Command::new(&srun)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", srun.display()))?;
    // Task id -> node: srun --label numbers the tasks; each says its node.
    let stdout = child.stdout.take().context("srun's stdout")?;
    let mut task_nodes: std::collections::BTreeMap<u32, String> = Default::default();
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        let (task, text) = match line.trim_start().split_once(": ") {
            Some((t, rest)) if t.parse::<u32>().is_ok() => (t.parse::<u32>().ok(), rest),
            _ => (None, line.as_str()),
        };
        if let (Some(t), Some(node)) = (task, text.strip_prefix("[node] ")) {
            task_nodes.insert(t, node.to_string());
            continue;
        }
        let label = task
            .map(|t| {
                task_nodes
                    .get(&t)
                    .cloned()
                    .unwrap_or_else(|| format!("task {t}"))
            })
            .unwrap_or_default();
        let mut o = std::io::stdout().lock();
        if label.is_empty() {
            let _ = writeln!(o, "{text}");
        } else {
            let _ = writeln!(o, "[{label}] {text}");
        }
    }
    let status = child.wait()?;
    let code = status.code().unwrap_or(1);
    println!();
    println!("[hobbes] summary, {nodes} node(s):");
    let reports = node_reports(&out_dir);
    if reports.is_empty() {
        println!("  no node wrote a report under {}", out_dir.display());
    }
    let mut torn_total = 0;
    for (node, runs, torn) in &reports {
        torn_total += torn;
        println!(
            "  {node:<12} {runs:>3} runs, {torn} torn states, report {}",
            out_dir.join(node).display()
        );
    }
    let ok = code == 0 && reports.len() == nodes as usize && torn_total == 0;
    println!(
        "  {}: {} of {nodes} node(s) reported; srun exit {code}",
        if ok { "ok" } else { "FAILED" },
        reports.len()
    );
    Ok(if ok {
        0
    } else if code != 0 {
        code
    } else {
        1
    })
}

/// Whether `--socket` was given on the command line (before `demo`).
fn socket_flag_given() -> bool {
    std::env::args().any(|a| a == "--socket" || a.starts_with("--socket="))
}

/// Each node's report under `out`: (node, runs, torn states).
fn node_reports(out: &Path) -> Vec<(String, usize, u64)> {
    let mut found = vec![];
    let Ok(dir) = std::fs::read_dir(out) else {
        return found;
    };
    for entry in dir.flatten() {
        let json = entry.path().join("insitu-runs.json");
        let Ok(text) = std::fs::read_to_string(&json) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let runs = value.as_array().map_or(0, Vec::len);
        found.push((
            entry.file_name().to_string_lossy().into_owned(),
            runs,
            sum_field(&value, "torn"),
        ));
    }
    found.sort();
    found
}

/// The sum of every numeric `key` field anywhere in `v`.
fn sum_field(v: &serde_json::Value, key: &str) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                if k == key {
                    x.as_u64().unwrap_or(0)
                } else {
                    sum_field(x, key)
                }
            })
            .sum(),
        serde_json::Value::Array(a) => a.iter().map(|x| sum_field(x, key)).sum(),
        _ => 0,
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// `hobbes-insitu` next to this executable (cargo builds both into
/// target/<profile>/), else in PATH.
fn find_insitu() -> Result<PathBuf> {
    hobbes_embedded::find_beside_or_in_path(INSITU).ok_or_else(|| {
        anyhow!(
            "`hobbes demo insitu` runs {INSITU}, which is neither next to hobbes nor in PATH: \
             build it (`cargo build -p hobbes-workloads`, with --release for target/release)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn our_flags_come_out_of_the_demos() {
        let (f, rest) = split_form(os(&[
            "--sizes", "12", "--slurm", "--nodes", "2", "--steps", "5",
        ]))
        .unwrap();
        assert_eq!(f, Form::Slurm { nodes: Some(2) });
        assert_eq!(rest, os(&["--sizes", "12", "--steps", "5"]));
        let (f, rest) = split_form(os(&["--slurm-node", "--out", "r"])).unwrap();
        assert_eq!(f, Form::SlurmNode);
        assert_eq!(take_out(rest), (PathBuf::from("r"), vec![]));
        assert_eq!(split_form(os(&["--sizes", "12"])).unwrap().0, Form::Local);
        assert!(
            split_form(os(&["--nodes", "2"])).is_err(),
            "--nodes without --slurm"
        );
        assert_eq!(
            take_out(os(&["--out=x", "--steps", "3"])),
            (PathBuf::from("x"), os(&["--steps", "3"]))
        );
        assert_eq!(take_out(vec![]).0, PathBuf::from(DEFAULT_OUT));
    }

    #[test]
    fn each_node_has_its_socket_and_srun_runs_one_task_per_node() {
        assert_eq!(
            node_socket(Path::new("/tmp/c/%n/hobbes/leviathan.sock"), "n1"),
            PathBuf::from("/tmp/c/n1/hobbes/leviathan.sock")
        );
        let ctx = Ctx {
            socket: "/s/%n.sock".into(),
            json: false,
        };
        let a = srun_args(
            &ctx,
            Path::new("/bin/hobbes"),
            2,
            true,
            &os(&["--steps", "3"]),
        );
        assert_eq!(
            a,
            os(&[
                "--nodes=2",
                "--ntasks-per-node=1",
                "--ntasks=2",
                "--label",
                "--kill-on-bad-exit=0",
                "--job-name=hobbes-demo-insitu",
                "/bin/hobbes",
                "--socket",
                "/s/%n.sock",
                "demo",
                "insitu",
                "--slurm-node",
                "--steps",
                "3"
            ])
        );
        let v: serde_json::Value =
            serde_json::json!([{"a": {"torn": 2}}, {"torn": 1, "b": [{"torn": 3}]}]);
        assert_eq!(sum_field(&v, "torn"), 6);
    }
}
