//! What the Slurm plugin asks of the daemon, against a real daemon as root:
//! `join_enclave` (a host process moved into an enclave and recorded as an
//! app with its Slurm ids), `task_exited`, and enclaves bound to a process
//! (`bound_to_pid`), destroyed when it ends, also across a daemon kill -9 and
//! restart. See tests/common for the harness.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use hobbes_client::proto::model::{AppState, ExitStatus};
use hobbes_client::proto::msg::{EnclaveRef, ErrorCode};
use hobbes_client::proto::slurm::{SlurmStep, SlurmTask};
use hobbes_client::{Client, ClientError};

/// A child process killed and reaped however the test ends.
struct Proc(Child);

impl Proc {
    fn sleeper() -> Proc {
        Proc(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM it and reap it.
    fn end(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn step(job: u32) -> SlurmStep {
    SlurmStep {
        job_id: job,
        step_id: 0,
        het_component: None,
        node: "n1".into(),
    }
}

fn refused(e: ClientError) -> ErrorCode {
    e.code().unwrap_or_else(|| panic!("not a refusal: {e}"))
}

fn two_cores(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if ncpus() < 2 {
        skip(
            test,
            "needs 2 cores (one for the host, one for the enclave)",
        );
        return false;
    }
    true
}

fn enclave_gone(c: &mut Client, name: &str) -> Option<()> {
    match c.enclave(EnclaveRef::Name(name.into())) {
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Some(()),
        _ => None,
    }
}

#[test]
fn a_joined_process_is_in_the_enclave_and_listed_with_its_slurm_ids() {
    let t = "a_joined_process_is_in_the_enclave_and_listed_with_its_slurm_ids";
    if !two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c
        .create_enclave_for_step(spec("slurm-5.0", 1, 128, false), Some(step(5)), None)
        .unwrap();
    assert_eq!(e.slurm, Some(step(5)));
    let mut p = Proc::sleeper();
    let task = SlurmTask {
        job_id: 5,
        step_id: 0,
        het_component: None,
        task_id: 3,
        local_id: 0,
    };
    let joined = c
        .join_enclave(
            EnclaveRef::Name("slurm-5.0".into()),
            p.pid(),
            vec!["sleep".into(), "600".into()],
            Some(task.clone()),
        )
        .unwrap();
    // Its cgroups: the enclave's cores and memory limit.
    assert_eq!(host_affinity_of(p.pid()), "1");
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid())).unwrap();
    let tag = format!("enclave-{}", e.id);
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(":memory:") && l.contains(&tag))
            || cgroups
                .lines()
                .any(|l| l.starts_with("0::") && l.contains(&tag)),
        "{cgroups}"
    );
    // The namespaces to enter are the control process's, which differ from ours.
    assert_eq!(Some(joined.ns_pid), e.control_pid);
    assert_eq!(joined.namespaces, ["ipc", "uts", "pid", "mnt"]);
    for ns in ["pid", "mnt", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{}/ns/{ns}", joined.ns_pid)).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace");
    }
    // Listed as a running app with its Slurm ids.
    let apps = c
        .list_apps(Some(EnclaveRef::Name("slurm-5.0".into())))
        .unwrap();
    let app = apps.iter().find(|a| a.id == joined.app.id).expect("listed");
    assert_eq!(app.state, AppState::Running);
    assert_eq!(app.slurm.as_ref(), Some(&task));
    assert_eq!(app.procs[0].global, p.pid());
    // hobbes list-apps shows them (when the shell is built next to leviathan).
    let hobbes = std::path::PathBuf::from(leviathan()).with_file_name("hobbes");
    if hobbes.exists() {
        let out = Command::new(&hobbes)
            .arg("--socket")
            .arg(d.socket())
            .arg("list-apps")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("5.0 task 3 (local 0)"), "{text}");
    }
    // Its end: seen by the daemon (lost), then reported (the status wins).
    p.end();
    let lost = wait_for(
        "the daemon to see the task end",
        Duration::from_secs(10),
        || {
            let a = c.app(joined.app.id).ok()?;
            a.state.is_final().then_some(a)
        },
    );
    assert_eq!(lost.state, AppState::Lost);
    let reported = c
        .task_exited(joined.app.id, ExitStatus::Signal(libc::SIGTERM))
        .unwrap();
    assert_eq!(reported.state, AppState::Crashed);
    assert_eq!(reported.exit, Some(ExitStatus::Signal(libc::SIGTERM)));
    // Reported once: a second report is a conflict.
    let again = c
        .task_exited(joined.app.id, ExitStatus::Code(0))
        .unwrap_err();
    assert_eq!(refused(again), ErrorCode::Conflict);
}

#[test]
fn a_reported_exit_status_ends_a_joined_app() {
    let t = "a_reported_exit_status_ends_a_joined_app";
    if !two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(spec("j", 1, 128, false)).unwrap();
    let p = Proc::sleeper();
    let joined = c
        .join_enclave(EnclaveRef::Name("j".into()), p.pid(), vec![], None)
        .unwrap();
    let rec = c.task_exited(joined.app.id, ExitStatus::Code(7)).unwrap();
    assert_eq!(
        (rec.state, rec.exit),
        (AppState::Exited, Some(ExitStatus::Code(7)))
    );
    drop(p);
}

#[test]
fn join_refuses_what_cannot_be_joined() {
    let t = "join_refuses_what_cannot_be_joined";
    if !two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(spec("j", 1, 128, false)).unwrap();
    let p = Proc::sleeper();
    // No such process.
    let e = c
        .join_enclave(EnclaveRef::Name("j".into()), 0x3fff_fff0, vec![], None)
        .unwrap_err();
    assert_eq!(refused(e), ErrorCode::InvalidSpec);
    // No such enclave.
    let e = c
        .join_enclave(EnclaveRef::Name("nope".into()), p.pid(), vec![], None)
        .unwrap_err();
    assert_eq!(refused(e), ErrorCode::NotFound);
    // A launched app's end is its control process's to report.
    let (app, _, _) = run_in(&mut c, "j", &["true"]);
    let e = c.task_exited(app.id, ExitStatus::Code(0)).unwrap_err();
    assert_eq!(refused(e), ErrorCode::InvalidSpec);
    // A bound process that does not exist.
    let e = c
        .create_enclave_for_step(spec("b", 1, 64, true), Some(step(9)), Some(0x3fff_fff0))
        .unwrap_err();
    assert_eq!(refused(e), ErrorCode::InvalidSpec);
    assert!(c.enclave(EnclaveRef::Name("b".into())).is_err());
}

#[test]
fn a_bound_enclave_goes_when_its_process_ends() {
    let t = "a_bound_enclave_goes_when_its_process_ends";
    if !two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let mut stepd = Proc::sleeper();
    let e = c
        .create_enclave_for_step(
            spec("slurm-6.0", 1, 128, false),
            Some(step(6)),
            Some(stepd.pid()),
        )
        .unwrap();
    assert_eq!(e.bound_to.map(|b| b.pid), Some(stepd.pid()));
    let task = Proc::sleeper();
    c.join_enclave(
        EnclaveRef::Name("slurm-6.0".into()),
        task.pid(),
        vec![],
        None,
    )
    .unwrap();
    stepd.end();
    wait_for(
        "the bound enclave to be destroyed",
        Duration::from_secs(10),
        || enclave_gone(&mut c, "slurm-6.0"),
    );
    // Its joined task went with it, and its core is free again.
    assert!(c
        .list_cores()
        .unwrap()
        .iter()
        .all(|c| c.ownership != hobbes_client::proto::model::Ownership::Allocated(e.id)));
    drop(task);
}

#[test]
fn a_bound_enclave_whose_process_ended_while_the_daemon_was_down_goes_at_restart() {
    let t = "a_bound_enclave_whose_process_ended_while_the_daemon_was_down_goes_at_restart";
    if !two_cores(t) {
        return;
    }
    let mut d = Daemon::start(&[]);
    let mut stepd = Proc::sleeper();
    {
        let mut c = d.client();
        c.create_enclave_for_step(
            spec("slurm-7.0", 1, 128, false),
            Some(step(7)),
            Some(stepd.pid()),
        )
        .unwrap();
        // One that stays: its process lives.
        c.create_enclave(spec("kept", 1, 64, true)).unwrap();
    }
    d.kill9();
    stepd.end();
    d.spawn();
    let mut c = d.client();
    wait_for(
        "the bound enclave to be destroyed after the restart",
        Duration::from_secs(15),
        || enclave_gone(&mut c, "slurm-7.0"),
    );
    assert!(c.enclave(EnclaveRef::Name("kept".into())).is_ok());
}

#[test]
fn a_joined_task_survives_a_daemon_restart_and_is_watched_again() {
    let t = "a_joined_task_survives_a_daemon_restart_and_is_watched_again";
    if !two_cores(t) {
        return;
    }
    let mut d = Daemon::start(&[]);
    let mut p = Proc::sleeper();
    let app = {
        let mut c = d.client();
        c.create_enclave(spec("j", 1, 128, false)).unwrap();
        c.join_enclave(EnclaveRef::Name("j".into()), p.pid(), vec![], None)
            .unwrap()
            .app
    };
    d.kill9();
    d.spawn();
    let mut c = d.client();
    // Once the control process is back, the joined task is still running:
    // the control process never knew it, and must not have it marked lost.
    wait_for(
        "the control process to reattach",
        Duration::from_secs(15),
        || c.ping_via_daemon(EnclaveRef::Name("j".into())).ok(),
    );
    assert_eq!(c.app(app.id).unwrap().state, AppState::Running);
    p.end();
    let ended = wait_for(
        "the restarted daemon to see the task end",
        Duration::from_secs(10),
        || {
            let a = c.app(app.id).ok()?;
            a.state.is_final().then_some(a)
        },
    );
    assert_eq!(ended.state, AppState::Lost);
}

/// Root gives the enclave and the joined app the job's user as owner
/// (`owner`); the record says so.
#[test]
fn root_gives_the_enclave_and_the_joined_app_the_job_user() {
    let t = "root_gives_the_enclave_and_the_joined_app_the_job_user";
    if !two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let user = hobbes_client::proto::msg::Owner {
        uid: 1000,
        gid: 100,
    };
    let e = c
        .create_enclave_for_job(
            spec("slurm-6.0-a", 1, 128, false),
            Some(step(6)),
            None,
            Some(user),
            None,
        )
        .unwrap();
    assert_eq!((e.owner_uid, e.owner_gid), (1000, 100));
    let mut p = Proc::sleeper();
    let joined = c
        .join_enclave_as(
            EnclaveRef::Name("slurm-6.0-a".into()),
            p.pid(),
            vec!["sleep".into()],
            None,
            Some(user),
            false,
        )
        .unwrap();
    assert_eq!((joined.app.owner_uid, joined.app.owner_gid), (1000, 100));
    p.end();
    c.destroy_enclave(EnclaveRef::Name("slurm-6.0-a".into()))
        .unwrap();
}
