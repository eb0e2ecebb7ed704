//! Which job gets which event: registered jobs by nspace, each with its
//! event [`Sender`], its size and the ranks registered as clients.
//!
//! The PMIx progress thread calls [`Registry::dispatch`] (through a global
//! mutex held only for the lookup and the `send`), so nothing here blocks.

use crate::Event;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::Sender;

/// Event kinds as pmix_glue.c numbers them (`HP_EV_*`).
pub(crate) const EV_CONNECTED: i32 = 1;
pub(crate) const EV_FINALIZED: i32 = 2;
pub(crate) const EV_ABORTED: i32 = 3;
pub(crate) const EV_FENCE: i32 = 4;

/// An event as the C side reports it, already copied into Rust strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub kind: i32,
    pub nspace: String,
    pub rank: u32,
    pub status: i32,
    pub message: String,
    /// Number of `pmix_proc_t`s a fence named.
    pub nprocs: usize,
    /// Whether a fence named a whole nspace (`PMIX_RANK_WILDCARD`).
    pub wildcard: bool,
    pub bytes: usize,
}

#[derive(Debug)]
struct Job {
    size: u32,
    /// uid and gid its ranks run as.
    owner: (u32, u32),
    events: Sender<Event>,
    clients: BTreeSet<u32>,
}

/// The registered jobs.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    jobs: BTreeMap<String, Job>,
}

/// Why a registry operation was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RegistryError {
    Duplicate,
    UnknownJob,
    RankOutOfRange { size: u32 },
}

impl Registry {
    pub(crate) const fn new() -> Self {
        Registry {
            jobs: BTreeMap::new(),
        }
    }

    /// Add a job of `size` ranks run as `owner` (uid, gid); refused if the
    /// nspace is taken.
    pub(crate) fn insert(
        &mut self,
        nspace: &str,
        size: u32,
        owner: (u32, u32),
        events: Sender<Event>,
    ) -> Result<(), RegistryError> {
        if self.jobs.contains_key(nspace) {
            return Err(RegistryError::Duplicate);
        }
        self.jobs.insert(
            nspace.to_string(),
            Job {
                size,
                owner,
                events,
                clients: BTreeSet::new(),
            },
        );
        Ok(())
    }

    /// Remove a job; returns the ranks that were registered as clients, or
    /// `None` if there was no such job.
    pub(crate) fn remove(&mut self, nspace: &str) -> Option<Vec<u32>> {
        self.jobs
            .remove(nspace)
            .map(|j| j.clients.into_iter().collect())
    }

    /// Check that `rank` belongs to the job; if it is not yet registered as
    /// a client, the (uid, gid) to register it with.
    pub(crate) fn needs_client(
        &self,
        nspace: &str,
        rank: u32,
    ) -> Result<Option<(u32, u32)>, RegistryError> {
        let job = self.jobs.get(nspace).ok_or(RegistryError::UnknownJob)?;
        if rank >= job.size {
            return Err(RegistryError::RankOutOfRange { size: job.size });
        }
        Ok((!job.clients.contains(&rank)).then_some(job.owner))
    }

    /// Record that `rank` is registered as a client (no-op for unknown jobs).
    pub(crate) fn mark_client(&mut self, nspace: &str, rank: u32) {
        if let Some(job) = self.jobs.get_mut(nspace) {
            job.clients.insert(rank);
        }
    }

    /// Turn a raw event into an [`Event`] for its job and send it. Events
    /// for unknown (deregistered) jobs, of unknown kinds, or for a job whose
    /// receiver is gone are dropped.
    pub(crate) fn dispatch(&self, raw: RawEvent) {
        let Some(job) = self.jobs.get(&raw.nspace) else {
            return;
        };
        if let Some(ev) = to_event(raw, job.size) {
            let _ = job.events.send(ev);
        }
    }
}

/// The [`Event`] a raw event stands for in a job of `size` ranks.
fn to_event(raw: RawEvent, size: u32) -> Option<Event> {
    Some(match raw.kind {
        EV_CONNECTED => Event::Connected { rank: raw.rank },
        EV_FINALIZED => Event::Finalized { rank: raw.rank },
        EV_ABORTED => Event::Aborted {
            rank: raw.rank,
            status: raw.status,
            message: raw.message,
        },
        EV_FENCE => Event::Fence {
            participants: if raw.wildcard {
                size
            } else {
                u32::try_from(raw.nprocs).unwrap_or(u32::MAX)
            },
            bytes: raw.bytes,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn raw(kind: i32, nspace: &str) -> RawEvent {
        RawEvent {
            kind,
            nspace: nspace.to_string(),
            rank: 1,
            status: 7,
            message: "bye".to_string(),
            nprocs: 1,
            wildcard: true,
            bytes: 42,
        }
    }

    #[test]
    fn events_go_to_their_own_job_only() {
        let mut reg = Registry::new();
        let (tx_a, rx_a) = channel();
        let (tx_b, rx_b) = channel();
        reg.insert("a", 2, (0, 0), tx_a).unwrap();
        reg.insert("b", 4, (0, 0), tx_b).unwrap();
        reg.dispatch(raw(EV_CONNECTED, "a"));
        reg.dispatch(raw(EV_FENCE, "b"));
        assert_eq!(rx_a.try_recv().unwrap(), Event::Connected { rank: 1 });
        assert!(rx_a.try_recv().is_err());
        assert_eq!(
            rx_b.try_recv().unwrap(),
            Event::Fence {
                participants: 4,
                bytes: 42
            }
        );
    }

    #[test]
    fn fence_without_wildcard_counts_named_procs() {
        let ev = RawEvent {
            wildcard: false,
            nprocs: 3,
            ..raw(EV_FENCE, "a")
        };
        assert_eq!(
            to_event(ev, 8),
            Some(Event::Fence {
                participants: 3,
                bytes: 42
            })
        );
    }

    #[test]
    fn abort_carries_status_and_message() {
        assert_eq!(
            to_event(raw(EV_ABORTED, "a"), 2),
            Some(Event::Aborted {
                rank: 1,
                status: 7,
                message: "bye".to_string()
            })
        );
        assert_eq!(
            to_event(raw(EV_FINALIZED, "a"), 2),
            Some(Event::Finalized { rank: 1 })
        );
        assert_eq!(to_event(raw(99, "a"), 2), None);
    }

    #[test]
    fn removed_job_gets_no_events_and_returns_its_clients() {
        let mut reg = Registry::new();
        let (tx, rx) = channel();
        reg.insert("a", 3, (1000, 100), tx).unwrap();
        assert_eq!(reg.needs_client("a", 2), Ok(Some((1000, 100))));
        reg.mark_client("a", 2);
        reg.mark_client("a", 0);
        assert_eq!(reg.needs_client("a", 2), Ok(None));
        assert_eq!(reg.remove("a"), Some(vec![0, 2]));
        assert_eq!(reg.remove("a"), None);
        reg.dispatch(raw(EV_CONNECTED, "a"));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn duplicate_unknown_and_out_of_range_are_refused() {
        let mut reg = Registry::new();
        let (tx, _rx) = channel();
        reg.insert("a", 2, (0, 0), tx.clone()).unwrap();
        assert_eq!(
            reg.insert("a", 2, (0, 0), tx),
            Err(RegistryError::Duplicate)
        );
        assert_eq!(reg.needs_client("b", 0), Err(RegistryError::UnknownJob));
        assert_eq!(
            reg.needs_client("a", 2),
            Err(RegistryError::RankOutOfRange { size: 2 })
        );
    }

    #[test]
    fn dropped_receiver_does_not_panic() {
        let mut reg = Registry::new();
        let (tx, rx) = channel();
        reg.insert("a", 1, (0, 0), tx).unwrap();
        drop(rx);
        reg.dispatch(raw(EV_CONNECTED, "a"));
    }
}
