//! Memory mappings: [`Mapping`], an owned range unmapped on drop, and the
//! raw calls (`munmap`, `mprotect`, `MAP_FIXED` mappings) for ranges whose
//! ownership the caller tracks itself; those are `unsafe fn`s.

use std::ffi::c_void;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};

use crate::{errno, Errno};

/// Protection of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    /// `PROT_NONE`: address space only.
    None,
    /// `PROT_READ`.
    Read,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

impl Prot {
    fn map_flags(self) -> ProtFlags {
        match self {
            Prot::None => ProtFlags::empty(),
            Prot::Read => ProtFlags::READ,
            Prot::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        }
    }

    fn mprotect_flags(self) -> MprotectFlags {
        match self {
            Prot::None => MprotectFlags::empty(),
            Prot::Read => MprotectFlags::READ,
            Prot::ReadWrite => MprotectFlags::READ | MprotectFlags::WRITE,
        }
    }
}

/// `madvise` hints that change neither contents nor protections (so they
/// are safe on any address range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_HUGEPAGE`: back the range with transparent huge pages.
    HugePage,
    /// `MADV_NOHUGEPAGE`: keep transparent huge pages out.
    NoHugePage,
    /// `MADV_POPULATE_WRITE` (Linux 5.14): map the range's pages writable
    /// now, in one call, instead of a write fault per page later.
    PopulateWrite,
}

/// `madvise(addr, len, advice)` with a contents-preserving hint. Failure
/// (EINVAL on an unaligned or unmapped range) only costs the hint.
pub fn advise(addr: usize, len: usize, advice: Advice) -> Result<(), Errno> {
    let advice = match advice {
        Advice::HugePage => rustix::mm::Advice::LinuxHugepage,
        Advice::NoHugePage => rustix::mm::Advice::LinuxNoHugepage,
        Advice::PopulateWrite => rustix::mm::Advice::LinuxPopulateWrite,
    };
    // SAFETY: MADV_HUGEPAGE / MADV_NOHUGEPAGE / MADV_POPULATE_WRITE change
    // neither the contents nor the protection of any page (populating a
    // file mapping maps the file's pages; a hole becomes a zeroed page,
    // which is what reading it gave); the kernel checks the range.
    unsafe { rustix::mm::madvise(addr as *mut c_void, len, advice) }.map_err(errno)
}

/// An owned mapping of `len` bytes: unmapped on drop.
///
/// The byte views ([`as_slice`](Self::as_slice),
/// [`as_mut_slice`](Self::as_mut_slice)) need the mapping readable
/// (writable for the latter); they panic on a `PROT_NONE` mapping. A
/// `MAP_SHARED` mapping may also be written by other processes: treat its
/// bytes as shared memory (use atomics for words others write).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    prot: Prot,
}

// SAFETY: the mapping is owned exclusively by this value; moving it to
// another thread moves that ownership. Shared access goes through `&self`
// (read-only views), mutation through `&mut self`.
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` only hands out shared byte views and addresses.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A new private anonymous zeroed read-write mapping of `len` bytes
    /// (rounded up to whole pages, at least one) where the kernel picks.
    pub fn anon(len: usize) -> Result<Mapping, Errno> {
        Self::anon_with(len, None, MapFlags::empty(), Prot::ReadWrite)
    }

    /// As [`anon`](Self::anon) with `MAP_NORESERVE` (no swap reserved),
    /// exactly at `at` when given (`MAP_FIXED_NOREPLACE`: EEXIST when
    /// anything is mapped in the range already; never replaces a mapping).
    pub fn anon_noreserve(len: usize, at: Option<usize>) -> Result<Mapping, Errno> {
        Self::anon_with(len, at, MapFlags::NORESERVE, Prot::ReadWrite)
    }

    /// Reserve `len` bytes of address space (`PROT_NONE`, `MAP_NORESERVE`,
    /// no memory) where the kernel picks, to carve mappings out of.
    pub fn reserve(len: usize) -> Result<Mapping, Errno> {
        Self::anon_with(len, None, MapFlags::NORESERVE, Prot::None)
    }

    fn anon_with(
        len: usize,
        at: Option<usize>,
        flags: MapFlags,
        prot: Prot,
    ) -> Result<Mapping, Errno> {
        let len = len.max(1).next_multiple_of(crate::page_size());
        let flags = flags
            | MapFlags::PRIVATE
            | if at.is_some() {
                MapFlags::FIXED_NOREPLACE
            } else {
                MapFlags::empty()
            };
        // SAFETY: a new anonymous mapping: where the kernel picks, or with
        // MAP_FIXED_NOREPLACE, which never replaces an existing mapping.
        let p = unsafe {
            rustix::mm::mmap_anonymous(at.unwrap_or(0) as *mut c_void, len, prot.map_flags(), flags)
        }
        .map_err(errno)?;
        // SAFETY: the kernel just mapped [p, p+len) for us alone.
        let m = unsafe { Mapping::from_raw(p as usize, len, prot) };
        if at.is_some_and(|a| a != m.addr()) {
            // Kernels before 4.17 take MAP_FIXED_NOREPLACE as a mere hint.
            return Err(Errno::EEXIST);
        }
        Ok(m)
    }

    /// A `MAP_SHARED` mapping of `len` bytes of `fd` from `offset`, where
    /// the kernel picks. Pages past the end of the file fault (SIGBUS)
    /// when touched.
    pub fn shared(
        fd: BorrowedFd<'_>,
        len: usize,
        offset: u64,
        prot: Prot,
    ) -> Result<Mapping, Errno> {
        // SAFETY: a new shared mapping of a descriptor we hold, at an
        // address the kernel picks: it replaces nothing.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot.map_flags(),
                MapFlags::SHARED,
                fd,
                offset,
            )
        }
        .map_err(errno)?;
        // SAFETY: the kernel just mapped [p, p+len) for us alone.
        Ok(unsafe { Mapping::from_raw(p as usize, len, prot) })
    }

    /// Take ownership of `[addr, addr+len)`, mapped with `prot`.
    ///
    /// # Safety
    /// The range must be mapped with `prot`, page aligned, non-empty, owned
    /// by the caller alone and not unmapped by anyone else: the value
    /// unmaps it on drop.
    pub unsafe fn from_raw(addr: usize, len: usize, prot: Prot) -> Mapping {
        Mapping {
            ptr: NonNull::new(addr as *mut u8).expect("a mapping is never at address 0"),
            len,
            prot,
        }
    }

    /// Give up ownership: returns `(address, length)`; the range stays
    /// mapped and is the caller's to unmap ([`munmap`]).
    pub fn into_raw(self) -> (usize, usize) {
        let raw = (self.addr(), self.len);
        std::mem::forget(self);
        raw
    }

    /// The first byte's address.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: mappings are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The current protection.
    pub fn prot(&self) -> Prot {
        self.prot
    }

    /// The first byte, for reading.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The first byte, for writing (through `&mut self`).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes. Panics unless the mapping is readable.
    pub fn as_slice(&self) -> &[u8] {
        assert!(self.prot != Prot::None, "a PROT_NONE mapping has no bytes");
        // SAFETY: `len` bytes mapped readable while `self` lives; writes
        // through this process need `&mut self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable. Panics unless the mapping is read-write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(self.prot == Prot::ReadWrite, "the mapping is not writable");
        // SAFETY: `len` bytes mapped read-write while `self` lives,
        // borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Change the protection of the whole mapping.
    pub fn protect(&mut self, prot: Prot) -> Result<(), Errno> {
        // SAFETY: our own mapping; `&mut self` means no byte view of it is
        // alive, and the views check `prot` before they are made.
        unsafe { mprotect(self.addr(), self.len, prot) }?;
        self.prot = prot;
        Ok(())
    }

    /// A contents-preserving `madvise` hint on the whole mapping.
    pub fn advise(&self, advice: Advice) -> Result<(), Errno> {
        advise(self.addr(), self.len, advice)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no borrow of it outlives `self`.
        let _ = unsafe { munmap(self.addr(), self.len) };
    }
}

/// `munmap(addr, len)`; a zero length does nothing.
///
/// # Safety
/// The caller owns `[addr, addr+len)` (or that part of it that is mapped)
/// and nothing refers to it any more.
pub unsafe fn munmap(addr: usize, len: usize) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: per this function's contract.
    unsafe { rustix::mm::munmap(addr as *mut c_void, len) }.map_err(errno)
}

/// `mprotect(addr, len, prot)`. One system call, async-signal-safe.
///
/// # Safety
/// The caller owns `[addr, addr+len)`; no Rust reference into it may be
/// used in a way the new protection forbids (a write to a page made
/// read-only faults).
pub unsafe fn mprotect(addr: usize, len: usize, prot: Prot) -> Result<(), Errno> {
    // SAFETY: per this function's contract.
    unsafe { rustix::mm::mprotect(addr as *mut c_void, len, prot.mprotect_flags()) }.map_err(errno)
}

/// `mmap(at, len, prot, MAP_SHARED | MAP_FIXED, fd, offset)`: map `fd`
/// over whatever was mapped in `[at, at+len)`; returns `at`.
///
/// # Safety
/// The caller owns `[at, at+len)` (a reservation or mapping of its own)
/// and nothing refers to the memory it replaces.
pub unsafe fn mmap_shared_fixed(
    at: usize,
    len: usize,
    prot: Prot,
    fd: BorrowedFd<'_>,
    offset: u64,
) -> Result<usize, Errno> {
    // SAFETY: per this function's contract.
    let p = unsafe {
        rustix::mm::mmap(
            at as *mut c_void,
            len,
            prot.map_flags(),
            MapFlags::SHARED | MapFlags::FIXED,
            fd,
            offset,
        )
    }
    .map_err(errno)?;
    Ok(p as usize)
}

/// Reserve `[at, at+len)` (`PROT_NONE`, `MAP_NORESERVE`, `MAP_FIXED`):
/// whatever was mapped there is replaced; returns `at`.
///
/// # Safety
/// As for [`mmap_shared_fixed`]: the caller owns the range and nothing
/// refers to the memory it replaces.
pub unsafe fn reserve_fixed(at: usize, len: usize) -> Result<usize, Errno> {
    // SAFETY: per this function's contract.
    let p = unsafe {
        rustix::mm::mmap_anonymous(
            at as *mut c_void,
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
        )
    }
    .map_err(errno)?;
    Ok(p as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anon_is_zeroed_writable_and_page_rounded() {
        let page = crate::page_size();
        let mut m = Mapping::anon(10).unwrap();
        assert_eq!(m.len(), page);
        assert!(m.addr().is_multiple_of(page));
        assert!(m.as_slice().iter().all(|b| *b == 0));
        m.as_mut_slice()[7] = 42;
        assert_eq!(m.as_slice()[7], 42);
        m.advise(Advice::NoHugePage).unwrap();
        m.protect(Prot::Read).unwrap();
        assert_eq!(m.as_slice()[7], 42);
    }

    #[test]
    fn noreplace_refuses_a_taken_range() {
        let page = crate::page_size();
        let m = Mapping::anon_noreserve(2 * page, None).unwrap();
        assert_eq!(
            Mapping::anon_noreserve(page, Some(m.addr())).unwrap_err(),
            Errno::EEXIST
        );
        drop(m);
        // A free range is taken exactly where asked. The hole is made by
        // unmapping half of our own mapping; the test harness runs other tests
        // on other threads of this process, and their mmap may land in the
        // hole first (seen in CI), so that case tries a fresh hole.
        for _ in 0..100 {
            let m = Mapping::anon_noreserve(2 * page, None).unwrap();
            let (addr, len) = m.into_raw();
            // SAFETY: we own the range given up by into_raw and hold no view.
            unsafe { munmap(addr + page, page) }.unwrap();
            let placed = Mapping::anon_noreserve(page, Some(addr + page));
            // SAFETY: the first page is still ours (the second is not).
            unsafe { munmap(addr, len - page) }.unwrap();
            match placed {
                Ok(again) => {
                    assert_eq!(again.addr(), addr + page);
                    return;
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => panic!("MAP_FIXED_NOREPLACE on a free range: {e}"),
            }
        }
        panic!("another thread took each of 100 fresh holes first");
    }

    #[test]
    fn shared_mappings_see_each_other_and_fixed_replaces() {
        use std::os::fd::AsFd;
        let page = crate::page_size();
        let fd = crate::memfd_create(c"hobbes-sys-map", crate::MemfdFlags::empty()).unwrap();
        crate::ftruncate(fd.as_fd(), 2 * page as u64).unwrap();
        let mut a = Mapping::shared(fd.as_fd(), 2 * page, 0, Prot::ReadWrite).unwrap();
        let b = Mapping::shared(fd.as_fd(), page, page as u64, Prot::Read).unwrap();
        a.as_mut_slice()[page + 3] = 9;
        assert_eq!(b.as_slice()[3], 9);
        let r = Mapping::reserve(page).unwrap();
        assert_eq!(r.prot(), Prot::None);
        let (at, len) = r.into_raw();
        // SAFETY: `at` is our own reservation, nothing refers to it.
        let got = unsafe { mmap_shared_fixed(at, len, Prot::Read, fd.as_fd(), page as u64) };
        assert_eq!(got, Ok(at));
        // SAFETY: the range is mapped read-only and owned by us alone now.
        let c = unsafe { Mapping::from_raw(at, len, Prot::Read) };
        assert_eq!(c.as_slice()[3], 9);
        drop(c);
        let r2 = Mapping::reserve(page).unwrap().into_raw();
        // SAFETY: our own reservation.
        assert_eq!(unsafe { reserve_fixed(r2.0, r2.1) }, Ok(r2.0));
        // SAFETY: as above.
        unsafe { munmap(r2.0, r2.1) }.unwrap();
    }
}
