//! MPI_Abort(MPI_COMM_WORLD, 7) on rank 1 (rank 0 alone): the Aborted
//! event, then the job killed as the daemon would.

mod common;

use common::*;
use hobbes_pmix::Event;

#[test]
fn mpi_abort_reports_status_7_from_rank_1() {
    let Some(progs) = Programs::build("mpi_abort_reports_status_7_from_rank_1", &["abort"]) else {
        return;
    };
    let server = TestServer::start();
    for np in [1, 2, 4] {
        let job = start_job(
            server.get(),
            &format!("abort-{np}"),
            np,
            &progs.path("abort"),
        );
        let out = finish_job(server.get(), job);
        let aborter = if np > 1 { 1 } else { 0 };
        let aborts: Vec<_> = out
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Aborted {
                    rank,
                    status,
                    message,
                } => Some((*rank, *status, message.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(aborts.len(), 1, "one Aborted event\n{}", out.describe());
        let (rank, status, message) = &aborts[0];
        assert_eq!((*rank, *status), (aborter, 7), "{}", out.describe());
        // Open MPI 4.1's MPI_Abort sends no text of its own: "N/A".
        assert!(!message.is_empty(), "{}", out.describe());
        assert_eq!(
            count(&out.events, |e| matches!(e, Event::Connected { .. })),
            np as usize,
            "{}",
            out.describe()
        );
        assert!(
            out.stderr[aborter as usize].contains("errorcode 7"),
            "{}",
            out.describe()
        );
    }
}
