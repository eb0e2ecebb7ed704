//! The only place that touches raw C memory: reading C strings and string
//! arrays, writing out-parameters, and handing malloc'd buffers to C.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use std::ptr;

use crate::error::{Error, Result};

/// Borrow a C string argument as UTF-8. NULL and invalid UTF-8 are `EINVAL`.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives `'a`.
pub unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and the caller guarantees it is NUL-terminated and live.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str()
        .map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
}

/// Collect a NULL-terminated array of C strings (as `argv`/`envp`).
/// A NULL array is empty.
///
/// # Safety
/// `array` is NULL or points to C strings followed by a NULL entry, all live
/// for the duration of the call.
pub unsafe fn str_array(array: *const *const c_char, what: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if array.is_null() {
        return Ok(out);
    }
    for i in 0.. {
        // SAFETY: the caller guarantees every index up to and including the
        // terminating NULL is in bounds.
        let item = unsafe { *array.add(i) };
        if item.is_null() {
            break;
        }
        // SAFETY: a non-NULL entry is a live NUL-terminated string (caller).
        let s = unsafe { str_arg(item, what) }?;
        out.push(s.to_owned());
    }
    Ok(out)
}

/// Store `value` through an optional out-parameter (NULL: the caller does not want it).
///
/// # Safety
/// `ptr` is NULL or valid and suitably aligned for a write of `T`.
pub unsafe fn write_opt<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: non-NULL, and valid for writes per the caller's contract.
        unsafe { ptr.write(value) };
    }
}

/// Copy `items` into a buffer from `malloc`, which C releases with `free()`.
/// Never NULL on success, even for zero items, so NULL always means failure.
pub fn malloc_array<T: Copy>(items: &[T]) -> Result<*mut T> {
    let size = std::mem::size_of_val(items).max(1);
    // SAFETY: malloc has no preconditions; its result is checked for NULL
    // below and is aligned for any fundamental type, which T (plain C data) is.
    let buf = unsafe { libc::malloc(size) }.cast::<T>();
    if buf.is_null() {
        return Err(Error::new(libc::ENOMEM, "out of memory"));
    }
    // SAFETY: buf has room for items.len() values of T and cannot overlap
    // items, which Rust owns.
    unsafe { ptr::copy_nonoverlapping(items.as_ptr(), buf, items.len()) };
    Ok(buf)
}

/// [`malloc_array`] for the list calls: also stores the length in `*len_out`.
///
/// # Safety
/// `len_out` is non-NULL and valid for writes.
pub unsafe fn malloc_list<T: Copy>(items: &[T], len_out: *mut c_int) -> Result<*mut T> {
    let len = c_int::try_from(items.len())
        .map_err(|_| Error::new(libc::EOVERFLOW, "list too long for an int count"))?;
    let buf = malloc_array(items)?;
    // SAFETY: valid for writes per this function's contract.
    unsafe { len_out.write(len) };
    Ok(buf)
}

/// A malloc'd, NUL-terminated copy of `s` (cut at an interior NUL, if any),
/// released by C with `free()`.
pub fn malloc_str(s: &str) -> Result<*mut c_char> {
    let bytes = s.as_bytes();
    let bytes = &bytes[..bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len())];
    let mut with_nul = Vec::with_capacity(bytes.len() + 1);
    with_nul.extend_from_slice(bytes);
    with_nul.push(0);
    Ok(malloc_array(&with_nul)?.cast::<c_char>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn string_arrays_stop_at_null() {
        let a = CString::new("a").unwrap();
        let b = CString::new("bc").unwrap();
        let arr = [a.as_ptr(), b.as_ptr(), ptr::null()];
        // SAFETY: NULL-terminated array of live C strings.
        let got = unsafe { str_array(arr.as_ptr(), "argv") }.unwrap();
        assert_eq!(got, ["a", "bc"]);
        // SAFETY: NULL is accepted.
        assert!(unsafe { str_array(ptr::null(), "argv") }
            .unwrap()
            .is_empty());
    }

    #[test]
    fn null_string_is_einval() {
        // SAFETY: NULL is accepted.
        let err = unsafe { str_arg(ptr::null(), "name") }.unwrap_err();
        assert_eq!(err.errno, libc::EINVAL);
    }

    #[test]
    fn malloc_str_is_nul_terminated() {
        let p = malloc_str("x\0y").unwrap();
        // SAFETY: p is a NUL-terminated malloc'd string, freed once here.
        unsafe {
            assert_eq!(CStr::from_ptr(p).to_str().unwrap(), "x");
            libc::free(p.cast());
        }
    }
}
