//! Two jobs at once in one server keep their ranks and events apart.

mod common;

use common::*;

#[test]
fn two_jobs_run_at_once_in_one_server() {
    let Some(progs) = Programs::build("two_jobs_run_at_once_in_one_server", &["hello"]) else {
        return;
    };
    let server = TestServer::start();
    let a = start_job(server.get(), "job-a", 2, &progs.path("hello"));
    let b = start_job(server.get(), "job-b", 3, &progs.path("hello"));
    let out_b = finish_job(server.get(), b);
    let out_a = finish_job(server.get(), a);
    assert_clean_run(2, &out_a);
    assert_clean_run(3, &out_b);
}
