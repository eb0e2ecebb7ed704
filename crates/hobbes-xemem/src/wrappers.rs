//! Owning wrappers: a [`Segment`] removes itself, a [`Grant`] releases
//! itself, an [`Attachment`] detaches itself when dropped.

use crate::{state, Access, ApId, MakeOptions, PageKind, Result, SegId};

/// An exported segment. Dropping it removes the segment (attachers keep
/// their mappings) and, for memory from [`Segment::alloc`], unmaps it.
#[derive(Debug)]
pub struct Segment {
    segid: SegId,
    addr: usize,
    len: usize,
    page_kind: PageKind,
    /// The memory is ours to unmap (it came from `alloc`).
    owns_memory: bool,
}

impl Segment {
    pub(crate) fn new(
        segid: SegId,
        addr: usize,
        len: usize,
        page_kind: PageKind,
        owns_memory: bool,
    ) -> Self {
        Segment {
            segid,
            addr,
            len,
            page_kind,
            owns_memory,
        }
    }

    /// See [`crate::alloc`].
    pub fn alloc(len: usize, opts: &MakeOptions) -> Result<Segment> {
        crate::alloc(len, opts)
    }

    /// Export caller-owned memory, as [`crate::make`] (in place). Dropping
    /// the segment removes it but leaves the memory mapped.
    ///
    /// # Safety
    ///
    /// As for [`crate::make`].
    pub unsafe fn make(addr: *mut u8, len: usize, opts: &MakeOptions) -> Result<Segment> {
        // SAFETY: passed on from our caller.
        let (segid, kind) = unsafe { crate::make_kind(addr as usize, len, opts) }?;
        Ok(Segment::new(segid, addr as usize, len, kind, false))
    }

    /// The node-wide id others pass to [`Grant::get`]; valid until this
    /// segment is dropped.
    pub fn segid(&self) -> SegId {
        self.segid
    }

    /// The start of the exported memory in this process (page-aligned). It
    /// stays valid while the segment lives; after a drop only when the
    /// caller owns the memory ([`Segment::make`]).
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// The exported size in bytes, a multiple of the page size used: for
    /// [`Segment::alloc`] the requested length rounded up to it.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: segments are at least a page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pages backing the memory (base, transparent huge or hugetlb),
    /// as recorded in the NIS for attachers.
    pub fn page_kind(&self) -> PageKind {
        self.page_kind
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = crate::remove(self.segid);
        if self.owns_memory {
            unmap_backing(self.addr, self.len);
        }
    }
}

/// Unmap memory `alloc` mapped and forget its backing.
pub(crate) fn unmap_backing(addr: usize, len: usize) {
    let mut st = state::lock();
    st.backings.retain(|b| b.addr != addr || b.len != len);
    // SAFETY: memory `alloc` mapped for the segment being dropped (or never
    // handed out); its owner gives it up.
    let _ = unsafe { hobbes_sys::mem::munmap(addr, len) };
}

/// An access permit; released when dropped. Attachments outlive it.
#[derive(Debug)]
pub struct Grant {
    apid: ApId,
    segid: SegId,
    access: Access,
}

impl Grant {
    /// See [`crate::get`].
    pub fn get(segid: SegId, access: Access) -> Result<Grant> {
        Ok(Grant {
            apid: crate::get(segid, access)?,
            segid,
            access,
        })
    }

    /// The process-local permit id, for the free functions
    /// ([`crate::attach`]); released when the grant is dropped.
    pub fn apid(&self) -> ApId {
        self.apid
    }

    /// The segment the permit is for.
    pub fn segid(&self) -> SegId {
        self.segid
    }

    /// The access asked for and granted: read-only permits make read-only
    /// attachments.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Map `len` bytes from `offset` where the kernel chooses (see [`crate::attach`]).
    pub fn attach(&self, offset: u64, len: usize) -> Result<Attachment> {
        let ptr = crate::attach(self.apid, offset, len)?;
        Ok(Attachment {
            addr: ptr as usize,
            len,
            read_only: self.access == Access::ReadOnly,
        })
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let _ = crate::release(self.apid);
    }
}

/// A mapping of a segment; unmapped when dropped.
#[derive(Debug)]
pub struct Attachment {
    /// An address, not a pointer: the attachment itself is plain data
    /// (Send + Sync); accesses through `as_ptr` are the user's business.
    addr: usize,
    len: usize,
    read_only: bool,
}

impl Attachment {
    /// Where the attached bytes start: the segment's byte at the `offset`
    /// passed to [`Grant::attach`]. Valid for [`len`](Self::len) bytes until
    /// the attachment is dropped; writes need a read-write permit.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// The number of bytes attached, as asked for in [`Grant::attach`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: attachments are at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Mapped without write permission: a write faults (SIGSEGV).
    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let _ = crate::detach(self.addr as *mut u8);
    }
}
