//! libremora under real MPICH jobs: compiles the programs in tests/c (and
//! tests/f) with `mpicc.mpich`/`mpif90.mpich` and runs them with
//! `mpiexec.hydra`, composing applications MPMD-style
//! (`-n 2 ./a : -n 2 ./b`, appnum 0 and 1) with libremora preloaded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{lines, run, skip, AppRun, Outcome};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The preloaded library and a scratch directory for the programs, or
/// `None` (after printing SKIP) when MPICH is not installed.
struct Env {
    lib: PathBuf,
    dir: tempfile::TempDir,
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

impl Env {
    /// Compile `tests/<src>` into the scratch dir; `with_remora` links
    /// -lremora (for programs that use remora.h).
    fn compile(&self, compiler: &str, src: &str, with_remora: bool) -> PathBuf {
        self.compile_as(compiler, src, with_remora, &[], None)
    }

    /// The same with extra compiler arguments, into `name` (default: the
    /// source's stem).
    fn compile_as(
        &self,
        compiler: &str,
        src: &str,
        with_remora: bool,
        extra: &[&str],
        name: Option<&str>,
    ) -> PathBuf {
        let src = Path::new(MANIFEST_DIR).join("tests").join(src);
        let exe = self.dir.path().join(
            name.map(Into::into)
                .unwrap_or_else(|| src.file_stem().expect("source file name").to_owned()),
        );
        let mut cmd = Command::new(compiler);
        cmd.arg("-Wall").args(extra).arg("-o").arg(&exe).arg(&src);
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
    let o = env.mpiexec(true, &[(2, &exe, &["7"]), (2, &exe, &["7"])]);
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

/// Is there a Fortran compiler for `mpif90`? SKIP line otherwise.
fn has_fortran(test: &str, mpif90: &str) -> bool {
    let ok = Command::new(mpif90)
        .arg("-show")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("gfortran").arg("--version").output().is_ok();
    if !ok {
        skip(&format!(
            "SKIP {test}: gfortran/{mpif90} not installed (scripts/deps.sh installs them)"
        ));
    }
    ok
}

/// MPICH's `mpif.h`/`use mpi` bindings call the C `MPI_*` functions, so the
/// interposition covers them.
#[test]
fn fortran_use_mpi_programs_are_composed() {
    let test = "fortran_use_mpi_programs_are_composed";
    let Some(env) = setup(test) else { return };
    if !has_fortran(test, "mpif90.mpich") {
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

/// What tests/f/compose.F90 prints as applications of 2 + 1 processes.
const FORTRAN_2_1: [&str; 3] = [
    "fortran app=0 rank=0 size=2 sum=2 half=1 universe=0/3 usum=6 msg=1235",
    "fortran app=0 rank=1 size=2 sum=2 half=1 universe=1/3 usum=6 msg=0",
    "fortran app=1 rank=0 size=1 sum=1 half=1 universe=2/3 usum=6 msg=1235",
];

/// tests/f/compose.F90 built for one binding (`-DMPIF`, none, `-DF08`),
/// run as a 2 + 1 composition: own world, universe, a message across.
fn fortran_binding(test: &str, define: Option<&str>) {
    let Some(env) = setup(test) else { return };
    if !has_fortran(test, "mpif90.mpich") {
        return;
    }
    let extra: Vec<&str> = define.into_iter().collect();
    let exe = env.compile_as(
        "mpif90.mpich",
        "f/compose.F90",
        true,
        &extra,
        Some("compose_fortran"),
    );
    let o = env.mpiexec(true, &[(2, &exe, &[]), (1, &exe, &[])]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert_eq!(
        lines(&o.stdout, "fortran"),
        FORTRAN_2_1,
        "stderr:\n{}",
        o.stderr
    );
}

#[test]
fn fortran_mpif_h_program_is_composed() {
    fortran_binding("fortran_mpif_h_program_is_composed", Some("-DMPIF"));
}

#[test]
fn fortran_use_mpi_program_sees_the_universe() {
    fortran_binding("fortran_use_mpi_program_sees_the_universe", None);
}

/// MPICH's mpi_f08 calls PMPI_ directly: covered by the generated f08
/// wrappers and the f08 MPI_Init hooks.
#[test]
fn fortran_use_mpi_f08_program_is_composed() {
    fortran_binding("fortran_use_mpi_f08_program_is_composed", Some("-DF08"));
}
