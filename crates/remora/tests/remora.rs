//! Remora end to end: real MPICH programs compiled here, composed across two
//! native enclaves by `remora`, served by leviathan's PMI server.

#[path = "../../leviathan/tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use hobbes_client::Client;
use support::*;

/// Compiled test programs, and where libremora is.
struct Programs {
    dir: tempfile::TempDir,
    lib_dir: PathBuf,
}

impl Programs {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn programs(test: &str) -> Option<Programs> {
    if Command::new("mpicc.mpich").arg("-v").output().is_err() {
        skip(
            test,
            "mpicc.mpich not installed (scripts/deps.sh installs mpich libmpich-dev)",
        );
        return None;
    }
    let lib_dir = PathBuf::from(leviathan())
        .parent()
        .expect("target dir")
        .to_path_buf();
    if !lib_dir.join("libremora.so").exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "remora-pmpi"])
            .status();
        if !built.is_ok_and(|s| s.success()) || !lib_dir.join("libremora.so").exists() {
            skip(
                test,
                "libremora.so is not built (cargo build -p remora-pmpi)",
            );
            return None;
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("remora-test-")
        .tempdir()
        .unwrap();
    build_mpi_programs(
        "mpicc.mpich",
        dir.path(),
        "",
        &["hello", "compose", "abort", "crash", "spin"],
        &lib_dir,
        "remora",
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let out = Command::new("cc")
        .arg("-o")
        .arg(dir.path().join("garbage"))
        .arg(src.join("garbage.c"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Enclave processes (and nobody else) must read these.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(Programs { dir, lib_dir })
}

fn setup(test: &str) -> Option<(Daemon, Programs)> {
    setup_with(test, programs)
}

fn remora(d: &Daemon, progs: &Programs, args: &[&str]) -> Output {
    let lib = progs.lib_dir.join("libremora.so");
    remora_with(
        d,
        args,
        &[("HOBBES_REMORA_LIB", &lib)],
        Duration::from_secs(60),
    )
}

#[test]
fn hello_barrier_allreduce_at_1_2_and_4_ranks() {
    let t = "hello_barrier_allreduce_at_1_2_and_4_ranks";
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
        assert!(
            out.status.success(),
            "n={n}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = lines_of(&out, "hello rank=");
        assert_eq!(lines.len(), n, "{lines:?}");
        for l in &lines {
            assert_eq!(field(l, "size"), n as i64);
            assert_eq!(field(l, "sum"), n as i64, "allreduce");
            assert!(
                field(l, "pid") < 100,
                "runs in the enclave's PID namespace: {l}"
            );
            assert_eq!(field(l, "cpu0"), 1, "on the enclave's core: {l}");
            let rank = field(l, "rank");
            assert!(
                l.starts_with(&format!("[hello:{rank}] ")),
                "prefixed output: {l}"
            );
        }
    }
    // The socketpair PMI transport: each rank inherits its end as PMI_FD.
    let out = remora(
        &d,
        &progs,
        &[
            "--pmi",
            "socketpair",
            "run",
            "--enclave",
            "sim",
            "-n",
            "2",
            &progs.path("hello"),
        ],
    );
    assert!(
        out.status.success(),
        "socketpair: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines_of(&out, "hello rank=").len(), 2);
    // The job's PMI progress was recorded in the NIS.
    let jobs = Client::connect(d.socket()).unwrap().list_jobs().unwrap();
    assert!(
        jobs.iter()
            .all(|j| j.barriers >= 1 && j.exit_code == Some(0)),
        "{jobs:?}"
    );
    // The ranks were Leviathan apps, visible in list-apps.
    let apps = Client::connect(d.socket())
        .unwrap()
        .list_apps(None)
        .unwrap();
    assert!(
        apps.iter().any(|a| a.name == "hello.3"),
        "{:?}",
        apps.iter().map(|a| &a.name).collect::<Vec<_>>()
    );
}

/// Run `compose` as two applications and check every line it printed.
fn check_composition(d: &Daemon, progs: &Programs, enclaves: [&str; 2], np: [u32; 2]) {
    // Enclaves missing from the node are created by remora (shared cores, the
    // host's IPC namespace: a composition's default) and removed afterwards.
    let xml = format!(
        r#"<composition name="pair">
  <enclave name="{e0}" shared="true"><app name="simulation" np="{n0}"><exe>{exe}</exe></app></enclave>
  <enclave name="{e1}" shared="true"><app name="analysis" np="{n1}"><exe>{exe}</exe></app></enclave>
</composition>"#,
        e0 = enclaves[0],
        e1 = enclaves[1],
        n0 = np[0],
        n1 = np[1],
        exe = progs.path("compose")
    );
    let xml = if enclaves[0] == enclaves[1] {
        // One enclave element holding both applications.
        format!(
            r#"<composition name="pair"><enclave name="{e}">
  <app name="simulation" np="{n0}"><exe>{exe}</exe></app>
  <app name="analysis" np="{n1}"><exe>{exe}</exe></app>
</enclave></composition>"#,
            e = enclaves[0],
            n0 = np[0],
            n1 = np[1],
            exe = progs.path("compose")
        )
    } else {
        xml
    };
    let file = progs.dir.path().join("pair.xml");
    std::fs::write(&file, xml).unwrap();
    let out = remora(d, progs, &["launch", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines_of(&out, "compose app=");
    let total = (np[0] + np[1]) as i64;
    assert_eq!(lines.len() as i64, total, "{text}");
    for l in &lines {
        let app = field(l, "app");
        assert!(app == 0 || app == 1, "{l}");
        let own = np[app as usize] as i64;
        assert_eq!(
            field(l, "wsize"),
            own,
            "each application sees its own world: {l}"
        );
        assert_eq!(field(l, "usize"), total, "the universe is the union: {l}");
        assert_eq!(
            field(l, "usum"),
            total * (total - 1) / 2,
            "allreduce over the universe: {l}"
        );
        assert_eq!(
            field(l, "wsum"),
            own * (own - 1) / 2,
            "allreduce over the world: {l}"
        );
        assert_eq!(
            field(l, "dup"),
            own,
            "MPI_Comm_dup of the world stays in the app: {l}"
        );
        assert_eq!(
            field(l, "half"),
            (own - field(l, "wrank") % 2 + 1) / 2,
            "MPI_Comm_split stays in the app: {l}"
        );
        assert_eq!(
            field(l, "urank"),
            app * np[0] as i64 + field(l, "wrank"),
            "ranks are contiguous per app: {l}"
        );
        if field(l, "urank") == total - 1 {
            assert_eq!(
                field(l, "token"),
                4242,
                "a message crossed from one application to the other: {l}"
            );
        }
    }
    assert!(
        text.contains("[simulation:0]") && text.contains(&format!("[analysis:{}]", total - 1)),
        "{text}"
    );
}

#[test]
fn two_applications_in_two_enclaves_see_their_worlds_and_share_the_universe() {
    let t = "two_applications_in_two_enclaves_see_their_worlds_and_share_the_universe";
    let Some((d, progs)) = setup(t) else { return };
    // Enclaves the composition creates: own PID and mount namespaces, the host's
    // IPC namespace, so MPICH uses shared memory between the applications.
    check_composition(&d, &progs, ["left", "right"], [2, 2]);
    let enclaves = Client::connect(d.socket())
        .unwrap()
        .list_enclaves()
        .unwrap();
    assert!(
        enclaves
            .iter()
            .all(|e| e.name != "left" && e.name != "right"),
        "remora removed the enclaves it created"
    );
    // Existing enclaves with private IPC namespaces: one process each works (UCX over TCP).
    check_composition(&d, &progs, ["sim", "ana"], [1, 1]);
}

#[test]
fn two_applications_in_one_enclave_see_their_worlds_and_share_the_universe() {
    let t = "two_applications_in_one_enclave_see_their_worlds_and_share_the_universe";
    let Some((d, progs)) = setup(t) else { return };
    check_composition(&d, &progs, ["sim", "sim"], [2, 2]);
}

#[test]
fn mpi_abort_ends_the_whole_job_with_its_code() {
    let t = "mpi_abort_ends_the_whole_job_with_its_code";
    let Some((d, progs)) = setup(t) else { return };
    let out = remora(
        &d,
        &progs,
        &["run", "--enclave", "sim", "-n", "3", &progs.path("abort")],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MPI_Abort"), "{err}");
    let jobs = Client::connect(d.socket()).unwrap().list_jobs().unwrap();
    assert_eq!(format!("{:?}", jobs.last().unwrap().state), "Aborted");
}

#[test]
fn a_crashing_rank_ends_the_job_with_a_clear_message() {
    let t = "a_crashing_rank_ends_the_job_with_a_clear_message";
    let Some((d, progs)) = setup(t) else { return };
    let out = remora(
        &d,
        &progs,
        &["run", "--enclave", "sim", "-n", "2", &progs.path("crash")],
    );
    assert_eq!(
        out.status.code(),
        Some(128 + 11),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 0") && err.contains("signal 11"), "{err}");
}

#[test]
fn malformed_composition_is_refused_naming_the_line() {
    let t = "malformed_composition_is_refused_naming_the_line";
    let Some((d, progs)) = setup(t) else { return };
    let file = progs.dir.path().join("bad.xml");
    std::fs::write(&file, "<composition>\n  <enclave name=\"sim\">\n    <app name=\"x\" np=\"two\"><exe>/bin/true</exe></app>\n  </enclave>\n</composition>\n").unwrap();
    let out = remora(&d, &progs, &["launch", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("np=\"two\""),
        "{err}"
    );
}

#[test]
fn garbage_on_a_pmi_socket_does_not_hurt_another_job() {
    let t = "garbage_on_a_pmi_socket_does_not_hurt_another_job";
    let Some((d, progs)) = setup(t) else { return };
    let garbage = progs.path("garbage");
    let socket = d.socket();
    let lib = progs.lib_dir.join("libremora.so");
    let bad = std::thread::spawn(move || {
        Command::new(REMORA)
            .arg("--socket")
            .arg(socket)
            .args([
                "--no-rank-spaces",
                "run",
                "--enclave",
                "ana",
                "-n",
                "1",
                &garbage,
            ])
            .env("HOBBES_REMORA_LIB", lib)
            .output()
            .unwrap()
    });
    let good = remora(
        &d,
        &progs,
        &["run", "--enclave", "sim", "-n", "2", &progs.path("hello")],
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(lines_of(&good, "hello rank=").len(), 2);
    let bad = bad.join().unwrap();
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("garbage sent"),
        "{bad:?}"
    );
    assert!(
        Client::connect(d.socket()).unwrap().status().is_ok(),
        "the daemon is fine"
    );
}

#[test]
fn ctrl_c_reaches_every_process() {
    let t = "ctrl_c_reaches_every_process";
    let Some((d, progs)) = setup(t) else { return };
    let mut child = Command::new(REMORA)
        .arg("--socket")
        .arg(d.socket())
        .args(["run", "--enclave", "sim", "-n", "2", &progs.path("spin")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = Client::connect(d.socket()).unwrap();
    wait_for("both ranks to run", Duration::from_secs(30), || {
        let apps = c.list_apps(None).unwrap();
        (apps
            .iter()
            .filter(|a| {
                a.name.starts_with("spin.")
                    && a.state == hobbes_client::proto::model::AppState::Running
            })
            .count()
            == 2)
            .then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_for("remora to end", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "the ranks died of the forwarded SIGTERM"
    );
    let apps = c.list_apps(None).unwrap();
    assert!(apps
        .iter()
        .filter(|a| a.name.starts_with("spin."))
        .all(|a| a.state.is_final()));
}

/// Every rank loads the topology the daemon exported instead of discovering
/// the machine, and sees exactly what its own discovery would show (its
/// enclave's cores: a free core, and the host's shared one).
#[test]
fn ranks_see_their_own_discovery_through_the_shared_topology() {
    let t = "ranks_see_their_own_discovery_through_the_shared_topology";
    if Command::new("lstopo-no-graphics")
        .arg("--version")
        .output()
        .is_err()
    {
        skip(
            t,
            "lstopo-no-graphics not installed (apt-get install hwloc-nox)",
        );
        return;
    }
    let Some((d, progs)) = setup(t) else { return };
    // hwloc's XML, without what differs between two loads of one machine.
    let script = progs.dir.path().join("topology.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
norm() { sed -e 's/ gp_index="[0-9]*"//' -e '/hwlocVersion\|ProcessName/d'; }
[ -n "$HWLOC_XMLFILE" ] || { echo "TOPOLOGY none"; exit 0; }
shared=$(lstopo-no-graphics --of xml | norm)
own=$(env -u HWLOC_XMLFILE -u HWLOC_THISSYSTEM -u HWLOC_THISSYSTEM_ALLOWED_RESOURCES -u HWLOC_PLUGINS_BLACKLIST lstopo-no-graphics --of xml | norm)
pus=$(lstopo-no-graphics --only pu | tr '\n' ' ')
if [ "$shared" = "$own" ]; then echo "TOPOLOGY same pus=$pus"; else
  echo "$shared" > "$1.$$.shared"; echo "$own" > "$1.$$.own"
  echo "TOPOLOGY differ: $(diff "$1.$$.shared" "$1.$$.own" | tr '\n' ' ')"; fi
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (script, diff) = (
        script.display().to_string(),
        progs.dir.path().join("diff").display().to_string(),
    );
    let out = remora(
        &d,
        &progs,
        &[
            "--no-rank-spaces",
            "run",
            "--enclave",
            "sim",
            "-n",
            "1",
            &script,
            &diff,
            ":",
            "--enclave",
            "ana",
            "-n",
            "1",
            &script,
            &diff,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines_of(&out, "TOPOLOGY");
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert!(
            l.contains("TOPOLOGY same pus=PU L#0 "),
            "one core each, as discovered (< shared topology, > discovery): {l}"
        );
    }
}
