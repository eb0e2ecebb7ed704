//! libremora-ompi under real Open MPI jobs: compiles the programs in tests/c
//! and tests/f with `mpicc.openmpi`/`mpif90.openmpi` and runs them with
//! `mpirun.openmpi`, composing applications MPMD-style
//! (`-n 2 ./a : -n 2 ./b`; Open MPI gives each its MPI_APPNUM) with
//! libremora-ompi preloaded. The same programs and checks as compose.rs
//! (MPICH).
//!
//! Settings for this node (README.md): `OMPI_MCA_pml=ob1`,
//! `OMPI_MCA_btl=self,vader` (shared memory only: no UCX or network probing),
//! `OMPI_MCA_osc=sm,pt2pt` (with the default components Open MPI 4.1.4
//! cannot create a window over a one-process communicator here, not even
//! over MPI_COMM_SELF without libremora),
//! `--oversubscribe` (more ranks than the 2 cores), `--allow-run-as-root`,
//! and `TMPDIR` set to the test's scratch directory, which must exist (Open
//! MPI puts its session directory and shared-memory files there), so nothing
//! is left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{lines, run, skip, AppRun, Outcome};
use remora_pmpi::Mpi;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The preloaded library and a scratch directory for the programs, or
/// `None` (after printing SKIP) when Open MPI is not installed.
struct Env {
    lib: PathBuf,
    dir: tempfile::TempDir,
}

fn setup(test: &str) -> Option<Env> {
    let have_mpicc = Command::new("mpicc.openmpi")
        .arg("-showme:version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let lib = remora_pmpi::library_path_for(Mpi::OpenMpi);
    let have_mpirun = Command::new("mpirun.openmpi")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let (true, Some(lib), true) = (have_mpicc, lib, have_mpirun) else {
        skip(&format!("SKIP {test}: no Open MPI (mpicc.openmpi)"));
        return None;
    };
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
    /// Compile `tests/<src>` into the scratch dir as `name`, with `extra`
    /// arguments; `with_remora` links -lremora-ompi (for remora.h and
    /// Remora_Comm_universe_f).
    fn compile(
        &self,
        compiler: &str,
        src: &str,
        with_remora: bool,
        extra: &[&str],
        name: &str,
    ) -> PathBuf {
        let src = Path::new(MANIFEST_DIR).join("tests").join(src);
        let exe = self.dir.path().join(name);
        let mut cmd = Command::new(compiler);
        cmd.arg("-Wall").args(extra).arg("-o").arg(&exe).arg(&src);
        if with_remora {
            let libdir = self.lib.parent().expect("library dir");
            cmd.arg(format!("-I{}", remora_pmpi::include_dir().display()))
                .arg(format!("-L{}", libdir.display()))
                .arg(format!("-Wl,-rpath,{}", libdir.display()))
                .arg("-lremora-ompi");
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

    /// `mpirun.openmpi [-x LD_PRELOAD=libremora-ompi] -n N1 [-x K=V] exe
    /// args : -n N2 ...`
    fn mpirun(&self, preload: bool, apps: &[AppRun]) -> Outcome {
        let mut cmd = Command::new("mpirun.openmpi");
        cmd.args(["--oversubscribe", "--allow-run-as-root"]);
        if preload {
            cmd.arg("-x")
                .arg(format!("LD_PRELOAD={}", self.lib.display()));
        }
        for (i, (n, exe, args, env)) in apps.iter().enumerate() {
            if i > 0 {
                cmd.arg(":");
            }
            cmd.arg("-n").arg(n.to_string());
            for (k, v) in env {
                cmd.arg("-x").arg(format!("{k}={v}"));
            }
            cmd.arg(exe).args(*args);
        }
        cmd.current_dir(self.dir.path())
            .env("TMPDIR", self.dir.path())
            .env("OMPI_MCA_pml", "ob1")
            .env("OMPI_MCA_btl", "self,vader")
            .env("OMPI_MCA_osc", "sm,pt2pt");
        run(cmd, "mpirun.openmpi")
    }
}

/// Run compose.c as every application of `sizes` and check each process's
/// world, universe and the rest (the program checks, we read its verdicts).
/// `given`: each application gets REMORA_APP_FIRST_RANK/REMORA_APP_SIZE as
/// Remora's launcher sets them; otherwise libremora splits by MPI_APPNUM.
fn compose(test: &str, sizes: &[usize], given: bool) {
    let Some(env) = setup(test) else { return };
    let exe = env.compile("mpicc.openmpi", "c/compose.c", true, &[], "compose");
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
            let vars = if given {
                vec![
                    ("REMORA_APP_FIRST_RANK".to_string(), first.to_string()),
                    ("REMORA_APP_SIZE".to_string(), n.to_string()),
                ]
            } else {
                vec![]
            };
            first += n;
            (n, exe.as_path(), &args[..], vars)
        })
        .collect();
    let o = env.mpirun(true, &apps);
    assert!(
        !o.stderr.contains("ignoring REMORA_APP_FIRST_RANK"),
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
fn open_mpi_two_applications_each_see_their_own_world_and_share_the_universe() {
    compose(
        "open_mpi_two_applications_each_see_their_own_world_and_share_the_universe",
        &[2, 2],
        false,
    );
}

#[test]
fn open_mpi_worlds_built_from_the_ranges_remora_gives() {
    compose(
        "open_mpi_worlds_built_from_the_ranges_remora_gives",
        &[1, 2, 1],
        true,
    );
}

#[test]
fn open_mpi_abort_on_the_world_ends_the_whole_composed_job_with_its_code() {
    let test = "open_mpi_abort_on_the_world_ends_the_whole_composed_job_with_its_code";
    let Some(env) = setup(test) else { return };
    let exe = env.compile("mpicc.openmpi", "c/abort.c", true, &[], "abort");
    let args: &[&str] = &["3"];
    let o = env.mpirun(true, &[(1, &exe, args, vec![]), (1, &exe, args, vec![])]);
    assert_eq!(
        o.code,
        Some(3),
        "expected exit code 3:\n{}{}",
        o.stdout,
        o.stderr
    );
    let aborting = lines(&o.stdout, "aborting");
    assert!(
        aborting.is_empty() || aborting == ["aborting app=1 rank=0"],
        "{aborting:?}"
    );
    assert!(lines(&o.stdout, "FAIL").is_empty(), "{}", o.stdout);
}

#[test]
fn open_mpi_single_application_behaves_as_without_the_library() {
    let test = "open_mpi_single_application_behaves_as_without_the_library";
    let Some(env) = setup(test) else { return };
    let exe = env.compile("mpicc.openmpi", "c/hello.c", false, &[], "hello");
    for n in [1, 2] {
        let plain = env.mpirun(false, &[(n, &exe, &[], vec![])]);
        let preloaded = env.mpirun(true, &[(n, &exe, &[], vec![])]);
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

/// tests/f/compose.F90 built for one binding (`-DMPIF`, none, `-DF08`),
/// run as a 2 + 1 composition: own world, universe, a message across.
fn fortran_binding(test: &str, define: Option<&str>) {
    let Some(env) = setup(test) else { return };
    let has_fortran = Command::new("mpif90.openmpi")
        .arg("-showme:version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("gfortran").arg("--version").output().is_ok();
    if !has_fortran {
        skip(&format!(
            "SKIP {test}: gfortran/mpif90.openmpi not installed (scripts/deps.sh installs them)"
        ));
        return;
    }
    let extra: Vec<&str> = define.into_iter().collect();
    let exe = env.compile(
        "mpif90.openmpi",
        "f/compose.F90",
        true,
        &extra,
        "compose_fortran",
    );
    let o = env.mpirun(true, &[(2, &exe, &[], vec![]), (1, &exe, &[], vec![])]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert_eq!(
        lines(&o.stdout, "fortran"),
        [
            "fortran app=0 rank=0 size=2 sum=2 half=1 universe=0/3 usum=6 msg=1235",
            "fortran app=0 rank=1 size=2 sum=2 half=1 universe=1/3 usum=6 msg=0",
            "fortran app=1 rank=0 size=1 sum=1 half=1 universe=2/3 usum=6 msg=1235",
        ],
        "stderr:\n{}",
        o.stderr
    );
}

/// Open MPI's Fortran bindings all convert handles with PMPI_Comm_f2c,
/// which libremora-ompi interposes.
#[test]
fn open_mpi_fortran_mpif_h_program_is_composed() {
    fortran_binding(
        "open_mpi_fortran_mpif_h_program_is_composed",
        Some("-DMPIF"),
    );
}

#[test]
fn open_mpi_fortran_use_mpi_program_is_composed() {
    fortran_binding("open_mpi_fortran_use_mpi_program_is_composed", None);
}

#[test]
fn open_mpi_fortran_use_mpi_f08_program_is_composed() {
    fortran_binding(
        "open_mpi_fortran_use_mpi_f08_program_is_composed",
        Some("-DF08"),
    );
}
