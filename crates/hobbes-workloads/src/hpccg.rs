//! An HPCCG-style conjugate gradient solver (our own code, after the
//! structure of Mantevo's HPCCG): the matrix of a 27-point stencil on an
//! nx x ny x nz grid, 27 on the diagonal and -1 for every neighbour inside
//! the grid, applied matrix-free; the right-hand side is `A * 1`, so the
//! exact solution is all ones and the start is x = 0, as in HPCCG.
//!
//! One time step is one CG iteration. Published: the iterate x (primary
//! array) and the residual vector r (aux array).

use crate::state::{self, Layout};

/// The problem size of an HPCCG run: the grid's extent in cells along each axis (one
/// unknown per cell; each at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpccgParams {
    /// Cells along x (the fastest-varying index).
    pub nx: usize,
    /// Cells along y.
    pub ny: usize,
    /// Cells along z (the slowest-varying index).
    pub nz: usize,
}

impl HpccgParams {
    /// An n x n x n grid.
    pub fn cube(n: usize) -> HpccgParams {
        HpccgParams {
            nx: n,
            ny: n,
            nz: n,
        }
    }

    /// The number of unknowns (matrix rows): `nx * ny * nz`.
    pub fn rows(&self) -> usize {
        self.nx * self.ny * self.nz
    }

    /// The published state's shape: workload 2, x as one row of [`HpccgParams::rows`] f64s,
    /// r as the aux array of the same length.
    pub fn layout(&self) -> Layout {
        Layout {
            workload: 2,
            rows: 1,
            row_len: self.rows(),
            aux_len: self.rows(),
            dims: [self.nx, self.ny, self.nz],
        }
    }
}

/// A CG solve in progress: the right-hand side, the search direction and `A p` (three vectors
/// of [`HpccgParams::rows`] f64s owned here); x and r live in the published state memory the
/// caller passes to [`Hpccg::init`] and [`Hpccg::step`].
pub struct Hpccg {
    p: HpccgParams,
    b: Vec<f64>,
    p_dir: Vec<f64>,
    ap: Vec<f64>,
    /// r.r now and before the last iteration.
    rtrans: f64,
    rtrans_prev: f64,
    iterations: u64,
    normr0: f64,
}

impl Hpccg {
    /// Set up the problem for `p`: computes `b = A * 1` and its norm. Call [`Hpccg::init`]
    /// on the state memory before the first [`Hpccg::step`].
    pub fn new(p: HpccgParams) -> Hpccg {
        let ones = vec![1.0; p.rows()];
        let mut b = vec![0.0; p.rows()];
        apply(&p, &ones, &mut b);
        let normr0 = dot(&b, &b).sqrt();
        Hpccg {
            p,
            b,
            p_dir: vec![0.0; p.rows()],
            ap: vec![0.0; p.rows()],
            rtrans: 0.0,
            rtrans_prev: 0.0,
            iterations: 0,
            normr0,
        }
    }

    /// The published state's shape (see [`HpccgParams::layout`]).
    pub fn layout(&self) -> Layout {
        self.p.layout()
    }

    /// x = 0, so r = b.
    pub fn init(&mut self, state: &mut [u8]) {
        let layout = self.layout();
        let (x, r) = state::arrays_mut(state, &layout);
        x.fill(0.0);
        r.copy_from_slice(&self.b);
        self.p_dir.copy_from_slice(&self.b);
        self.rtrans = dot(r, r);
        self.iterations = 0;
    }

    /// ||r|| / ||b|| after the iterations so far (from the recurrence).
    pub fn relative_residual(&self) -> f64 {
        self.rtrans.sqrt() / self.normr0
    }

    /// One CG iteration on the state's x and r. Returns the checksum of x.
    pub fn step(&mut self, step: u64, state: &mut [u8]) -> f64 {
        let layout = self.layout();
        let (x, r) = state::arrays_mut(state, &layout);
        if self.iterations > 0 {
            let beta = if self.rtrans_prev > 0.0 {
                self.rtrans / self.rtrans_prev
            } else {
                0.0
            };
            for (p, r) in self.p_dir.iter_mut().zip(r.iter()) {
                *p = r + beta * *p;
            }
        }
        apply(&self.p, &self.p_dir, &mut self.ap);
        let pap = dot(&self.p_dir, &self.ap);
        // Converged exactly (r = 0): nothing left to do.
        let alpha = if pap > 0.0 { self.rtrans / pap } else { 0.0 };
        for ((xi, ri), (pi, api)) in x
            .iter_mut()
            .zip(r.iter_mut())
            .zip(self.p_dir.iter().zip(&self.ap))
        {
            *xi += alpha * pi;
            *ri -= alpha * api;
        }
        self.iterations += 1;
        self.rtrans_prev = self.rtrans;
        self.rtrans = dot(r, r);
        let sum = state::checksum(x);
        state::stamp(state, step, sum);
        sum
    }
}

/// y = A x for the 27-point matrix: 27 x_i - sum of the in-grid neighbours.
pub fn apply(p: &HpccgParams, x: &[f64], y: &mut [f64]) {
    let (nx, ny, nz) = (p.nx, p.ny, p.nz);
    for k in 0..nz {
        let (k0, k1) = (k.saturating_sub(1), (k + 1).min(nz - 1));
        for j in 0..ny {
            let (j0, j1) = (j.saturating_sub(1), (j + 1).min(ny - 1));
            for i in 0..nx {
                let (i0, i1) = (i.saturating_sub(1), (i + 1).min(nx - 1));
                let mut sum = 0.0;
                for kk in k0..=k1 {
                    for jj in j0..=j1 {
                        let row = (kk * ny + jj) * nx;
                        for v in &x[row + i0..=row + i1] {
                            sum += v;
                        }
                    }
                }
                let c = (k * ny + j) * nx + i;
                // The neighbourhood sum includes x_c once: 27 x_c - (sum - x_c).
                y[c] = 28.0 * x[c] - sum;
            }
        }
    }
}

/// The dot product of `a` and `b`, summed in index order (deterministic); extra elements of
/// the longer slice are ignored.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::View;
    use hobbes_sys::Mapping as AnonMap;

    #[test]
    fn matrix_is_hpccg_27_point() {
        let p = HpccgParams {
            nx: 3,
            ny: 4,
            nz: 5,
        };
        let ones = vec![1.0; p.rows()];
        let mut y = vec![0.0; p.rows()];
        apply(&p, &ones, &mut y);
        // A corner has 7 neighbours, an interior point 26.
        assert_eq!(y[0], 27.0 - 7.0);
        let interior = (2 * p.ny + 1) * p.nx + 1;
        assert_eq!(y[interior], 1.0);
        // Symmetric: e_i^T A e_j = e_j^T A e_i.
        let mut ei = vec![0.0; p.rows()];
        let mut aei = vec![0.0; p.rows()];
        ei[5] = 1.0;
        apply(&p, &ei, &mut aei);
        let mut ej = vec![0.0; p.rows()];
        let mut aej = vec![0.0; p.rows()];
        ej[17] = 1.0;
        apply(&p, &ej, &mut aej);
        assert_eq!(aei[17], aej[5]);
    }

    #[test]
    fn cg_converges_to_ones() {
        let p = HpccgParams {
            nx: 12,
            ny: 10,
            nz: 8,
        };
        let mut cg = Hpccg::new(p);
        let mut m = AnonMap::anon(p.layout().bytes()).unwrap();
        state::init(m.as_mut_slice(), &p.layout()).unwrap();
        cg.init(m.as_mut_slice());
        let mut residuals = vec![cg.relative_residual()];
        for step in 1..=60 {
            cg.step(step, m.as_mut_slice());
            residuals.push(cg.relative_residual());
        }
        assert_eq!(residuals[0], 1.0);
        assert!(residuals[60] < 1e-10, "{residuals:?}");
        assert!(residuals[10] < residuals[1]);
        let v = View::parse(m.as_slice(), "t").unwrap();
        assert_eq!(v.step, 60);
        assert!(v.consistent());
        assert!(v.primary.iter().all(|x| (x - 1.0).abs() < 1e-8));
        // The recurrence residual is the true residual b - A x.
        let mut ax = vec![0.0; p.rows()];
        apply(&p, v.primary, &mut ax);
        for ((b, ax), r) in cg.b.iter().zip(&ax).zip(v.aux) {
            assert!((b - ax - r).abs() < 1e-9);
        }
    }
}
