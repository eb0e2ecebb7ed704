//! Remora with Open MPI: real Open MPI programs compiled here, started by
//! `remora` under leviathan's PMIx server (no `mpirun`), composed across
//! two native enclaves with libremora-ompi's rank spaces; the MPI is read
//! from each program; mixing MPICH and Open MPI in one job is refused; a
//! rank that never reaches the job's PMI server fails the job by name; a
//! `use mpi_f08` program of each MPI in a two-application job.

#[path = "../../leviathan/tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use hobbes_client::Client;
use support::*;

/// Compiled test programs, and where the rank-space libraries are.
struct Programs {
    dir: tempfile::TempDir,
    lib_dir: PathBuf,
}

impl Programs {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn compile(compiler: &str, out: &Path, src: &Path, extra: &[&str]) {
    let result = Command::new(compiler)
        .arg("-O1")
        .arg("-o")
        .arg(out)
        .arg(src)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{compiler} {}: {}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

fn programs(test: &str) -> Option<Programs> {
    for tool in ["mpicc.openmpi", "mpif90.openmpi"] {
        if Command::new(tool).arg("--version").output().is_err() {
            skip(
                test,
                &format!(
                    "no Open MPI ({tool}; scripts/deps.sh installs openmpi-bin libopenmpi-dev)"
                ),
            );
            return None;
        }
    }
    let lib_dir = PathBuf::from(leviathan())
        .parent()
        .expect("target dir")
        .to_path_buf();
    if !lib_dir.join("libremora-ompi.so").exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "remora-pmpi"])
            .status();
        if !built.is_ok_and(|s| s.success()) || !lib_dir.join("libremora-ompi.so").exists() {
            skip(
                test,
                "libremora-ompi.so is not built (cargo build -p remora-pmpi, with Open MPI installed)",
            );
            return None;
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("remora-ompi-test-")
        .tempdir()
        .unwrap();
    build_mpi_programs(
        "mpicc.openmpi",
        dir.path(),
        "",
        &["hello", "abort", "crash", "compose"],
        &lib_dir,
        "remora-ompi",
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    // The same hello, built against MPICH, for the refusals.
    if Command::new("mpicc.mpich").arg("-v").output().is_ok() {
        compile(
            "mpicc.mpich",
            &dir.path().join("hello-mpich"),
            &src.join("hello.c"),
            &[],
        );
        let f08 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/f/world_f08.f90");
        compile("mpif90.mpich", &dir.path().join("f08-mpich"), &f08, &[]);
    }
    let f08 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/f/world_f08.f90");
    compile("mpif90.openmpi", &dir.path().join("f08-ompi"), &f08, &[]);
    // Enclave processes (and nobody else) must read these.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(Programs { dir, lib_dir })
}

fn setup(test: &str) -> Option<(Daemon, Programs)> {
    setup_with(test, programs)
}

fn remora(d: &Daemon, progs: &Programs, args: &[&str]) -> Output {
    let lib = progs.lib_dir.join("libremora-ompi.so");
    remora_with(
        d,
        args,
        &[("HOBBES_REMORA_OMPI_LIB", &lib)],
        Duration::from_secs(90),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn open_mpi_hello_at_1_2_and_4_ranks_under_the_pmix_server() {
    let t = "open_mpi_hello_at_1_2_and_4_ranks_under_the_pmix_server";
    let Some((d, progs)) = setup(t) else { return };
    for n in [1, 2, 4] {
        let out = remora(
            &d,
            &progs,
            &[
                "run",
                "--enclave",
                "sim",
                "-n",
                &n.to_string(),
                &progs.path("hello"),
            ],
        );
        assert!(out.status.success(), "n={n}: {}", text(&out));
        let lines = lines_of(&out, "hello rank=");
        assert_eq!(lines.len(), n, "{}", text(&out));
        let mut ranks: Vec<i64> = lines.iter().map(|l| field(l, "rank")).collect();
        ranks.sort_unstable();
        assert_eq!(
            ranks,
            (0..n as i64).collect::<Vec<_>>(),
            "one job, not singletons"
        );
        for l in &lines {
            assert_eq!(field(l, "size"), n as i64, "{l}");
            assert_eq!(field(l, "sum"), n as i64, "allreduce: {l}");
            assert!(field(l, "pid") < 100, "in the enclave's PID namespace: {l}");
            assert_eq!(field(l, "cpu0"), 1, "on the enclave's core: {l}");
        }
    }
    let mut c = Client::connect(d.socket()).unwrap();
    let jobs = c.list_jobs().unwrap();
    assert!(
        jobs.iter().all(|j| j.exit_code == Some(0)
            && j.mpi == Some(hobbes_client::proto::msg::MpiFlavor::OpenMpi)
            && j.barriers >= 1),
        "Open MPI jobs, their fences mirrored: {jobs:?}"
    );
    let apps = c.list_apps(None).unwrap();
    assert!(apps.iter().any(|a| a.name == "hello.3"), "ranks are apps");
}

#[test]
fn open_mpi_applications_in_two_enclaves_see_their_worlds_and_share_the_universe() {
    let t = "open_mpi_applications_in_two_enclaves_see_their_worlds_and_share_the_universe";
    let Some((d, progs)) = setup(t) else { return };
    let np = [2i64, 2];
    let out = remora(
        &d,
        &progs,
        &[
            "run",
            "--enclave",
            "sim",
            "-n",
            "2",
            &progs.path("compose"),
            ":",
            "--enclave",
            "ana",
            "-n",
            "2",
            &progs.path("compose"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines = lines_of(&out, "compose app=");
    let total = np[0] + np[1];
    assert_eq!(lines.len() as i64, total, "{}", text(&out));
    for l in &lines {
        let app = field(l, "app");
        assert!(app == 0 || app == 1, "{l}");
        let own = np[app as usize];
        assert_eq!(field(l, "wsize"), own, "its own world: {l}");
        assert_eq!(field(l, "usize"), total, "the universe is the union: {l}");
        assert_eq!(field(l, "usum"), total * (total - 1) / 2, "{l}");
        assert_eq!(field(l, "wsum"), own * (own - 1) / 2, "{l}");
        assert_eq!(field(l, "urank"), app * np[0] + field(l, "wrank"), "{l}");
        if field(l, "urank") == total - 1 {
            assert_eq!(field(l, "token"), 4242, "a message crossed apps: {l}");
        }
    }
}

#[test]
fn open_mpi_abort_and_crash_end_the_job_with_their_codes() {
    let t = "open_mpi_abort_and_crash_end_the_job_with_their_codes";
    let Some((d, progs)) = setup(t) else { return };
    let out = remora(
        &d,
        &progs,
        &["run", "--enclave", "sim", "-n", "3", &progs.path("abort")],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(text(&out).contains("MPI_Abort"), "{}", text(&out));
    let out = remora(
        &d,
        &progs,
        &["run", "--enclave", "sim", "-n", "2", &progs.path("crash")],
    );
    assert_eq!(out.status.code(), Some(128 + 11), "{}", text(&out));
    assert!(
        text(&out).contains("rank 0") && text(&out).contains("signal 11"),
        "names the rank and the signal: {}",
        text(&out)
    );
    let jobs = Client::connect(d.socket()).unwrap().list_jobs().unwrap();
    assert!(
        jobs.iter().any(|j| format!("{:?}", j.state) == "Aborted"),
        "{jobs:?}"
    );
}

#[test]
fn mixed_mpis_are_refused_and_a_rank_that_never_connects_fails_the_job() {
    let t = "mixed_mpis_are_refused_and_a_rank_that_never_connects_fails_the_job";
    let Some((d, progs)) = setup(t) else { return };
    let mpich = progs.path("hello-mpich");
    if !Path::new(&mpich).exists() {
        skip(t, "no MPICH (mpicc.mpich) to mix with");
        return;
    }
    let out = remora(
        &d,
        &progs,
        &[
            "run",
            "--enclave",
            "sim",
            "-n",
            "1",
            &progs.path("hello"),
            ":",
            "--enclave",
            "ana",
            "-n",
            "1",
            &mpich,
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("mixes two MPI libraries"),
        "{}",
        text(&out)
    );
    // An MPICH program given a PMIx server (--mpi openmpi overrides what
    // remora read) never reaches it: it runs alone, and the job says so.
    let out = remora(
        &d,
        &progs,
        &[
            "--mpi",
            "openmpi",
            "run",
            "--enclave",
            "sim",
            "-n",
            "2",
            &mpich,
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ended without connecting to the job's PMIx server"),
        "{}",
        text(&out)
    );
}

#[test]
fn f08_programs_of_each_mpi_see_their_own_world() {
    let t = "f08_programs_of_each_mpi_see_their_own_world";
    let Some((d, progs)) = setup(t) else { return };
    for (prog, lib) in [
        ("f08-ompi", "libremora-ompi.so"),
        ("f08-mpich", "libremora.so"),
    ] {
        let path = progs.path(prog);
        if !Path::new(&path).exists() || !progs.lib_dir.join(lib).exists() {
            skip(t, &format!("{prog}: its MPI or {lib} is missing"));
            continue;
        }
        let out = remora(
            &d,
            &progs,
            &[
                // Enclaves remora creates (the host's IPC namespace): MPICH's
                // shared memory between enclaves needs one.
                "run",
                "--enclave",
                "f08a",
                "-n",
                "1",
                &path,
                ":",
                "--enclave",
                "f08b",
                "-n",
                "2",
                &path,
            ],
        );
        assert!(out.status.success(), "{prog}: {}", text(&out));
        let lines = lines_of(&out, "f08 wrank=");
        assert_eq!(lines.len(), 3, "{prog}: {}", text(&out));
        let mut sizes: Vec<i64> = lines.iter().map(|l| field(l, "wsize")).collect();
        sizes.sort_unstable();
        assert_eq!(
            sizes,
            vec![1, 2, 2],
            "{prog}: each application its own world"
        );
        for l in &lines {
            assert_eq!(field(l, "wsum"), field(l, "wsize"), "{prog}: {l}");
        }
    }
}
