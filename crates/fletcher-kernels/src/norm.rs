//! Layer normalization.
//!
//! Each row is normalized on its own (mean, then the variance of the
//! deviations, both accumulated in `f32` over 8 lanes while the row sits in
//! L1), so a row's result never depends on the other rows. Many rows are
//! split into chunks over the current rayon pool.

use crate::cpu::{self, Isa};
use crate::simd::{self, Lanes8};
use rayon::prelude::*;

/// Rows below this many floats in total are normalized on the calling thread.
const SERIAL_FLOATS: usize = 1 << 15;

/// `x[r] = LN(x[r]) * gamma + beta` for every row of width `gamma.len()`.
pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    run(cpu::isa(), x, None, gamma, beta, eps);
}

/// `x[r] = LN(x[r] + residual[r]) * gamma + beta` for every row.
pub fn add_layer_norm(x: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    assert_eq!(x.len(), residual.len());
    run(cpu::isa(), x, Some(residual), gamma, beta, eps);
}

/// Both entry points on an explicit code path.
pub(crate) fn run(
    isa: Isa,
    x: &mut [f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let h = gamma.len();
    assert_eq!(beta.len(), h);
    if h == 0 {
        return;
    }
    assert_eq!(x.len() % h, 0);
    let rows = x.len() / h;
    let threads = rayon::current_num_threads();
    if threads == 1 || x.len() < SERIAL_FLOATS {
        rows_with(isa, x, residual, gamma, beta, eps);
        return;
    }
    // A few chunks per thread for balance; a chunk is whole rows.
    let chunk_rows = rows.div_ceil(4 * threads).max(1);
    match residual {
        Some(r) => x
            .par_chunks_mut(chunk_rows * h)
            .zip(r.par_chunks(chunk_rows * h))
            .for_each(|(x, r)| rows_with(isa, x, Some(r), gamma, beta, eps)),
        None => x
            .par_chunks_mut(chunk_rows * h)
            .for_each(|x| rows_with(isa, x, None, gamma, beta, eps)),
    }
}

fn rows_with(
    isa: Isa,
    x: &mut [f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only used on CPUs that have AVX2 and FMA.
        Isa::Avx2Fma | Isa::Avx512 => unsafe { rows_avx2(x, residual, gamma, beta, eps) },
        _ => rows_generic::<simd::Portable>(x, residual, gamma, beta, eps),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(
    x: &mut [f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    rows_generic::<simd::Avx2>(x, residual, gamma, beta, eps);
}

#[inline(always)]
fn rows_generic<V: Lanes8>(
    x: &mut [f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let h = gamma.len();
    match residual {
        Some(res) => {
            for (row, r) in x.chunks_exact_mut(h).zip(res.chunks_exact(h)) {
                row_generic::<V>(row, Some(r), gamma, beta, eps);
            }
        }
        None => {
            for row in x.chunks_exact_mut(h) {
                row_generic::<V>(row, None, gamma, beta, eps);
            }
        }
    }
}

/// Normalizes one row of `gamma.len()` values.
#[inline(always)]
fn row_generic<V: Lanes8>(
    row: &mut [f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let h = row.len();
    let h8 = h - h % 8;
    let p = row.as_mut_ptr();
    // Pass 1: add the residual, sum.
    let mut s0 = V::splat(0.0);
    let mut s1 = V::splat(0.0);
    let mut i = 0;
    // SAFETY: `i + 8 <= h8 <= h`, the length of `row`, `residual`, `gamma`
    // and `beta` (the same holds for the two loops below).
    unsafe {
        while i < h8 {
            let mut v = V::load(p.add(i));
            if let Some(r) = residual {
                v = v.add(V::load(r.as_ptr().add(i)));
                v.store(p.add(i));
            }
            if i % 16 == 0 {
                s0 = s0.add(v);
            } else {
                s1 = s1.add(v);
            }
            i += 8;
        }
    }
    let mut sum = s0.add(s1).hsum();
    for j in h8..h {
        if let Some(r) = residual {
            row[j] += r[j];
        }
        sum += row[j];
    }
    let mean = sum / h as f32;
    // Pass 2: variance of the deviations (exact two-pass form).
    let m = V::splat(mean);
    let mut q0 = V::splat(0.0);
    let mut q1 = V::splat(0.0);
    i = 0;
    // SAFETY: see above.
    unsafe {
        while i < h8 {
            let d = V::load(p.add(i)).sub(m);
            if i % 16 == 0 {
                q0 = d.mul_add(d, q0);
            } else {
                q1 = d.mul_add(d, q1);
            }
            i += 8;
        }
    }
    let mut ss = q0.add(q1).hsum();
    for &v in &row[h8..] {
        ss += (v - mean) * (v - mean);
    }
    let inv = 1.0 / (ss / h as f32 + eps).sqrt();
    // Pass 3: scale and shift.
    let vinv = V::splat(inv);
    i = 0;
    // SAFETY: see above.
    unsafe {
        while i < h8 {
            let d = V::load(p.add(i)).sub(m).mul(vinv);
            d.mul_add(
                V::load(gamma.as_ptr().add(i)),
                V::load(beta.as_ptr().add(i)),
            )
            .store(p.add(i));
            i += 8;
        }
    }
    for j in h8..h {
        row[j] = ((row[j] - mean) * inv) * gamma[j] + beta[j];
    }
}
