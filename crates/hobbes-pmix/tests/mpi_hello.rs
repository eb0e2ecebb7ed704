//! An Open MPI hello (Allreduce small and 1 MiB, Barrier) at 1, 2 and 4
//! ranks under one server: right rank and size, and every event.

mod common;

use common::*;

#[test]
fn hello_runs_at_1_2_and_4_ranks_with_all_events() {
    let Some(progs) = Programs::build("hello_runs_at_1_2_and_4_ranks_with_all_events", &["hello"])
    else {
        return;
    };
    let server = TestServer::start();
    for np in [1, 2, 4] {
        let job = start_job(
            server.get(),
            &format!("hello-{np}"),
            np,
            &progs.path("hello"),
        );
        let out = finish_job(server.get(), job);
        assert_clean_run(np, &out);
    }
}
