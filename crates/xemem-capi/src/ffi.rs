//! The only place that touches raw C memory: C string arguments,
//! out-parameters, and malloc'd arrays handed to C.

use std::ffi::{c_char, c_int, CStr};

use hobbes_xemem::{Result, XememError};

/// Borrow an optional C string (NULL: none) as UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string live for `'a`.
pub unsafe fn opt_str<'a>(op: &'static str, ptr: *const c_char) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str()
        .map(Some)
        .map_err(|_| XememError::InvalidArgument {
            op,
            reason: "name is not valid UTF-8".into(),
        })
}

/// Store through an out-parameter that must not be NULL.
///
/// # Safety
/// `ptr` is NULL or valid and aligned for a write of `T`.
pub unsafe fn write_out<T>(op: &'static str, ptr: *mut T, value: T) -> Result<()> {
    if ptr.is_null() {
        return Err(XememError::InvalidArgument {
            op,
            reason: "out-parameter is NULL".into(),
        });
    }
    // SAFETY: non-NULL and writable per the caller's contract.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Copy `items` into a buffer from `malloc` that C releases with `free()`;
/// NULL for no items.
pub fn malloc_array<T: Copy>(op: &'static str, items: &[T]) -> Result<*mut T> {
    if items.is_empty() {
        return Ok(std::ptr::null_mut());
    }
    let bytes = std::mem::size_of_val(items);
    // SAFETY: malloc has no preconditions; the result is checked for NULL.
    let buf = unsafe { libc::malloc(bytes) }.cast::<T>();
    if buf.is_null() {
        return Err(XememError::Sys {
            op,
            call: "malloc",
            errno: nix::errno::Errno::ENOMEM,
        });
    }
    // SAFETY: buf has room for items.len() values of T (malloc aligns for
    // any fundamental type) and does not overlap items.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), buf, items.len()) };
    Ok(buf)
}

/// A C `int` count.
pub fn count(n: usize) -> c_int {
    c_int::try_from(n).unwrap_or(c_int::MAX)
}
