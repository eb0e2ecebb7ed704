//! An app's address space: which virtual memory is backed by which guest
//! RAM, the brk heap, the mmap area, and checked access to guest memory for
//! the system calls the monitor performs.
//!
//! Memory is backed in 2 MiB chunks when it is mapped (`mmap`, `brk`,
//! `mprotect` of a `PROT_NONE` reservation), never on first touch. Freed
//! ranges (`munmap`, `MADV_DONTNEED`, a shrinking brk) keep their backing
//! and are zeroed at once, so whatever is mapped again later reads as zero
//! without a page fault. Protections are not enforced (Kitten does the
//! same with its large pages): `mprotect` only backs what becomes
//! accessible. Every access on a guest's behalf goes through
//! [`AddressSpace::pieces`], which refuses anything not backed: a bad pointer
//! in a system call gets `EFAULT`, never touches another app's memory.

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    align_down, align_up, HUGE, LOWEST_USER, MMAP_BOTTOM, MMAP_TOP, PAGE, STACK_SIZE, STACK_TOP,
};
use crate::paging::PageTables;
use crate::ram::GuestRam;
use crate::LwkError;

/// `EFAULT`, `ENOMEM`, `EINVAL` as system calls return them.
pub const EFAULT: i64 = -(libc::EFAULT as i64);
/// See [`EFAULT`].
pub const ENOMEM: i64 = -(libc::ENOMEM as i64);
/// See [`EFAULT`].
pub const EINVAL: i64 = -(libc::EINVAL as i64);

/// End of the user half of the address space: no guest pointer lies above.
const USER_END: u64 = 1 << 47;

/// One app's memory.
pub struct AddressSpace {
    /// Its page tables.
    pub pt: PageTables,
    /// Backed 2 MiB virtual chunks: virtual address -> guest-physical.
    backed: BTreeMap<u64, u64>,
    /// Chunks to give back at the end (not the image's run).
    owned: Vec<u64>,
    /// The program image's contiguous run: (gpa, chunks).
    image_run: Option<(u64, usize)>,
    /// Start of the brk heap.
    brk_start: u64,
    /// Current program break.
    brk: u64,
    /// Free ranges of the mmap area: start -> end.
    mmap_free: BTreeMap<u64, u64>,
}

impl AddressSpace {
    /// An empty address space.
    pub fn new(ram: &GuestRam) -> Result<AddressSpace, LwkError> {
        let mut mmap_free = BTreeMap::new();
        mmap_free.insert(MMAP_BOTTOM, MMAP_TOP);
        Ok(AddressSpace {
            pt: PageTables::new(ram)?,
            backed: BTreeMap::new(),
            owned: Vec::new(),
            image_run: None,
            brk_start: 0,
            brk: 0,
            mmap_free,
        })
    }

    /// Map the program image's run of chunks at `va` (2 MiB aligned), and
    /// start the brk heap at `image_end`.
    pub fn map_image(
        &mut self,
        ram: &GuestRam,
        va: u64,
        gpa: u64,
        chunks: usize,
        image_end: u64,
    ) -> Result<(), LwkError> {
        for i in 0..chunks as u64 {
            self.pt.map_huge(ram, va + i * HUGE, gpa + i * HUGE)?;
            self.backed.insert(va + i * HUGE, gpa + i * HUGE);
        }
        self.image_run = Some((gpa, chunks));
        self.brk_start = align_up(image_end, PAGE);
        self.brk = self.brk_start;
        Ok(())
    }

    /// Back and map the main stack; returns its top.
    pub fn map_stack(&mut self, ram: &GuestRam) -> Result<u64, LwkError> {
        self.back(ram, STACK_TOP - STACK_SIZE, STACK_TOP)
            .map_err(|_| LwkError::OutOfMemory)?;
        Ok(STACK_TOP)
    }

    /// Back every chunk that `[start, end)` touches (fresh chunks are zero).
    /// On failure nothing new stays backed: the app never saw those chunks,
    /// so their mappings can go without any TLB to flush.
    fn back(&mut self, ram: &GuestRam, start: u64, end: u64) -> Result<(), i64> {
        let mut va = align_down(start, HUGE);
        let mut new = Vec::new();
        while va < end {
            if !self.backed.contains_key(&va) {
                let mapped = ram.alloc_chunk().ok_or(ENOMEM).and_then(|gpa| {
                    match self.pt.map_huge(ram, va, gpa) {
                        Ok(()) => Ok(gpa),
                        Err(_) => {
                            ram.free_chunk(gpa);
                            Err(ENOMEM)
                        }
                    }
                });
                match mapped {
                    Ok(gpa) => {
                        self.backed.insert(va, gpa);
                        new.push((va, gpa));
                    }
                    Err(e) => {
                        for (v, g) in new {
                            self.pt.unmap_huge(ram, v);
                            self.backed.remove(&v);
                            ram.free_chunk(g);
                        }
                        return Err(e);
                    }
                }
            }
            va += HUGE;
        }
        self.owned.extend(new.into_iter().map(|(_, g)| g));
        Ok(())
    }

    /// Zero the backed parts of `[start, end)` (memory given back by the app).
    fn zero(&self, ram: &GuestRam, start: u64, end: u64) {
        if end <= start {
            return;
        }
        for (&va, &gpa) in self.backed.range(align_down(start, HUGE)..end) {
            let s = start.max(va);
            let e = end.min(va + HUGE);
            if s < e {
                ram.zero(gpa + (s - va), e - s);
            }
        }
    }

    /// The guest-physical pieces of `[va, va+len)`, or `EFAULT` when any
    /// byte of it is not backed (or the range wraps).
    pub fn pieces(&self, va: u64, len: u64) -> Result<Vec<(u64, usize)>, i64> {
        let end = va
            .checked_add(len)
            .filter(|e| *e <= USER_END)
            .ok_or(EFAULT)?;
        let mut out = Vec::new();
        let mut at = va;
        while at < end {
            let chunk = align_down(at, HUGE);
            let gpa = *self.backed.get(&chunk).ok_or(EFAULT)?;
            let n = (chunk + HUGE).min(end) - at;
            let piece = gpa + (at - chunk);
            match out.last_mut() {
                Some((g, l)) if *g + *l as u64 == piece => *l += n as usize,
                _ => out.push((piece, n as usize)),
            }
            at += n;
        }
        Ok(out)
    }

    /// Host addresses of `[va, va+len)` for a host system call to read or
    /// write in place (`(address, length)` pieces), or `EFAULT`.
    pub fn host_pieces(
        &self,
        ram: &GuestRam,
        va: u64,
        len: u64,
    ) -> Result<Vec<(usize, usize)>, i64> {
        Ok(self
            .pieces(va, len)?
            .into_iter()
            .map(|(gpa, n)| (ram.host_addr(gpa), n))
            .collect())
    }

    /// Copy guest memory at `va` into `buf`.
    pub fn read(&self, ram: &GuestRam, va: u64, buf: &mut [u8]) -> Result<(), i64> {
        let mut done = 0;
        for (gpa, n) in self.pieces(va, buf.len() as u64)? {
            ram.mem()
                .read_slice(&mut buf[done..done + n], GuestAddress(gpa))
                .map_err(|_| EFAULT)?;
            done += n;
        }
        Ok(())
    }

    /// Copy `buf` into guest memory at `va`.
    pub fn write(&self, ram: &GuestRam, va: u64, buf: &[u8]) -> Result<(), i64> {
        let mut done = 0;
        for (gpa, n) in self.pieces(va, buf.len() as u64)? {
            ram.mem()
                .write_slice(&buf[done..done + n], GuestAddress(gpa))
                .map_err(|_| EFAULT)?;
            done += n;
        }
        Ok(())
    }

    /// A NUL-terminated string at `va`, at most `max` bytes before the NUL
    /// (`ENAMETOOLONG` beyond).
    pub fn read_cstr(&self, ram: &GuestRam, va: u64, max: usize) -> Result<Vec<u8>, i64> {
        let mut out = Vec::new();
        let mut at = va;
        loop {
            if at >= USER_END {
                return Err(EFAULT);
            }
            // Up to the end of the page, so a string that ends just before an
            // unbacked page is still read.
            let n = (align_down(at, PAGE) + PAGE - at) as usize;
            let mut buf = vec![0u8; n];
            self.read(ram, at, &mut buf)?;
            let z = buf.iter().position(|b| *b == 0);
            out.extend_from_slice(&buf[..z.unwrap_or(n)]);
            if out.len() > max {
                return Err(-(libc::ENAMETOOLONG as i64));
            }
            if z.is_some() {
                return Ok(out);
            }
            at += n as u64;
        }
    }

    /// A plain value at `va`.
    #[cfg(test)]
    pub fn read_u64(&self, ram: &GuestRam, va: u64) -> Result<u64, i64> {
        let mut b = [0u8; 8];
        self.read(ram, va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Store a u32 at `va`.
    pub fn write_u32(&self, ram: &GuestRam, va: u64, v: u32) -> Result<(), i64> {
        self.write(ram, va, &v.to_le_bytes())
    }

    /// The host address of the aligned u32 at `va` (a futex word).
    pub fn host_u32(&self, ram: &GuestRam, va: u64) -> Result<usize, i64> {
        if !va.is_multiple_of(4) {
            return Err(EINVAL);
        }
        let pieces = self.host_pieces(ram, va, 4)?;
        Ok(pieces[0].0)
    }

    /// `brk(addr)`: grow (backing) or shrink (zeroing) the heap; the new
    /// break, or the current one when `addr` is unusable (Linux's rule).
    pub fn brk(&mut self, ram: &GuestRam, addr: u64) -> u64 {
        if addr < self.brk_start || addr > MMAP_BOTTOM {
            return self.brk;
        }
        if addr > self.brk {
            if self.back(ram, self.brk, addr).is_err() {
                return self.brk;
            }
        } else {
            self.zero(ram, addr, self.brk);
        }
        self.brk = addr;
        self.brk
    }

    /// Anonymous `mmap` of `len` bytes: at `fixed` exactly (MAP_FIXED), or
    /// top-down in the mmap area. `backed`: false for a `PROT_NONE`
    /// reservation. Returns the address or a negative errno.
    pub fn mmap(&mut self, ram: &GuestRam, fixed: Option<u64>, len: u64, backed: bool) -> i64 {
        if len == 0 {
            return EINVAL;
        }
        let Some(len) = len.checked_add(PAGE - 1).map(|l| l & !(PAGE - 1)) else {
            return ENOMEM;
        };
        let start = match fixed {
            Some(a) => {
                if a % PAGE != 0 || a < LOWEST_USER {
                    return EINVAL;
                }
                let Some(end) = a.checked_add(len).filter(|e| *e <= STACK_TOP) else {
                    return ENOMEM;
                };
                self.take_range(a, end);
                // MAP_FIXED replaces what was there: it reads as zero.
                self.zero(ram, a, end);
                a
            }
            None => match self.find_top_down(len) {
                Some(a) => a,
                None => return ENOMEM,
            },
        };
        if backed {
            if let Err(e) = self.back(ram, start, start + len) {
                self.give_back_range(start, start + len);
                return e;
            }
        }
        start as i64
    }

    fn find_top_down(&mut self, len: u64) -> Option<u64> {
        let (&s, &e) = self
            .mmap_free
            .iter()
            .rev()
            .find(|(s, e)| **e - **s >= len)?;
        let start = e - len;
        self.mmap_free.remove(&s);
        if start > s {
            self.mmap_free.insert(s, start);
        }
        Some(start)
    }

    /// Remove `[start, end)` from the free ranges (a fixed mapping there).
    fn take_range(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, u64)> = self
            .mmap_free
            .range(..end)
            .filter(|(_, e)| **e > start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in overlapping {
            self.mmap_free.remove(&s);
            if s < start {
                self.mmap_free.insert(s, start);
            }
            if e > end {
                self.mmap_free.insert(end, e);
            }
        }
    }

    /// Return `[start, end)` of the mmap area to the free ranges, coalescing.
    fn give_back_range(&mut self, start: u64, end: u64) {
        let start = start.max(MMAP_BOTTOM);
        let end = end.min(MMAP_TOP);
        if start >= end {
            return;
        }
        self.take_range(start, end);
        let mut s = start;
        let mut e = end;
        if let Some((&ps, &pe)) = self.mmap_free.range(..s).next_back() {
            if pe == s {
                self.mmap_free.remove(&ps);
                s = ps;
            }
        }
        if let Some(&ne) = self.mmap_free.get(&e) {
            self.mmap_free.remove(&e);
            e = ne;
        }
        self.mmap_free.insert(s, e);
    }

    /// `munmap`: the range reads as zero if mapped again, and its address
    /// space can be reused; the backing stays (see the module comment).
    pub fn munmap(&mut self, ram: &GuestRam, addr: u64, len: u64) -> i64 {
        if !addr.is_multiple_of(PAGE) || len == 0 {
            return EINVAL;
        }
        let Some(end) = len
            .checked_add(PAGE - 1)
            .map(|l| l & !(PAGE - 1))
            .and_then(|l| l.checked_add(addr))
        else {
            return EINVAL;
        };
        self.zero(ram, addr, end);
        self.give_back_range(addr, end);
        0
    }

    /// `mprotect`: back what becomes accessible; protections themselves are
    /// not enforced. As in Linux, a range with unmapped parts is `ENOMEM`:
    /// free parts of the mmap area, and anything outside the app's part of
    /// the address space (above [`STACK_TOP`] lie the system area and the
    /// doorbell, which must never be backed over).
    pub fn mprotect(&mut self, ram: &GuestRam, addr: u64, len: u64, prot: u64) -> i64 {
        if !addr.is_multiple_of(PAGE) {
            return EINVAL;
        }
        let Some(end) = len
            .checked_add(PAGE - 1)
            .map(|l| l & !(PAGE - 1))
            .and_then(|l| addr.checked_add(l))
        else {
            return ENOMEM;
        };
        if end == addr {
            return 0;
        }
        // Free ranges are disjoint and sorted: only the last one starting
        // before `end` can reach past `addr`.
        let hits_free = self
            .mmap_free
            .range(..end)
            .next_back()
            .is_some_and(|(_, free_end)| *free_end > addr);
        if addr < LOWEST_USER || end > STACK_TOP || hits_free {
            return ENOMEM;
        }
        if prot != 0 {
            if let Err(e) = self.back(ram, addr, end) {
                return e;
            }
        }
        0
    }

    /// `madvise(MADV_DONTNEED)`: anonymous memory reads as zero afterwards.
    pub fn dontneed(&mut self, ram: &GuestRam, addr: u64, len: u64) -> i64 {
        let Some(end) = addr.checked_add(len) else {
            return EINVAL;
        };
        self.zero(ram, addr, end);
        0
    }

    /// Give everything back.
    pub fn free(self, ram: &GuestRam) {
        for gpa in self.owned {
            ram.free_chunk(gpa);
        }
        if let Some((gpa, n)) = self.image_run {
            for i in 0..n as u64 {
                ram.free_chunk(gpa + i * HUGE);
            }
        }
        self.pt.free(ram);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> (GuestRam, AddressSpace) {
        let ram = GuestRam::new(64 * HUGE, None, &[]).unwrap();
        let s = AddressSpace::new(&ram).unwrap();
        (ram, s)
    }

    #[test]
    fn mmap_backs_and_munmap_zeroes_for_reuse() {
        let (ram, mut s) = space();
        let a = s.mmap(&ram, None, 3 * PAGE, true);
        assert!(a > 0);
        let a = a as u64;
        assert_eq!(a + 3 * PAGE, MMAP_TOP);
        s.write(&ram, a + 8, b"hello").unwrap();
        let mut b = [0u8; 5];
        s.read(&ram, a + 8, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(s.munmap(&ram, a, 3 * PAGE), 0);
        let again = s.mmap(&ram, None, 3 * PAGE, true) as u64;
        assert_eq!(again, a, "the freed range is reused");
        s.read(&ram, a + 8, &mut b).unwrap();
        assert_eq!(&b, &[0; 5], "and reads as zero");
    }

    #[test]
    fn mprotect_backs_only_what_the_app_has_mapped() {
        let (ram, mut s) = space();
        let a = s.mmap(&ram, None, HUGE, false) as u64;
        // Unmapped parts of the mmap area, the null page, the system area
        // and a range that wraps: ENOMEM, nothing backed.
        assert_eq!(s.mprotect(&ram, a - HUGE, 2 * HUGE, 3), ENOMEM);
        assert_eq!(s.read_u64(&ram, a), Err(EFAULT));
        assert_eq!(s.mprotect(&ram, 0, PAGE, 3), ENOMEM);
        assert_eq!(s.mprotect(&ram, crate::layout::SYS_VA, PAGE, 3), ENOMEM);
        assert_eq!(s.mprotect(&ram, !(HUGE - 1), PAGE, 3), ENOMEM);
        assert_eq!(s.mprotect(&ram, PAGE, u64::MAX, 3), ENOMEM);
        assert_eq!(s.mprotect(&ram, a + 1, PAGE, 3), EINVAL);
        // The reservation itself: backed.
        assert_eq!(s.mprotect(&ram, a, HUGE, 3), 0);
        assert_eq!(s.read_u64(&ram, a), Ok(0));
    }

    #[test]
    fn reservations_are_backed_by_mprotect() {
        let (ram, mut s) = space();
        let a = s.mmap(&ram, None, 4 * HUGE, false) as u64;
        assert_eq!(s.read_u64(&ram, a), Err(EFAULT), "not backed yet");
        assert_eq!(s.mprotect(&ram, a, HUGE, 3), 0);
        assert_eq!(s.read_u64(&ram, a), Ok(0));
        assert_eq!(s.read_u64(&ram, a + HUGE), Err(EFAULT));
    }

    #[test]
    fn pointers_outside_backed_memory_are_efault() {
        let (ram, s) = space();
        assert_eq!(s.read_u64(&ram, 0), Err(EFAULT));
        assert_eq!(s.pieces(u64::MAX - 2, 8), Err(EFAULT));
        assert_eq!(s.read_cstr(&ram, 0x1000, 10), Err(EFAULT));
    }

    #[test]
    fn brk_grows_backs_and_shrinks_zeroing() {
        let (ram, mut s) = space();
        let gpa = ram.alloc_contiguous(1).unwrap();
        s.map_image(&ram, 0x40_0000, gpa, 1, 0x40_3000).unwrap();
        let b0 = s.brk(&ram, 0);
        assert_eq!(b0, 0x40_3000);
        assert_eq!(s.brk(&ram, b0 + 5 * HUGE), b0 + 5 * HUGE);
        s.write(&ram, b0 + 4 * HUGE, b"x").unwrap();
        assert_eq!(s.brk(&ram, b0), b0);
        assert_eq!(s.read_u64(&ram, b0 + 4 * HUGE), Ok(0));
        assert_eq!(s.brk(&ram, 0x1000), b0, "below the start: unchanged");
    }

    #[test]
    fn strings_cross_chunks_and_are_bounded() {
        let (ram, mut s) = space();
        let a = s.mmap(&ram, Some(MMAP_BOTTOM), 2 * HUGE, true) as u64;
        let at = a + HUGE - 3;
        s.write(&ram, at, b"abcdef\0").unwrap();
        assert_eq!(s.read_cstr(&ram, at, 100).unwrap(), b"abcdef");
        s.write(&ram, a, &[b'x'; 5000]).unwrap();
        assert!(s.read_cstr(&ram, a, 4096).is_err());
    }

    #[test]
    fn exhaustion_is_enomem_not_a_panic() {
        let (ram, mut s) = space();
        assert_eq!(s.mmap(&ram, None, 100 * HUGE, true), ENOMEM);
        // Nothing was kept from the failed attempt's address range.
        assert!(s.mmap(&ram, None, 4 * HUGE, true) > 0);
    }
}
