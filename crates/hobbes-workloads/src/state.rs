//! The published state: one header page, then the arrays the analytics read.
//!
//! ```text
//! page 0   header: u64 words (magic, workload, step, rows, row_len, aux_len,
//!          checksum, nx, ny, nz)
//! page 1.. primary array: rows x row_len f64 (SNAP: scalar flux per group
//!          per cell; HPCCG: the solution x), then aux_len f64 (SNAP: the
//!          per-group velocities; HPCCG: the residual vector r)
//! ```
//!
//! The producer writes the step number and the checksum (the sum of the
//! primary array, in index order) last; a consumer that recomputes the sum
//! and finds another value has read a torn state.

use crate::error::{Error, Result};
use crate::sys::{self, PAGE};

/// Header word 0 of every published state: the bytes `HINSITU1` read as a little-endian u64.
/// A state without it is refused ([`crate::Error::BadState`]).
pub const MAGIC: u64 = u64::from_le_bytes(*b"HINSITU1");

const W_MAGIC: usize = 0;
const W_WORKLOAD: usize = 1;
const W_STEP: usize = 2;
const W_ROWS: usize = 3;
const W_ROW_LEN: usize = 4;
const W_AUX_LEN: usize = 5;
const W_CHECKSUM: usize = 6;
const W_DIMS: usize = 7;

/// The shape of a simulation's published state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// 1 = SNAP, 2 = HPCCG.
    pub workload: u64,
    /// Rows of the primary array (SNAP: energy groups; HPCCG: 1).
    pub rows: usize,
    /// f64s per row of the primary array (SNAP: cells, `nx*ny*nz`; HPCCG: unknowns).
    pub row_len: usize,
    /// f64s of the auxiliary array after the primary one (SNAP: one velocity per group;
    /// HPCCG: the residual, as long as x).
    pub aux_len: usize,
    /// Grid size `[nx, ny, nz]` in cells, for the analytics' information.
    pub dims: [usize; 3],
}

impl Layout {
    /// Bytes of published state: the header page plus the arrays, whole pages.
    pub fn bytes(&self) -> usize {
        PAGE + ((self.rows * self.row_len + self.aux_len) * 8).next_multiple_of(PAGE)
    }

    /// f64s of the primary array: `rows * row_len`.
    pub fn primary_len(&self) -> usize {
        self.rows * self.row_len
    }
}

/// Write the header (step 0) into zeroed state memory.
pub fn init(state: &mut [u8], layout: &Layout) -> Result<()> {
    const OP: &str = "init state";
    if state.len() < layout.bytes() {
        return Err(Error::invalid(
            OP,
            format!("{} bytes of state, {} needed", state.len(), layout.bytes()),
        ));
    }
    let words = sys::u64s_mut(&mut state[..PAGE])
        .ok_or_else(|| Error::invalid(OP, "state memory is not 8-byte aligned"))?;
    words[W_MAGIC] = MAGIC;
    words[W_WORKLOAD] = layout.workload;
    words[W_STEP] = 0;
    words[W_ROWS] = layout.rows as u64;
    words[W_ROW_LEN] = layout.row_len as u64;
    words[W_AUX_LEN] = layout.aux_len as u64;
    words[W_CHECKSUM] = 0f64.to_bits();
    for (i, d) in layout.dims.iter().enumerate() {
        words[W_DIMS + i] = *d as u64;
    }
    Ok(())
}

/// The arrays of state memory laid out by `layout` (after [`init`]).
pub fn arrays_mut<'a>(state: &'a mut [u8], layout: &Layout) -> (&'a mut [f64], &'a mut [f64]) {
    let (_, data) = state.split_at_mut(PAGE);
    let data = sys::f64s_mut(&mut data[..(layout.primary_len() + layout.aux_len) * 8])
        .expect("state memory is page aligned");
    data.split_at_mut(layout.primary_len())
}

/// Stamp a finished step: checksum first, the step number last.
pub fn stamp(state: &mut [u8], step: u64, checksum: f64) {
    let words = sys::u64s_mut(&mut state[..PAGE]).expect("state memory is page aligned");
    words[W_CHECKSUM] = checksum.to_bits();
    words[W_STEP] = step;
}

/// The checksum the producer stamps and consumers verify.
pub fn checksum(primary: &[f64]) -> f64 {
    primary.iter().sum()
}

/// A consumer's validated view of published state.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The shape read from the header.
    pub layout: Layout,
    /// The step the state belongs to (0 before the first step is stamped).
    pub step: u64,
    /// The checksum stamped by the producer; compare it with [`checksum`] of `primary` to
    /// detect a torn read.
    pub checksum: f64,
    /// The primary array, `rows * row_len` f64s (borrowed from the mapping).
    pub primary: &'a [f64],
    /// The auxiliary array, `aux_len` f64s.
    pub aux: &'a [f64],
    /// Primary and aux arrays as one slice (they are contiguous).
    pub all: &'a [f64],
}

impl<'a> View<'a> {
    /// Parse state another process published. Everything is checked: a
    /// bad header is an error, never a panic.
    pub fn parse(bytes: &'a [u8], object: &str) -> Result<View<'a>> {
        const OP: &str = "read state";
        if bytes.len() < PAGE {
            return Err(Error::bad_state(
                OP,
                object,
                format!("{} bytes, less than a header page", bytes.len()),
            ));
        }
        let words = sys::u64s(&bytes[..PAGE])
            .ok_or_else(|| Error::bad_state(OP, object, "not 8-byte aligned"))?;
        if words[W_MAGIC] != MAGIC {
            return Err(Error::bad_state(
                OP,
                object,
                format!("magic {:#x}, expected {MAGIC:#x}", words[W_MAGIC]),
            ));
        }
        let rows = words[W_ROWS];
        let row_len = words[W_ROW_LEN];
        let aux_len = words[W_AUX_LEN];
        let need = rows
            .checked_mul(row_len)
            .and_then(|p| p.checked_add(aux_len))
            .and_then(|n| n.checked_mul(8))
            .and_then(|b| b.checked_add(PAGE as u64));
        match need {
            Some(n) if n <= bytes.len() as u64 => {}
            _ => {
                return Err(Error::bad_state(
                    OP,
                    object,
                    format!(
                        "{rows} x {row_len} + {aux_len} f64s do not fit {} bytes",
                        bytes.len()
                    ),
                ))
            }
        }
        let layout = Layout {
            workload: words[W_WORKLOAD],
            rows: rows as usize,
            row_len: row_len as usize,
            aux_len: aux_len as usize,
            dims: [0, 1, 2].map(|i| words[W_DIMS + i] as usize),
        };
        let data = sys::f64s(&bytes[PAGE..PAGE + (layout.primary_len() + layout.aux_len) * 8])
            .ok_or_else(|| Error::bad_state(OP, object, "arrays not 8-byte aligned"))?;
        let (primary, aux) = data.split_at(layout.primary_len());
        Ok(View {
            layout,
            step: words[W_STEP],
            checksum: f64::from_bits(words[W_CHECKSUM]),
            primary,
            aux,
            all: data,
        })
    }

    /// Whether the arrays match the stamped checksum (false: a torn read).
    pub fn consistent(&self) -> bool {
        checksum(self.primary).to_bits() == self.checksum.to_bits()
    }

    /// Row `g` of the primary array.
    pub fn row(&self, g: usize) -> &'a [f64] {
        &self.primary[g * self.layout.row_len..(g + 1) * self.layout.row_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hobbes_sys::Mapping as AnonMap;

    #[test]
    fn header_round_trip_and_torn_detection() {
        let layout = Layout {
            workload: 1,
            rows: 3,
            row_len: 100,
            aux_len: 3,
            dims: [10, 5, 2],
        };
        let mut m = AnonMap::anon(layout.bytes()).unwrap();
        let s = m.as_mut_slice();
        init(s, &layout).unwrap();
        let (p, a) = arrays_mut(s, &layout);
        p.iter_mut().enumerate().for_each(|(i, v)| *v = i as f64);
        a.copy_from_slice(&[1.0, 2.0, 3.0]);
        let sum = checksum(p);
        stamp(s, 7, sum);
        let v = View::parse(s, "t").unwrap();
        assert_eq!((v.step, v.layout), (7, layout));
        assert!(v.consistent());
        assert_eq!(v.row(1)[0], 100.0);
        assert_eq!(v.aux, &[1.0, 2.0, 3.0]);
        arrays_mut(s, &layout).0[5] = -1.0;
        assert!(!View::parse(s, "t").unwrap().consistent());
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut m = AnonMap::anon(2 * PAGE).unwrap();
        let s = m.as_mut_slice();
        assert!(View::parse(s, "t")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let layout = Layout {
            workload: 1,
            rows: 1,
            row_len: 10,
            aux_len: 0,
            dims: [10, 1, 1],
        };
        init(s, &layout).unwrap();
        let words = sys::u64s_mut(&mut s[..PAGE]).unwrap();
        words[W_ROWS] = u64::MAX;
        assert!(View::parse(s, "t")
            .unwrap_err()
            .to_string()
            .contains("do not fit"));
        assert!(View::parse(&s[..100], "t").is_err());
    }
}
