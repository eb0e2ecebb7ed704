//! Arbitrary bytes from a PMI client must never crash the server's reader: parsing a line,
//! reading a stream of commands however the bytes arrive, and answering what parsed.

#![no_main]

use std::io::{self, Read};

use hobbes_pmi::job::{Action, Job, JobConfig};
use hobbes_pmi::wire::{self, Command, CommandReader, ReadError};
use libfuzzer_sys::fuzz_target;

/// Hands out at most `step` bytes per read, with an interruption now and then.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    reads: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.reads % 5 == 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.data.len()).min(self.step);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn trickled(data: &[u8], step: usize) -> (Vec<Command>, Option<wire::WireError>) {
    let mut reader = CommandReader::new();
    let mut input = Trickle {
        data,
        step,
        reads: 0,
    };
    let mut out = Vec::new();
    loop {
        match reader.next_command(&mut input) {
            Ok(Some(c)) => out.push(c),
            Ok(None) => return (out, None),
            Err(ReadError::Wire(e)) => return (out, Some(e)),
            Err(ReadError::Io(e)) => panic!("a slice reader failed: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse_line(data);

    let (cmds, err) = wire::parse_all(data);
    let step = 1 + data.first().map_or(0, |b| usize::from(*b % 7));
    assert_eq!((cmds.clone(), err.clone()), trickled(data, step));
    if let Some(e) = err {
        // Every error reply is exactly one line.
        if let Some(reply) = e.error_reply() {
            assert_eq!(reply.to_string().matches('\n').count(), 1);
        }
    }

    // Answer what parsed, as rank 0 of a one-rank job (so barriers never block), and check
    // every reply is well-formed: one or more lines, each starting with cmd=.
    let job = Job::new(JobConfig::new("kvs_fuzz", 1)).expect("valid config");
    job.claim(0).expect("fresh rank");
    for cmd in cmds {
        if let Action::Reply(reply) = job.handle(0, cmd) {
            let text = reply.to_string();
            assert!(text.ends_with('\n'));
            for line in text.lines() {
                assert!(line.starts_with("cmd="), "{text:?}");
            }
        }
    }
});
