//! Packed layouts for the micro-kernel.
//!
//! The weight (`B = Wᵀ`, `K x N`) is cut into panels of [`NR`] columns; a
//! panel holds its `K` rows of `NR` floats one after another, so a block of
//! `KC` rows starting at row `p` is the contiguous slice at `p * NR`. Each
//! row of a panel is one 64-byte cache line.
//!
//! The input (`A`, `M x K`) is cut into micro-panels of [`MR`] rows; a
//! micro-panel holds for each `k` the `MR` values `A[i..i+MR][k]`, rows past
//! the end of the matrix being zero.

use super::{MR, NR};
use crate::simd::Lanes8;

/// One cache line of floats.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A zero-initialized `f32` buffer aligned to 64 bytes.
#[derive(Clone, Debug)]
pub(crate) struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over 16 floats with no padding, and
        // `len <= 16 * lines.len()`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, with exclusive access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// Packs a row-major `[n, k]` weight into `n.div_ceil(NR)` panels of
/// `k x NR`, zero-padding the columns past `n`.
pub(crate) fn pack_b(weight: &[f32], n: usize, k: usize) -> AlignedBuf {
    assert_eq!(weight.len(), n * k);
    let panels = n.div_ceil(NR);
    let mut buf = AlignedBuf::zeroed(panels * k * NR);
    let dst = buf.as_mut_slice();
    for (j, row) in weight.chunks_exact(k.max(1)).enumerate().take(n) {
        let (p, jj) = (j / NR, j % NR);
        let panel = &mut dst[p * k * NR..][..k * NR];
        for (kk, &w) in row.iter().enumerate() {
            panel[kk * NR + jj] = w;
        }
    }
    buf
}

/// Packs rows `rows` of the row-major `[_, k]` matrix `x` into `dst` as
/// micro-panels of `MR` rows (the last one zero-padded).
///
/// Whole micro-panels are transposed 8 columns at a time in registers.
#[inline(always)]
pub(crate) fn pack_a<V: Lanes8>(
    x: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    let m = rows.len();
    let blocks = m.div_ceil(MR);
    assert!(dst.len() >= blocks * MR * k);
    for b in 0..blocks {
        let panel = &mut dst[b * MR * k..][..MR * k];
        let r0 = rows.start + b * MR;
        let valid = MR.min(rows.end - r0);
        if valid == MR {
            let src: [&[f32]; MR] = std::array::from_fn(|i| &x[(r0 + i) * k..][..k]);
            let mut kk = 0;
            while kk + 8 <= k {
                let mut r = [V::splat(0.0); 8];
                for i in 0..MR {
                    // SAFETY: `kk + 8 <= k`, the length of `src[i]`.
                    r[i] = unsafe { V::load(src[i].as_ptr().add(kk)) };
                }
                let cols = V::transpose8(r);
                // Column `j` holds step `kk + j` of the `MR` rows in its
                // first lanes. Each store writes 8 floats, the last 2 of
                // which the next one overwrites; the last goes through a
                // buffer so nothing is written past step `kk + 7`.
                let out = &mut panel[kk * MR..][..8 * MR];
                for j in 0..7 {
                    // SAFETY: `j * MR + 8 <= 6 * MR + 8 <= 8 * MR`.
                    unsafe { cols[j].store(out.as_mut_ptr().add(j * MR)) };
                }
                let mut last = [0.0f32; 8];
                // SAFETY: `last` holds 8 floats.
                unsafe { cols[7].store(last.as_mut_ptr()) };
                out[7 * MR..].copy_from_slice(&last[..MR]);
                kk += 8;
            }
            for (kk, out) in panel.chunks_exact_mut(MR).enumerate().skip(kk) {
                for i in 0..MR {
                    out[i] = src[i][kk];
                }
            }
        } else {
            panel.fill(0.0);
            for i in 0..valid {
                let src = &x[(r0 + i) * k..][..k];
                for (kk, &v) in src.iter().enumerate() {
                    panel[kk * MR + i] = v;
                }
            }
        }
    }
}
