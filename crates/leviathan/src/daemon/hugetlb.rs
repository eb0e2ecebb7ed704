//! `leviathan --hugepages N`: hugetlb pages reserved for the daemon's
//! lifetime, for XEMEM segments (`alloc` takes free hugetlb pages first).
//!
//! The reserve is the node's `vm.nr_hugepages`. The daemon adds N to it at
//! start and puts back what it found at a clean exit; pages still in use
//! then stay until they are freed (the kernel keeps them as surplus). What
//! it found is written to `<state>/hugepages` first, so that after a
//! `kill -9` the next daemon, or `leviathan cleanup`, gives the pages back
//! instead of adding to them.

use std::path::{Path, PathBuf};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// What the daemon added to the node's hugetlb reserve.
#[derive(Debug)]
pub struct Reservation {
    record: PathBuf,
    previous: u64,
    /// Pages added (the kernel may find fewer than asked).
    pub added: u64,
}

/// Add `n` pages to the node's reserve; `Err` says why none could be.
pub fn reserve(root: &Path, n: u64) -> Result<Reservation, String> {
    give_back(root);
    let previous = read_reserve()?;
    let record = record_path(root);
    std::fs::write(&record, format!("{previous}\n"))
        .map_err(|e| format!("cannot write {}: {e}", record.display()))?;
    let want = previous.saturating_add(n);
    if let Err(e) = std::fs::write(NR_HUGEPAGES, want.to_string()) {
        let _ = std::fs::remove_file(&record);
        return Err(format!("cannot set {NR_HUGEPAGES} to {want}: {e}"));
    }
    // The kernel reserves what it can find: fewer pages when memory is
    // fragmented.
    let got = read_reserve()?.saturating_sub(previous);
    if got < n {
        tracing::warn!(
            asked = n,
            got,
            "the kernel found fewer hugetlb pages than asked"
        );
    }
    tracing::info!(pages = got, previous, "hugetlb pages reserved");
    Ok(Reservation {
        record,
        previous,
        added: got,
    })
}

impl Reservation {
    /// Put the node's reserve back to what it was.
    pub fn release(self) {
        restore(&self.record, self.previous);
    }
}

/// After a crash: put back the reserve a killed daemon recorded, if any.
/// Returns whether there was one.
pub fn give_back(root: &Path) -> bool {
    let record = record_path(root);
    let Some(previous) = std::fs::read_to_string(&record)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return false;
    };
    restore(&record, previous);
    true
}

fn restore(record: &Path, previous: u64) {
    match std::fs::write(NR_HUGEPAGES, previous.to_string()) {
        Ok(()) => {
            let _ = std::fs::remove_file(record);
            tracing::info!(previous, "hugetlb reserve given back");
        }
        Err(e) => tracing::warn!(error = %e, previous, "cannot give the hugetlb reserve back"),
    }
}

fn record_path(root: &Path) -> PathBuf {
    root.join("hugepages")
}

fn read_reserve() -> Result<u64, String> {
    std::fs::read_to_string(NR_HUGEPAGES)
        .map_err(|e| format!("cannot read {NR_HUGEPAGES}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))
}
