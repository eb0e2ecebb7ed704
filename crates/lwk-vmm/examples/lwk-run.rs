//! Run one static program in a throwaway LWK, outside any daemon:
//! `cargo run -p lwk-vmm --example lwk-run -- [--cores 1] [--mib 256] PROGRAM ARGS...`
//! Prints how it ended and its system calls on stderr; exits with its code.

use std::os::fd::OwnedFd;

use lwk_vmm::{LaunchRequest, Lwk, LwkConfig};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut core = 1u32;
    let mut mib = 256u64;
    while args.len() > 1 && args[0].starts_with("--") {
        let v = args.remove(1);
        match args.remove(0).as_str() {
            "--core" => core = v.parse().expect("--core N"),
            "--mib" => mib = v.parse().expect("--mib N"),
            f => panic!("unknown flag {f}"),
        }
    }
    if args.is_empty() {
        eprintln!("usage: lwk-run [--core N] [--mib N] PROGRAM ARGS...");
        std::process::exit(2);
    }
    let lwk = Lwk::new(LwkConfig {
        numa_nodes: vec![],
        mem_bytes: mib << 20,
        cores: vec![core],
        // LWK_MEMORY_DIR: make guest RAM there (a huge-page tmpfs) instead of a memfd.
        memory_dir: std::env::var_os("LWK_MEMORY_DIR").map(Into::into),
        proxy_cores: if std::env::var_os("LWK_NO_PROXY").is_some() {
            vec![]
        } else {
            vec![0]
        },
    })
    .unwrap_or_else(|e| {
        eprintln!("lwk-run: {e}");
        std::process::exit(1)
    });
    let dup = |fd: i32| -> OwnedFd {
        // SAFETY: 0-2 are open for the life of this process.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        b.try_clone_to_owned().expect("dup")
    };
    // LWK_RUN_REPEAT=N: launch it N times first (launch-to-exit of each on stderr).
    let repeat: usize = std::env::var("LWK_RUN_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for _ in 0..repeat {
        let t = std::time::Instant::now();
        let app = lwk
            .launch(LaunchRequest {
                program: args[0].clone().into(),
                argv: args.clone(),
                env: vec![],
                cwd: std::env::current_dir().unwrap(),
                uid: 0,
                gid: 0,
                stdin: dup(0),
                stdout: std::fs::File::create("/dev/null").unwrap().into(),
                stderr: dup(2),
            })
            .expect("launch");
        let launched = t.elapsed();
        let e = app.wait();
        eprintln!(
            "lwk-run: launch {:.3} ms, launch to exit {:.3} ms ({:?})",
            launched.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3,
            e.kind
        );
    }
    let start = std::time::Instant::now();
    let app = lwk
        .launch(LaunchRequest {
            program: args[0].clone().into(),
            argv: args.clone(),
            env: std::env::vars().collect(),
            cwd: std::env::current_dir().unwrap(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            stdin: dup(0),
            stdout: dup(1),
            stderr: dup(2),
        })
        .unwrap_or_else(|e| {
            eprintln!("lwk-run: {e}");
            std::process::exit(1)
        });
    let e = app.wait();
    eprintln!(
        "lwk-run: {:?} after {:.3} ms{}\nlwk-run: {}",
        e.kind,
        start.elapsed().as_secs_f64() * 1e3,
        e.fault.map(|f| format!(", {f}")).unwrap_or_default(),
        e.calls
    );
    std::process::exit(e.kind.shell_code());
}
