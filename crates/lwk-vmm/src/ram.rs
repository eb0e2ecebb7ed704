//! Guest RAM: one shareable file, fully populated, and who owns which chunk.
//!
//! The file is made in the daemon's huge-page tmpfs when there is one (its
//! pages are then 2 MiB transparent huge pages) or is a memfd. It is
//! allocated whole (`fallocate`) and mapped `MAP_POPULATE`, so no guest
//! access ever takes a host page fault: the prototype measured first touch
//! 3.8x slower without it. Keeping it a file (not anonymous memory) is what
//! lets XEMEM share an LWK app's memory later without copies.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout::{HUGE, PAGE};
use crate::LwkError;

/// The enclave's guest RAM and its chunk allocator.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    /// The host address of guest-physical 0 (the mapping is one region).
    host_base: usize,
    chunks: Mutex<ChunkMap>,
    /// Page-table pages: fresh ones, and retired ones (see [`GuestRam::free_pt_pages`]).
    pt_pages: Mutex<PtPool>,
}

/// 4 KiB pages for page tables, carved out of chunks that stay page-table
/// chunks for good.
#[derive(Default)]
struct PtPool {
    /// Pages no app has used since the last shadow flush.
    fresh: Vec<u64>,
    /// Pages of ended apps, waiting for a flush.
    retired: Vec<u64>,
}

/// Which 2 MiB chunks are free, and which free ones still hold an old app's
/// data (dirty: zeroed before reuse, or by [`GuestRam::scrub`] while idle,
/// so a launch rarely waits for zeroing).
struct ChunkMap {
    free: Vec<bool>,
    dirty: Vec<bool>,
    free_count: usize,
}

impl ChunkMap {
    /// Take `n` contiguous free chunks, clean ones first; their index.
    fn take(&mut self, n: usize) -> Option<usize> {
        let fits = |c: &ChunkMap, i: usize, clean: bool| {
            i + n <= c.free.len() && (i..i + n).all(|j| c.free[j] && (!clean || !c.dirty[j]))
        };
        let start = (0..self.free.len())
            .find(|&i| fits(self, i, true))
            .or_else(|| (0..self.free.len()).find(|&i| fits(self, i, false)))?;
        for f in &mut self.free[start..start + n] {
            *f = false;
        }
        self.free_count -= n;
        Some(start)
    }
}

impl GuestRam {
    /// Make `size` bytes of guest RAM (a multiple of 2 MiB), in a file in
    /// `dir` or in a memfd, on NUMA nodes `numa_nodes` (none: wherever the
    /// host's policy puts it). Chunk 0 (the system area) is taken at once.
    pub fn new(size: u64, dir: Option<&Path>, numa_nodes: &[u32]) -> Result<GuestRam, LwkError> {
        if size < 4 * HUGE || !size.is_multiple_of(HUGE) {
            return Err(LwkError::Config(format!(
                "guest memory of {size} bytes: an LWK needs a multiple of 2 MiB, at least 8 MiB"
            )));
        }
        let fd: OwnedFd = match dir {
            Some(dir) => rustix::fs::open(
                dir,
                rustix::fs::OFlags::TMPFILE
                    | rustix::fs::OFlags::RDWR
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::from_raw_mode(0o600),
            )
            .map_err(|e| LwkError::Memory(format!("O_TMPFILE in {}: {e}", dir.display())))?,
            None => rustix::fs::memfd_create("hobbes-lwk-ram", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| LwkError::Memory(format!("memfd_create: {e}")))?,
        };
        // Allocate every page now: an enclave's memory is reserved when it is
        // made, and a guest must never meet ENOSPC/SIGBUS at first touch. The
        // pages come from the enclave's NUMA nodes: this thread's memory
        // policy is bound to them while it allocates.
        let bound = crate::host::bind_memory(numa_nodes)
            .map_err(|e| LwkError::Memory(format!("binding to NUMA nodes {numa_nodes:?}: {e}")))?;
        let allocated =
            rustix::fs::fallocate(fd.as_fd(), rustix::fs::FallocateFlags::empty(), 0, size);
        if bound {
            crate::host::unbind_memory();
        }
        allocated.map_err(|e| {
            LwkError::Memory(format!(
                "cannot allocate {} MiB of guest memory: {e}",
                size >> 20
            ))
        })?;
        // The mapping keeps the file (vm-memory holds it): XEMEM can share
        // an app's memory through it later.
        let region = MmapRegion::build(
            Some(FileOffset::new(File::from(fd), 0)),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
        )
        .map_err(|e| LwkError::Memory(format!("mapping guest memory: {e}")))?;
        let host_base = region.as_ptr() as usize;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| LwkError::Memory("guest memory region does not fit".into()))?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| LwkError::Memory(format!("guest memory: {e}")))?;
        let n = (size / HUGE) as usize;
        let mut free = vec![true; n];
        free[0] = false;
        let dirty = vec![false; n];
        Ok(GuestRam {
            mem,
            size,
            host_base,
            chunks: Mutex::new(ChunkMap {
                free,
                dirty,
                free_count: n - 1,
            }),
            pt_pages: Mutex::new(PtPool::default()),
        })
    }

    /// The guest memory, for vm-memory's accessors.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest-physical `gpa` (no bounds check: callers pass
    /// addresses of chunks they own).
    pub fn host_addr(&self, gpa: u64) -> usize {
        self.host_base + gpa as usize
    }

    /// Bytes in free chunks.
    pub fn free_bytes(&self) -> u64 {
        self.chunks.lock().unwrap().free_count as u64 * HUGE
    }

    /// Take one free chunk, zeroed; `None` when memory is exhausted.
    pub fn alloc_chunk(&self) -> Option<u64> {
        self.alloc_contiguous(1)
    }

    /// Take `n` physically contiguous free chunks, zeroed (a program image).
    pub fn alloc_contiguous(&self, n: usize) -> Option<u64> {
        let (start, dirty) = {
            let mut c = self.chunks.lock().unwrap();
            let s = c.take(n)?;
            let dirty: Vec<usize> = (s..s + n).filter(|&i| c.dirty[i]).collect();
            for &i in &dirty {
                c.dirty[i] = false;
            }
            (s, dirty)
        };
        for i in dirty {
            self.zero(i as u64 * HUGE, HUGE);
        }
        Some(start as u64 * HUGE)
    }

    /// Give a chunk back (dirty: it is zeroed before anyone sees it again).
    pub fn free_chunk(&self, gpa: u64) {
        let mut c = self.chunks.lock().unwrap();
        let i = (gpa / HUGE) as usize;
        if i > 0 && i < c.free.len() && !c.free[i] {
            c.free[i] = true;
            c.dirty[i] = true;
            c.free_count += 1;
        }
    }

    /// Zero free dirty chunks until none is left (run while no launch
    /// waits: after an app ends). Returns how many it zeroed.
    pub fn scrub(&self) -> usize {
        let mut n = 0;
        loop {
            let i = {
                let mut c = self.chunks.lock().unwrap();
                let Some(i) = (0..c.free.len()).find(|&i| c.free[i] && c.dirty[i]) else {
                    return n;
                };
                // Taken while zeroed, so no allocation sees it half done.
                c.free[i] = false;
                i
            };
            self.zero(i as u64 * HUGE, HUGE);
            let mut c = self.chunks.lock().unwrap();
            c.free[i] = true;
            c.dirty[i] = false;
            n += 1;
        }
    }

    /// A zeroed 4 KiB page for page tables; `None` when memory is exhausted.
    pub fn alloc_pt_page(&self) -> Option<u64> {
        let mut pool = self.pt_pages.lock().unwrap();
        if pool.fresh.is_empty() {
            let chunk = self.alloc_chunk()?;
            pool.fresh
                .extend((0..HUGE / PAGE).rev().map(|i| chunk + i * PAGE));
        }
        let page = pool.fresh.pop()?;
        self.zero(page, PAGE);
        Some(page)
    }

    /// Retire the page-table pages of an ended app. They are not reused
    /// until [`GuestRam::recycle_pt_pages`]: KVM's shadow MMU (this node's
    /// PVM, and any shadow-paging host) remembers what a guest page table
    /// held and notices changes only when the *guest* writes it. The monitor
    /// writes page tables from the host, so a page-table page may take new
    /// contents only after the shadow pages are flushed.
    pub fn free_pt_pages(&self, pages: impl IntoIterator<Item = u64>) {
        self.pt_pages.lock().unwrap().retired.extend(pages);
    }

    /// How many fresh page-table pages are left before a new chunk is needed.
    pub fn fresh_pt_pages(&self) -> usize {
        self.pt_pages.lock().unwrap().fresh.len()
    }

    /// Are there retired page-table pages (a flush would free them)?
    pub fn has_retired_pt_pages(&self) -> bool {
        !self.pt_pages.lock().unwrap().retired.is_empty()
    }

    /// The shadow MMU was flushed: retired pages may be used again.
    pub fn recycle_pt_pages(&self) {
        let mut pool = self.pt_pages.lock().unwrap();
        let retired = std::mem::take(&mut pool.retired);
        pool.fresh.extend(retired);
    }

    /// Zero guest-physical `[gpa, gpa+len)`.
    pub fn zero(&self, gpa: u64, len: u64) {
        debug_assert!(gpa + len <= self.size);
        // Through vm-memory, which checks the range (no raw pointer here).
        let mut at = gpa;
        while at < gpa + len {
            let n = (gpa + len - at).min(ZEROS.len() as u64);
            let _ = self.mem.write_slice(&ZEROS[..n as usize], GuestAddress(at));
            at += n;
        }
    }

    /// Read a u64 at guest-physical `gpa`.
    pub fn read_u64(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap_or(0)
    }

    /// Write a u64 at guest-physical `gpa`.
    pub fn write_u64(&self, gpa: u64, v: u64) {
        let _ = self.mem.write_obj(v, GuestAddress(gpa));
    }
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_handed_out_zeroed_and_taken_back() {
        let ram = GuestRam::new(16 * HUGE, None, &[]).unwrap();
        assert_eq!(ram.free_bytes(), 15 * HUGE);
        let a = ram.alloc_chunk().unwrap();
        assert_ne!(a, 0, "chunk 0 is the system area");
        ram.write_u64(a + 8, 42);
        ram.free_chunk(a);
        // Every chunk handed out reads as zero, whether it was reused
        // (zeroed on allocation) or scrubbed while idle.
        let all: Vec<u64> = (0..15).map(|_| ram.alloc_chunk().unwrap()).collect();
        assert!(all.contains(&a));
        assert!(all.iter().all(|c| ram.read_u64(c + 8) == 0));
        assert!(ram.alloc_chunk().is_none());
        for c in &all {
            ram.write_u64(c + 16, 7);
            ram.free_chunk(*c);
        }
        assert_eq!(ram.scrub(), 15);
        assert_eq!(ram.scrub(), 0);
        assert!(ram.read_u64(a + 16) == 0, "scrubbed");
        let run = ram.alloc_contiguous(4).unwrap();
        assert_eq!(run % HUGE, 0);
        assert_eq!(ram.free_bytes(), 11 * HUGE);
        assert!(ram.alloc_contiguous(100).is_none());
        let p = ram.alloc_pt_page().unwrap();
        assert_eq!(p % PAGE, 0);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(GuestRam::new(3 * HUGE, None, &[]).is_err());
        assert!(GuestRam::new(8 * HUGE + 1, None, &[]).is_err());
    }
}
