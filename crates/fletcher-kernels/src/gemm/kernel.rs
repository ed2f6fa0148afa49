//! The register-tiled micro-kernel and the loop nest around it, written once
//! over [`SimdF32`] and compiled per instruction set.

use super::pack::pack_a;
use super::{KC, MR, NR};
use crate::activation::act_regs;
use crate::simd::Lanes8;
use crate::Activation;
use std::ops::Range;

/// `acc += A_panel · B_panel` over `kc` steps of `k`, the `MR x NR` tile
/// held as two vectors a row; one fused multiply-add per element a step.
///
/// # Safety
/// `a` must hold `kc * MR` floats and `b` `kc * NR`.
#[inline(always)]
pub(crate) unsafe fn accumulate<V: Lanes8>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    acc: &mut [V; 2 * MR],
) {
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        // SAFETY: the caller guarantees `kc` steps of `a` and `b`.
        unsafe {
            let b0 = V::load(b);
            let b1 = V::load(b.add(8));
            for i in 0..MR {
                let ai = V::broadcast(a.add(i));
                acc[2 * i] = ai.mul_add(b0, acc[2 * i]);
                acc[2 * i + 1] = ai.mul_add(b1, acc[2 * i + 1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
}

/// The `MR x NR` tile `C += A_panel · B_panel` over `kc` steps of `k`.
///
/// Every output element is one chain of fused multiply-adds over `k` in
/// increasing order, starting from 0 on the first block and from the value
/// stored in `C` on later ones, so its bits do not depend on the other rows
/// or columns of the tile, nor on how `k` is blocked. On the last block the
/// bias is added and the activation applied before the tile is stored.
///
/// # Safety
/// `a` must hold `kc * MR` floats, `b` `kc * NR`, and `c` must be an
/// `MR x NR` tile with row stride `ldc`; `bias` (when given) `NR` floats.
#[inline(always)]
unsafe fn micro<V: Lanes8>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    first: bool,
    epi: Option<(*const f32, Activation)>,
) {
    let mut acc = [V::splat(0.0); 2 * MR];
    // SAFETY: the caller guarantees the extents of `a`, `b`, `c` and `bias`.
    unsafe {
        if !first {
            for i in 0..MR {
                acc[2 * i] = V::load(c.add(i * ldc));
                acc[2 * i + 1] = V::load(c.add(i * ldc + 8));
            }
        }
        accumulate::<V>(kc, a, b, &mut acc);
        if let Some((bias, act)) = epi {
            let (bias0, bias1) = (V::load(bias), V::load(bias.add(8)));
            for i in 0..MR {
                acc[2 * i] = acc[2 * i].add(bias0);
                acc[2 * i + 1] = acc[2 * i + 1].add(bias1);
            }
            act_regs(act, &mut acc);
        }
        for i in 0..MR {
            acc[2 * i].store(c.add(i * ldc));
            acc[2 * i + 1].store(c.add(i * ldc + 8));
        }
    }
}

/// What one call of [`PackedLinear::forward`](super::PackedLinear::forward)
/// computes, shared by its tasks.
#[derive(Clone, Copy)]
pub(crate) struct Problem<'a> {
    pub x: &'a [f32],
    pub k: usize,
    pub n: usize,
    /// Packed weight panels.
    pub b: &'a [f32],
    /// Bias padded to a whole number of panels.
    pub bias: &'a [f32],
    pub act: Activation,
    /// The `[rows, n]` output; tasks write disjoint tiles of it.
    pub y: *mut f32,
}

// SAFETY: `y` is only written through disjoint tiles, one task each (see
// `task`), and the buffer outlives the tasks.
unsafe impl Sync for Problem<'_> {}
// SAFETY: as above.
unsafe impl Send for Problem<'_> {}

/// Packs rows `rows` of `p.x` into `scratch` as micro-panels; returns how
/// many.
#[inline(always)]
pub(crate) fn pack_rows<V: Lanes8>(
    p: &Problem<'_>,
    rows: Range<usize>,
    scratch: &mut Vec<f32>,
) -> usize {
    let mblocks = rows.len().div_ceil(MR);
    if scratch.len() < mblocks * MR * p.k {
        scratch.resize(mblocks * MR * p.k, 0.0);
    }
    pack_a::<V>(p.x, p.k, rows, scratch);
    mblocks
}

/// One `MR x NR` tile of `p.y` at row `r0`, column `col0`, of which `nrows`
/// rows and `cols` columns lie inside the matrix: straight into `y` when
/// whole, through a scratch tile when cut by the edge.
///
/// # Safety
/// As [`micro`] for `ap` and `bp` over `kc` steps; the tile's part inside
/// the matrix must lie in `y` and be the caller's alone.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<V: Lanes8>(
    p: &Problem<'_>,
    kc: usize,
    ap: *const f32,
    bp: *const f32,
    (r0, nrows): (usize, usize),
    (col0, cols): (usize, usize),
    first: bool,
    epi: Option<(*const f32, Activation)>,
) {
    let n = p.n;
    // SAFETY: forwarded from the caller; `tmp` is an `MR x NR` tile of
    // stride `NR`.
    unsafe {
        let cp = p.y.add(r0 * n + col0);
        if nrows == MR && cols == NR {
            micro::<V>(kc, ap, bp, cp, n, first, epi);
            return;
        }
        let mut tmp = [0.0f32; MR * NR];
        if !first {
            for i in 0..nrows {
                std::ptr::copy_nonoverlapping(cp.add(i * n), tmp.as_mut_ptr().add(i * NR), cols);
            }
        }
        micro::<V>(kc, ap, bp, tmp.as_mut_ptr(), NR, first, epi);
        for i in 0..nrows {
            std::ptr::copy_nonoverlapping(tmp.as_ptr().add(i * NR), cp.add(i * n), cols);
        }
    }
}

/// Computes the output tile `rows x panels` of `p`, packing the rows of `x`
/// into `scratch`.
///
/// # Safety
/// `p.y` must be valid for `[rows.end, n]` and no other thread may touch the
/// tile; `rows` must lie in `x` and `panels` in `b`.
#[inline(always)]
pub(crate) unsafe fn task<V: Lanes8>(
    p: &Problem<'_>,
    rows: Range<usize>,
    panels: Range<usize>,
    scratch: &mut Vec<f32>,
) {
    let (k, n) = (p.k, p.n);
    let mblocks = pack_rows::<V>(p, rows.clone(), scratch);
    let mut kb = 0;
    while kb < k {
        let kc = KC.min(k - kb);
        let (first, last) = (kb == 0, kb + kc == k);
        for panel in panels.clone() {
            let col0 = panel * NR;
            // SAFETY: the caller guarantees `panel` is a panel of `b`, whose
            // bias is padded to whole panels; `kb + kc <= k`.
            let (bp, epi) = unsafe {
                (
                    p.b.as_ptr().add((panel * k + kb) * NR),
                    last.then(|| (p.bias.as_ptr().add(col0), p.act)),
                )
            };
            for mb in 0..mblocks {
                let r0 = rows.start + mb * MR;
                // SAFETY: `scratch` holds `mblocks` packed micro-panels of
                // `k x MR`; the tile lies inside `y` and is ours alone.
                unsafe {
                    let ap = scratch.as_ptr().add((mb * k + kb) * MR);
                    let at = (r0, MR.min(rows.end - r0));
                    tile::<V>(p, kc, ap, bp, at, (col0, NR.min(n - col0)), first, epi);
                }
            }
        }
        kb += kc;
    }
}

#[cfg(target_arch = "x86_64")]
/// [`task`] compiled for AVX2 and FMA.
///
/// # Safety
/// As [`task`], and the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn task_avx2(
    p: &Problem<'_>,
    rows: Range<usize>,
    panels: Range<usize>,
    scratch: &mut Vec<f32>,
) {
    // SAFETY: forwarded from the caller.
    unsafe { task::<crate::simd::Avx2>(p, rows, panels, scratch) }
}

/// [`task`] in portable code.
///
/// # Safety
/// As [`task`].
pub(crate) unsafe fn task_portable(
    p: &Problem<'_>,
    rows: Range<usize>,
    panels: Range<usize>,
    scratch: &mut Vec<f32>,
) {
    // SAFETY: forwarded from the caller.
    unsafe { task::<crate::simd::Portable>(p, rows, panels, scratch) }
}
