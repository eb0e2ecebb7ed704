//! A bare PMIx client's PMIx_Abort message reaches the Aborted event.

mod common;

use common::*;
use hobbes_pmix::Event;

#[test]
fn pmix_abort_message_reaches_the_event() {
    let Some(progs) = Programs::build("pmix_abort_message_reaches_the_event", &[]) else {
        return;
    };
    let exe = progs.build_pmix_client();
    let server = TestServer::start();
    let job = start_job(server.get(), "pmix-abort", 1, &exe);
    let out = finish_job(server.get(), job);
    assert!(
        out.events.contains(&Event::Aborted {
            rank: 0,
            status: 7,
            message: "hobbes abort test".into()
        }),
        "{}",
        out.describe()
    );
}
