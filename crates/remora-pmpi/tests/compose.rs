//! libremora under real MPICH jobs: compiles the programs in tests/c (and
//! tests/f) with `mpicc.mpich`/`mpif90.mpich` and runs them with
//! `mpiexec.hydra`, composing applications MPMD-style
//! (`-n 2 ./a : -n 2 ./b`, appnum 0 and 1) with libremora preloaded.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// One compile or one MPI job; a hung job must not hang the test suite.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The preloaded library and a scratch directory for the programs, or
/// `None` (after printing SKIP) when MPICH is not installed.
struct Env {
    lib: PathBuf,
    dir: tempfile::TempDir,
}

/// Say why a test did nothing, past libtest's output capture (which only
/// takes print!/println!), so the SKIP shows in every run's log.
fn skip(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn setup(test: &str) -> Option<Env> {
    let have_mpicc = Command::new("mpicc.mpich")
        .arg("-show")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let lib = remora_pmpi::library_path();
    if !have_mpicc
        || lib.is_none()
        || Command::new("mpiexec.hydra")
            .arg("--version")
            .output()
            .is_err()
    {
        skip(&format!(
            "SKIP {test}: mpicc.mpich not installed (scripts/deps.sh installs mpich)"
        ));
        return None;
    }
    let lib = lib.unwrap().to_path_buf();
    assert!(
        lib.is_file(),
        "{} missing though the build made it",
        lib.display()
    );
    Some(Env {
        lib,
        dir: tempfile::tempdir().expect("scratch dir"),
    })
}

/// One application of an MPMD job: process count, program, arguments, environment.
type AppRun<'a> = (usize, &'a Path, &'a [&'a str], Vec<(String, String)>);

/// What a finished child left.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Kills the child's whole process group (mpiexec.hydra, its proxies and
/// the MPI processes) unless disarmed: on timeout and on a panicking test.
struct KillGroup {
    pgid: i32,
    armed: bool,
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: kill(2) with a negative pid signals a process group we
            // created for this child (process_group(0)); no memory involved.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
    }
}

/// Run `cmd` in its own process group with a bounded time, collecting output.
fn run(mut cmd: Command, what: &str) -> Outcome {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut guard = KillGroup {
        pgid: child.id() as i32,
        armed: true,
    };
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let status = child.wait();
        let _ = tx.send((s, status));
    });
    let (stdout, status) = match rx.recv_timeout(TIMEOUT) {
        Ok(done) => done,
        Err(_) => panic!("{what} did not finish within {TIMEOUT:?} (killed)"),
    };
    guard.armed = false;
    let status = status.unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
    Outcome {
        code: status.code(),
        stdout,
        stderr: err_reader.join().unwrap_or_default(),
    }
}

impl Env {
    /// Compile `tests/<src>` into the scratch dir; `with_remora` links
    /// -lremora (for programs that use remora.h).
    fn compile(&self, compiler: &str, src: &str, with_remora: bool) -> PathBuf {
        let src = Path::new(MANIFEST_DIR).join("tests").join(src);
        let exe = self
            .dir
            .path()
            .join(src.file_stem().expect("source file name"));
        let mut cmd = Command::new(compiler);
        cmd.arg("-Wall").arg("-o").arg(&exe).arg(&src);
        if compiler == "mpicc.mpich" {
            cmd.arg("-Wextra").arg("-Werror");
        }
        if with_remora {
            let libdir = self.lib.parent().expect("library dir");
            cmd.arg(format!("-I{}", remora_pmpi::include_dir().display()))
                .arg(format!("-L{}", libdir.display()))
                .arg(format!("-Wl,-rpath,{}", libdir.display()))
                .arg("-lremora");
        }
        let o = run(cmd, &format!("{compiler} {}", src.display()));
        assert_eq!(
            o.code,
            Some(0),
            "compiling {} failed:\n{}{}",
            src.display(),
            o.stdout,
            o.stderr
        );
        exe
    }

    /// `mpiexec.hydra [-genv LD_PRELOAD=libremora] -n N1 exe args : -n N2 ...`
    fn mpiexec(&self, preload: bool, apps: &[(usize, &Path, &[&str])]) -> Outcome {
        let apps: Vec<_> = apps.iter().map(|&(n, e, a)| (n, e, a, vec![])).collect();
        self.mpiexec_env(preload, &apps)
    }

    /// The same, with environment variables for each application (`-env K V`).
    fn mpiexec_env(&self, preload: bool, apps: &[AppRun]) -> Outcome {
        let mut cmd = Command::new("mpiexec.hydra");
        if preload {
            cmd.arg("-genv")
                .arg(format!("LD_PRELOAD={}", self.lib.display()));
        }
        for (i, (n, exe, args, env)) in apps.iter().enumerate() {
            if i > 0 {
                cmd.arg(":");
            }
            cmd.arg("-n").arg(n.to_string());
            for (k, v) in env {
                cmd.arg("-env").arg(k).arg(v);
            }
            cmd.arg(exe).args(*args);
        }
        cmd.current_dir(self.dir.path());
        run(cmd, "mpiexec.hydra")
    }
}

/// Output lines starting with `prefix`, sorted (ranks print in any order).
fn lines(out: &str, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// How each application learns its ranks in the world.
#[derive(Clone, Copy, PartialEq)]
enum Ranges {
    /// As under another launcher: nothing (libremora splits the world by appnum).
    None,
    /// As under Remora: REMORA_APP_FIRST_RANK/REMORA_APP_SIZE (libremora builds
    /// each world from its group).
    Given,
    /// A launcher's nonsense (a size beyond the world): ignored, with a warning.
    Bad,
}

/// Run compose.c as every application of `sizes` and check each process's
/// world, universe and the rest (the program checks, we read its verdicts).
fn compose(test: &str, sizes: &[usize]) {
    compose_with(test, sizes, Ranges::None)
}

fn compose_with(test: &str, sizes: &[usize], ranges: Ranges) {
    let Some(env) = setup(test) else { return };
    let exe = env.compile("mpicc.mpich", "c/compose.c", true);
    let spec = sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let args = [spec.as_str()];
    let total: usize = sizes.iter().sum();
    let mut first = 0;
    let apps: Vec<_> = sizes
        .iter()
        .map(|&n| {
            let vars = match ranges {
                Ranges::None => vec![],
                Ranges::Given => vec![
                    ("REMORA_APP_FIRST_RANK".to_string(), first.to_string()),
                    ("REMORA_APP_SIZE".to_string(), n.to_string()),
                ],
                Ranges::Bad => vec![
                    ("REMORA_APP_FIRST_RANK".to_string(), first.to_string()),
                    ("REMORA_APP_SIZE".to_string(), (total + 1).to_string()),
                ],
            };
            first += n;
            (n, exe.as_path(), &args[..], vars)
        })
        .collect();
    let o = env.mpiexec_env(true, &apps);
    assert_eq!(
        o.stderr.contains("ignoring REMORA_APP_FIRST_RANK"),
        ranges == Ranges::Bad,
        "stderr:\n{}",
        o.stderr
    );
    assert!(
        o.code == Some(0) && lines(&o.stdout, "FAIL").is_empty(),
        "composed job failed ({:?}):\n{}{}",
        o.code,
        o.stdout,
        o.stderr
    );
    let mut expected = Vec::new();
    let mut offset = 0;
    for (app, &n) in sizes.iter().enumerate() {
        for rank in 0..n {
            expected.push(format!(
                "OK app={app} rank={rank}/{n} universe={}/{total}",
                offset + rank
            ));
        }
        offset += n;
    }
    expected.sort();
    assert_eq!(lines(&o.stdout, "OK"), expected, "stderr:\n{}", o.stderr);
}

#[test]
fn two_applications_each_see_their_own_world_and_share_the_universe() {
    compose(
        "two_applications_each_see_their_own_world_and_share_the_universe",
        &[2, 2],
    );
}

#[test]
fn worlds_built_from_the_ranges_remora_gives() {
    compose_with(
        "worlds_built_from_the_ranges_remora_gives",
        &[2, 1, 3],
        Ranges::Given,
    );
}

#[test]
fn nonsense_ranges_fall_back_to_the_split() {
    compose_with(
        "nonsense_ranges_fall_back_to_the_split",
        &[2, 2],
        Ranges::Bad,
    );
}

#[test]
fn three_applications_of_unequal_sizes() {
    compose("three_applications_of_unequal_sizes", &[1, 2, 1]);
}

#[test]
fn abort_on_the_world_ends_the_whole_composed_job_with_its_code() {
    let Some(env) = setup("abort_on_the_world_ends_the_whole_composed_job_with_its_code") else {
        return;
    };
    let exe = env.compile("mpicc.mpich", "c/abort.c", true);
    let o = env.mpiexec(true, &[(2, &exe, &[]), (2, &exe, &[])]);
    assert_eq!(
        o.code,
        Some(7),
        "expected exit code 7:\n{}{}",
        o.stdout,
        o.stderr
    );
    // hydra may kill the job before it forwarded the aborting rank's last
    // line; if it came, it came from the right process, once.
    let aborting = lines(&o.stdout, "aborting");
    assert!(
        aborting.is_empty() || aborting == ["aborting app=1 rank=0"],
        "{aborting:?}"
    );
    assert!(lines(&o.stdout, "FAIL").is_empty(), "{}", o.stdout);
}

#[test]
fn a_single_application_behaves_as_without_the_library() {
    let Some(env) = setup("a_single_application_behaves_as_without_the_library") else {
        return;
    };
    let exe = env.compile("mpicc.mpich", "c/hello.c", false);
    for n in [1, 2, 4] {
        let plain = env.mpiexec(false, &[(n, &exe, &[])]);
        let preloaded = env.mpiexec(true, &[(n, &exe, &[])]);
        assert_eq!(plain.code, Some(0), "{}{}", plain.stdout, plain.stderr);
        assert_eq!(
            preloaded.code,
            Some(0),
            "{}{}",
            preloaded.stdout,
            preloaded.stderr
        );
        let expected = lines(&plain.stdout, "hello");
        assert_eq!(expected.len(), n, "{}", plain.stdout);
        assert!(expected[0].contains(&format!("size={n} sum={}", n * (n + 1) / 2)));
        assert_eq!(lines(&preloaded.stdout, "hello"), expected, "{n} ranks");
    }
}

/// MPICH's `mpif.h`/`use mpi` bindings call the C `MPI_*` functions, so the
/// interposition covers them (see README.md for `mpi_f08`, which it does not).
#[test]
fn fortran_use_mpi_programs_are_composed() {
    let test = "fortran_use_mpi_programs_are_composed";
    let Some(env) = setup(test) else { return };
    let has_fortran = Command::new("mpif90.mpich")
        .arg("-show")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("gfortran").arg("--version").output().is_ok();
    if !has_fortran {
        skip(&format!(
            "SKIP {test}: gfortran/mpif90.mpich not installed (scripts/deps.sh installs them)"
        ));
        return;
    }
    let exe = env.compile("mpif90.mpich", "f/compose_mpi.f90", false);
    let o = env.mpiexec(true, &[(2, &exe, &[]), (1, &exe, &[])]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert_eq!(
        lines(&o.stdout, "fortran"),
        [
            "fortran app=0 rank=0 size=2 sum=2 half=1",
            "fortran app=0 rank=1 size=2 sum=2 half=1",
            "fortran app=1 rank=0 size=1 sum=1 half=1",
        ],
        "stderr:\n{}",
        o.stderr
    );
}
