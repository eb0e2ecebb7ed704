//! The crate's own unsafe code: views of shared pages and of f64/u64
//! arrays in byte buffers. Mappings and futexes come from `hobbes-sys`.

use std::sync::atomic::{AtomicU32, AtomicU64};

pub const PAGE: usize = 4096;

/// A range of shared memory (an XEMEM segment or attachment) that stays
/// mapped as long as its owner `K` lives. Page 0 holds atomics (lock and
/// acknowledgement words), the rest (if any) is plain bytes: the two never
/// overlap, so atomics and byte slices never alias.
pub struct Shared<K> {
    ptr: *mut u8,
    len: usize,
    _owner: K,
}

// SAFETY: the owner keeps the mapping alive; the memory itself is shared
// with other processes anyway and only reached through atomics or through
// `&mut self`.
unsafe impl<K: Send> Send for Shared<K> {}

impl<K> Shared<K> {
    /// # Safety
    /// `[ptr, ptr+len)` must be mapped read-write (or read-only if only
    /// `bytes` is used), page aligned, and stay mapped while `owner` lives.
    pub unsafe fn new(ptr: *mut u8, len: usize, owner: K) -> Shared<K> {
        assert!((ptr as usize).is_multiple_of(PAGE) && len >= PAGE);
        Shared {
            ptr,
            len,
            _owner: owner,
        }
    }

    /// The 32-bit atomic at byte `off` of page 0 (4-byte aligned).
    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= PAGE);
        // SAFETY: inside page 0, aligned, mapped while `self` lives; page 0
        // is only ever accessed through atomics.
        unsafe { AtomicU32::from_ptr(self.ptr.add(off).cast()) }
    }

    /// The 64-bit atomic at byte `off` of page 0 (8-byte aligned).
    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= PAGE);
        // SAFETY: as for u32_at.
        unsafe { AtomicU64::from_ptr(self.ptr.add(off).cast()) }
    }

    /// The bytes after page 0.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: mapped (at least readable) while `self` lives; never
        // reached through the atomics of page 0.
        unsafe { std::slice::from_raw_parts(self.ptr.add(PAGE), self.len - PAGE) }
    }

    /// The bytes after page 0, writable (only for read-write mappings).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for bytes; the caller mapped the range read-write.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(PAGE), self.len - PAGE) }
    }
}

/// View 8-byte aligned bytes as f64s (every bit pattern is a valid f64).
pub fn f64s(bytes: &[u8]) -> Option<&[f64]> {
    // SAFETY: f64 is plain data with no invalid bit patterns; align_to
    // only hands out the correctly aligned middle part.
    let (head, mid, tail) = unsafe { bytes.align_to::<f64>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// As [`f64s`], writable.
pub fn f64s_mut(bytes: &mut [u8]) -> Option<&mut [f64]> {
    // SAFETY: as for f64s; writes of any f64 leave valid bytes.
    let (head, mid, tail) = unsafe { bytes.align_to_mut::<f64>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// View 8-byte aligned bytes as u64s.
pub fn u64s(bytes: &[u8]) -> Option<&[u64]> {
    // SAFETY: as for f64s.
    let (head, mid, tail) = unsafe { bytes.align_to::<u64>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// As [`u64s`], writable.
pub fn u64s_mut(bytes: &mut [u8]) -> Option<&mut [u64]> {
    // SAFETY: as for f64s.
    let (head, mid, tail) = unsafe { bytes.align_to_mut::<u64>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}
