//! Applications: launch, list, kill, wait.

use std::io::Write;

use anyhow::{bail, Result};
use hobbes_client::Client;
use hobbes_proto::model::{AppId, AppRecord, AppState, ExitStatus};
use hobbes_proto::msg::{EnclaveRef, LaunchSpec, Stream};

use crate::args::signal_name;
use crate::cli::LaunchArgs;
use crate::human::{self, Names};
use crate::table::Table;
use crate::Ctx;

pub fn launch(ctx: &Ctx, args: LaunchArgs) -> Result<i32> {
    let spec = LaunchSpec {
        enclave: EnclaveRef::parse(&args.enclave),
        name: args.name,
        argv: args.argv,
        env: args.env,
        cwd: args.cwd,
        stream: args.wait,
    };
    let mut client = ctx.connect()?;
    if args.wait {
        let rec = run_streaming(&mut client, spec)?;
        if ctx.json {
            ctx.print_json(&rec)?;
        }
        return exit_code(&rec);
    }
    let rec = client.launch(spec)?;
    if rec.state == AppState::Failed {
        bail!("{}", failure(&rec));
    }
    if ctx.json {
        ctx.print_json(&rec)?;
    } else {
        // Just the id, so scripts can do APP=$(hobbes launch-app ...).
        println!("{}", rec.id);
    }
    Ok(0)
}

/// Launch with the app's output copied to ours as it comes; returns the
/// final record once the app has ended.
pub(super) fn run_streaming(client: &mut Client, spec: LaunchSpec) -> Result<AppRecord> {
    let rec = client.launch_streaming(
        spec,
        |_| {},
        |stream, data| {
            // Nothing useful to do on a failed write: the app's log file has
            // everything. (A closed pipe ends hobbes by SIGPIPE, see main;
            // the app keeps running.)
            let _ = match stream {
                Stream::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(data).and_then(|()| out.flush())
                }
                Stream::Stderr => std::io::stderr().lock().write_all(data),
            };
        },
    )?;
    Ok(rec)
}

fn failure(rec: &AppRecord) -> String {
    format!(
        "app {} ({}) {}: {}",
        rec.id,
        rec.name,
        if rec.state == AppState::Failed {
            "failed to start"
        } else {
            "ended without an exit status"
        },
        rec.detail.as_deref().unwrap_or("no detail")
    )
}

/// The shell exit code of an ended app (128+N when killed by signal N).
pub(super) fn exit_code(rec: &AppRecord) -> Result<i32> {
    match rec.exit {
        Some(status @ ExitStatus::Signal(sig)) => {
            // The detail says what killed it, where its enclave knows (an
            // LWK names the guest fault).
            eprintln!(
                "hobbes: app {} ({}) killed by {}{}",
                rec.id,
                rec.name,
                signal_name(sig),
                rec.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
            Ok(status.shell_code())
        }
        Some(status) => Ok(status.shell_code()),
        None => bail!("{}", failure(rec)),
    }
}

pub fn list(ctx: &Ctx, client: &mut Client, enclave: Option<EnclaveRef>) -> Result<i32> {
    let apps = client.list_apps(enclave)?;
    if ctx.json {
        ctx.print_json(&apps)?;
        return Ok(0);
    }
    let names = Names::new(&client.list_enclaves()?);
    // DETAIL last: it is the long one (why it failed or was lost; an LWK
    // app's fault and system calls).
    // SLURM (job.step[+component] task T (local L)) when any app is a Slurm task.
    let slurm = apps.iter().any(|a| a.slurm.is_some());
    let mut header = vec!["ID", "NAME", "ENCLAVE", "STATE", "PIDS", "EXIT", "STARTED"];
    if slurm {
        header.push("SLURM");
    }
    header.push("DETAIL");
    let mut t = Table::new(&header);
    for a in &apps {
        let pids: Vec<String> = a
            .procs
            .iter()
            // A guest's processes (VM, LWK) have no host pid: "-".
            .map(|p| match p.global {
                0 => format!("{}/-", p.local),
                g => format!("{}/{g}", p.local),
            })
            .collect();
        let mut row = vec![
            a.id.to_string(),
            a.name.clone(),
            names.of(a.enclave),
            a.state.to_string(),
            if pids.is_empty() {
                "-".into()
            } else {
                pids.join(",")
            },
            a.exit.map_or("-".into(), |e| e.to_string()),
            human::age(a.started_ms),
        ];
        if slurm {
            row.push(a.slurm.as_ref().map_or("-".into(), |s| s.to_string()));
        }
        row.push(a.detail.clone().unwrap_or_else(|| "-".into()));
        t.row(row);
    }
    t.print_or("no apps");
    Ok(0)
}

pub fn kill(ctx: &Ctx, app: AppId, signal: i32) -> Result<i32> {
    ctx.connect()?.kill_app(app, signal)?;
    if !ctx.json {
        println!("sent {} to app {app}", signal_name(signal));
    }
    Ok(0)
}

pub fn wait(ctx: &Ctx, app: AppId) -> Result<i32> {
    let rec = ctx.connect()?.wait_app(app)?;
    if ctx.json {
        ctx.print_json(&rec)?;
    } else if let Some(exit) = rec.exit {
        match &rec.detail {
            Some(detail) => println!(
                "app {} ({}): {} ({exit}): {detail}",
                rec.id, rec.name, rec.state
            ),
            None => println!("app {} ({}): {} ({exit})", rec.id, rec.name, rec.state),
        }
    }
    exit_code(&rec)
}
