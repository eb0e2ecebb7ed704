//! A minimal launcher over hobbes-pmix, for trying programs by hand and for
//! the README's measurements (the daemon's Remora launcher is the real user).
//!
//! `pmixrun [-n N] [--repeat K] PROGRAM [ARGS...]`: starts a PMIx server in
//! a fresh directory under /tmp, runs N ranks of PROGRAM as one job with the
//! environment `client_env` gives, kills the job on an abort, prints the
//! events and each run's wall time (fork of the first rank to the last exit),
//! and K runs' median. Extra environment for the ranks comes from this
//! process (PATH, OMPI_MCA_*, ...).

use hobbes_pmix::{AppLayout, Event, JobLayout, Server};
use std::process::{Child, Command};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut np = 1u32;
    let mut repeat = 1usize;
    while args.len() > 1 && args[0].starts_with('-') {
        let v = args.remove(1);
        match args.remove(0).as_str() {
            "-n" => np = v.parse().expect("-n N"),
            "--repeat" => repeat = v.parse().expect("--repeat K"),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(
        !args.is_empty(),
        "usage: pmixrun [-n N] [--repeat K] PROGRAM [ARGS...]"
    );
    let dir = std::env::temp_dir().join(format!("hobbes-pmixrun-{}", std::process::id()));
    let server = Server::start(&dir).expect("start the PMIx server");
    let (uid, gid) = ids();
    let host = hostname();
    let mut times = Vec::new();
    let mut code = 0;
    for run in 0..repeat {
        let nspace = format!("pmixrun.{}.{run}", std::process::id());
        let layout = JobLayout {
            nspace: nspace.clone(),
            apps: vec![AppLayout {
                appnum: 0,
                first_rank: 0,
                np,
                argv0: args[0].clone(),
                cwd: std::env::current_dir()
                    .ok()
                    .map(|d| d.display().to_string()),
            }],
            uid,
            gid,
            hostname: host.clone(),
        };
        let (tx, rx) = channel();
        server.register_job(&layout, tx).expect("register the job");
        let envs: Vec<_> = (0..np)
            .map(|r| server.client_env(&nspace, r).expect("client env"))
            .collect();
        let t0 = Instant::now();
        let mut children: Vec<Child> = envs
            .into_iter()
            .map(|env| {
                Command::new(&args[0])
                    .args(&args[1..])
                    .envs(server.open_mpi_env(&nspace))
                    .envs(env)
                    .spawn()
                    .expect("spawn a rank")
            })
            .collect();
        let mut finalized = 0;
        let mut aborted = None;
        while finalized < np && aborted.is_none() {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(ev) => {
                    if repeat == 1 {
                        eprintln!("pmixrun: {ev:?}");
                    }
                    match ev {
                        Event::Finalized { .. } => finalized += 1,
                        Event::Aborted { status, .. } => aborted = Some(status),
                        _ => {}
                    }
                }
                Err(_) => break,
            }
        }
        if aborted.is_some() || finalized < np {
            for c in &mut children {
                let _ = c.kill();
            }
        }
        for c in &mut children {
            let st = c.wait().expect("wait");
            if !st.success() && code == 0 {
                code = st.code().unwrap_or(1);
            }
        }
        times.push(t0.elapsed());
        if let Some(s) = aborted {
            code = s;
        }
        server.deregister_job(&nspace);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    times.sort();
    let ms: Vec<String> = times
        .iter()
        .map(|t| format!("{:.1}", t.as_secs_f64() * 1e3))
        .collect();
    eprintln!(
        "pmixrun: {repeat} run(s) of {np} rank(s), wall ms sorted [{}], median {}",
        ms.join(" "),
        ms[ms.len() / 2]
    );
    std::process::exit(code);
}

/// Our effective uid and gid: the owner of /proc/self.
fn ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata("/proc/self").expect("stat /proc/self");
    (md.uid(), md.gid())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}
