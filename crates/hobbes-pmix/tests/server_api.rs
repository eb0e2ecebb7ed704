//! Server API behaviour with a live libpmix, in one test because one process
//! gets one server: start twice, client_env errors and contents, duplicate
//! jobs, deregistration, and no restart after the last handle is dropped.

mod common;

use common::*;
use hobbes_pmix::{PmixError, Server};
use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::Arc;

#[test]
fn server_api_start_env_errors_and_no_restart() {
    if !Server::available() {
        println!("SKIP server_api_start_env_errors_and_no_restart: no libpmix");
        return;
    }
    let server = TestServer::start();
    let s = server.get();

    // start twice: the same server for the same dir, an error naming it otherwise.
    let again = Server::start(s.tmpdir()).expect("second start");
    assert!(Arc::ptr_eq(server.server.as_ref().unwrap(), &again));
    drop(again);
    let err = Server::start(Path::new("/tmp/hobbes-pmix-other")).unwrap_err();
    assert!(
        err.to_string().contains(&s.tmpdir().display().to_string()),
        "{err}"
    );

    // client_env: unknown job, rank out of range, then the real thing.
    assert!(s.client_env("nope", 0).is_err());
    let (tx, _rx) = channel();
    s.register_job(&layout("env-job", 2, Path::new("/bin/true")), tx)
        .expect("register");
    assert!(s.job_dir("env-job").is_dir());
    let err = s.client_env("env-job", 2).unwrap_err().to_string();
    assert!(err.contains("rank 2"), "{err}");
    let env = s.client_env("env-job", 1).expect("env");
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("PMIX_NAMESPACE"), Some("env-job"));
    assert_eq!(get("PMIX_RANK"), Some("1"));
    assert!(get("PMIX_SERVER_URI4").is_some(), "{env:?}");
    assert!(get("PMIX_SECURITY_MODE").is_some(), "{env:?}");
    // Only what setup_fork adds: nothing of the test's own environment.
    assert!(env.iter().all(|(n, _)| n.starts_with("PMIX_")), "{env:?}");
    // Asking again does not register the rank twice and gives the same set.
    assert_eq!(
        s.client_env("env-job", 1).expect("env again").len(),
        env.len()
    );

    // A second job of the same name is refused while the first is registered.
    let (tx, _rx) = channel();
    let err = s
        .register_job(&layout("env-job", 2, Path::new("/bin/true")), tx)
        .unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");

    // Deregistered: gone, its directory too, and the name is free again.
    s.deregister_job("env-job");
    assert!(s.client_env("env-job", 0).is_err());
    assert!(!s.job_dir("env-job").exists());
    let (tx, _rx) = channel();
    s.register_job(&layout("env-job", 1, Path::new("/bin/true")), tx)
        .expect("register the name again");
    s.deregister_job("env-job");

    // The last handle finalizes; libpmix cannot start again in this process.
    let dir = s.tmpdir().to_path_buf();
    drop(server);
    let err = Server::start(&dir).unwrap_err();
    assert!(matches!(err, PmixError::Unavailable(_)), "{err}");
}
