//! The analytics: a STREAM-style bandwidth kernel and a spectrum analysis,
//! both reading published state (a snapshot or the locked shared arrays)
//! and writing only their own buffers.

use std::sync::Arc;
use std::time::Instant;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};

use crate::state::View;

/// STREAM's scalar.
pub const STREAM_SCALAR: f64 = 3.0;

/// Bandwidth of the four STREAM kernels over one input, GB/s (10^9 bytes/s,
/// counted as STREAM does: 2 words moved per element for copy and scale,
/// 3 for add and triad).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamRates {
    /// `c = a`, GB/s (16 bytes per element).
    pub copy: f64,
    /// `b = s c`, GB/s (16 bytes per element).
    pub scale: f64,
    /// `c = a + b`, GB/s (24 bytes per element).
    pub add: f64,
    /// `t = b + s c`, GB/s (24 bytes per element).
    pub triad: f64,
}

/// STREAM with the published array as STREAM's `a`, read-only: copy
/// `c = a`, scale `b = s c`, add `c = a + b`, triad `t = b + s c`; b, c, t
/// are the kernel's own buffers.
#[derive(Default)]
pub struct Stream {
    /// STREAM's `b` (the scale kernel's output), resized to the input's length on each run.
    pub b: Vec<f64>,
    /// STREAM's `c` (the copy and add kernels' output), resized like `b`.
    pub c: Vec<f64>,
    /// The triad kernel's output (STREAM writes `a`; the input here is read-only).
    pub t: Vec<f64>,
}

impl Stream {
    /// Run the four kernels once over `a` (read-only), each timed on its own with a
    /// monotonic clock, and return their rates. The buffers are resized to `a.len()` first
    /// (allocated on the first call); an empty `a` gives 0 GB/s.
    pub fn run(&mut self, a: &[f64]) -> StreamRates {
        let n = a.len();
        for v in [&mut self.b, &mut self.c, &mut self.t] {
            v.resize(n, 0.0);
        }
        let s = STREAM_SCALAR;
        let rate = |words: usize, t: Instant| {
            (words * 8 * n) as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e9
        };
        let t = Instant::now();
        self.c.copy_from_slice(a);
        let copy = rate(2, t);
        let t = Instant::now();
        for (b, c) in self.b.iter_mut().zip(&self.c) {
            *b = s * c;
        }
        let scale = rate(2, t);
        let t = Instant::now();
        for ((c, a), b) in self.c.iter_mut().zip(a).zip(&self.b) {
            *c = a + b;
        }
        let add = rate(3, t);
        let t = Instant::now();
        for ((t, b), c) in self.t.iter_mut().zip(&self.b).zip(&self.c) {
            *t = b + s * c;
        }
        let triad = rate(3, t);
        std::hint::black_box(&self.t);
        StreamRates {
            copy,
            scale,
            add,
            triad,
        }
    }
}

/// Spectrum of one array: power |X_k|^2 for k = 0 ..= n/2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RowSpectrum {
    /// Sum of |X_k|^2 over all n bins (Parseval: n * sum of x^2).
    pub energy: f64,
    /// The bin with the most power, DC (k = 0) excluded.
    /// `0 ..= n/2`; 0 when no bin above DC has power (or n < 2).
    pub peak_bin: usize,
    /// `|X_k|^2` at `peak_bin` (0 when `peak_bin` is 0).
    pub peak_power: f64,
    /// Power of the DC bin.
    pub dc_power: f64,
}

/// Summary of one analysed state: per row (SNAP: per group) spectra.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpectrumSummary {
    /// One spectrum per row of the primary array, in row order.
    pub rows: Vec<RowSpectrum>,
    /// Sum of the rows' `energy`.
    pub total_energy: f64,
}

/// Power spectra of each row of the published primary array (rustfft,
/// plans cached per length).
pub struct Spectrum {
    planner: FftPlanner<f64>,
    plan: Option<(usize, Arc<dyn Fft<f64>>)>,
    buf: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
}

impl Default for Spectrum {
    fn default() -> Self {
        Spectrum {
            planner: FftPlanner::new(),
            plan: None,
            buf: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

impl Spectrum {
    /// The spectrum of `x` (a real signal of any length; all zeros for an empty one).
    /// Plans a forward FFT of `x.len()` points, reused while the length stays the same.
    pub fn row(&mut self, x: &[f64]) -> RowSpectrum {
        let n = x.len();
        if n == 0 {
            return RowSpectrum::default();
        }
        let fft = match &self.plan {
            Some((len, f)) if *len == n => f.clone(),
            _ => {
                let f = self.planner.plan_fft_forward(n);
                self.plan = Some((n, f.clone()));
                f
            }
        };
        self.buf.clear();
        self.buf.extend(x.iter().map(|&v| Complex::new(v, 0.0)));
        self.scratch
            .resize(fft.get_inplace_scratch_len(), Complex::default());
        fft.process_with_scratch(&mut self.buf, &mut self.scratch);
        let power = |k: usize| self.buf[k].norm_sqr();
        let energy = (0..n).map(power).sum();
        let (mut peak_bin, mut peak_power) = (0, 0.0);
        for k in 1..=n / 2 {
            let p = power(k);
            if p > peak_power {
                (peak_bin, peak_power) = (k, p);
            }
        }
        RowSpectrum {
            energy,
            peak_bin,
            peak_power,
            dc_power: power(0),
        }
    }

    /// The spectra of every row of `view`'s primary array (SNAP: one per energy group; HPCCG:
    /// one of x). The aux array is not analysed.
    pub fn analyse(&mut self, view: &View) -> SpectrumSummary {
        let rows: Vec<RowSpectrum> = (0..view.layout.rows)
            .map(|g| self.row(view.row(g)))
            .collect();
        SpectrumSummary {
            total_energy: rows.iter().map(|r| r.energy).sum(),
            rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spectrum_of_a_sine_peaks_at_its_frequency() {
        let n = 256;
        let k0 = 19;
        let x: Vec<f64> = (0..n)
            .map(|i| 2.0 * (2.0 * std::f64::consts::PI * (k0 * i) as f64 / n as f64).sin() + 0.5)
            .collect();
        let mut s = Spectrum::default();
        let r = s.row(&x);
        assert_eq!(r.peak_bin, k0);
        // |X_k0| = A n / 2 for amplitude A = 2; DC = 0.5 n.
        assert!((r.peak_power - (n as f64).powi(2)).abs() < 1e-6 * r.peak_power);
        assert!((r.dc_power - (0.5 * n as f64).powi(2)).abs() < 1e-6);
        // Parseval.
        let direct: f64 = n as f64 * x.iter().map(|v| v * v).sum::<f64>();
        assert!((r.energy - direct).abs() < 1e-9 * direct);
        // Odd lengths and a second plan size work too.
        let y: Vec<f64> = (0..45)
            .map(|i| (2.0 * std::f64::consts::PI * (4 * i) as f64 / 45.0).cos())
            .collect();
        assert_eq!(s.row(&y).peak_bin, 4);
        assert_eq!(s.row(&x).peak_bin, k0);
    }

    #[test]
    fn stream_kernels_compute_stream() {
        let a: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let mut s = Stream::default();
        let r = s.run(&a);
        for (i, &ai) in a.iter().enumerate() {
            let b = STREAM_SCALAR * ai;
            assert_eq!(s.b[i], b);
            assert_eq!(s.c[i], ai + b);
            assert_eq!(s.t[i], b + STREAM_SCALAR * (ai + b));
        }
        assert!(r.copy > 0.0 && r.scale > 0.0 && r.add > 0.0 && r.triad > 0.0);
        assert!(r.triad.is_finite());
    }
}
