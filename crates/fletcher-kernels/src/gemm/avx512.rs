//! The AVX-512 loop nest: a `2 MR x 2 NR` (12 x 32) register tile made of
//! two packed micro-panels of the input and two panels of the weight, so the
//! packed layouts are the ones the 8-lane path uses.
//!
//! Each of the 24 accumulators is one 16-lane register holding a row of one
//! weight panel, and every output element is still one chain of fused
//! multiply-adds over `k` in increasing order, then `+ bias`, then the
//! activation (applied with the 8-lane code): the result has the same bits
//! as the AVX2 path's. Tiles at the edges, where a pair of micro-panels or
//! of panels is incomplete or rows run past the end, go through the 8-lane
//! micro-kernel.

use super::kernel::{pack_rows, tile, Problem};
use super::{MR, NR};
use crate::activation::act_regs;
use crate::simd::{Avx2, SimdF32};
use crate::Activation;
use std::arch::x86_64::*;
use std::ops::Range;

/// Steps of `k` per block: two weight panels of `KC2 x NR` floats (24 KiB)
/// stay in a 32 KiB L1 while the input micro-panels stream past them.
const KC2: usize = 192;

/// `acc += A · B` on a `2 MR x 2 NR` tile over `kc` steps of `k`: `a0`/`a1`
/// two micro-panels (rows `0..MR` and `MR..2 MR`), `b0`/`b1` two panels
/// (columns `0..NR` and `NR..2 NR`); one fused multiply-add per element a
/// step.
///
/// # Safety
/// `a0`, `a1` must hold `kc * MR` floats, `b0`, `b1` `kc * NR`; the CPU must
/// have AVX-512F.
#[inline(always)]
pub(crate) unsafe fn accumulate_wide(
    kc: usize,
    a: [*const f32; 2],
    b: [*const f32; 2],
    acc: &mut [[__m512; 2]; 2 * MR],
) {
    let [mut a0, mut a1] = a;
    let [mut b0, mut b1] = b;
    for _ in 0..kc {
        // SAFETY: the caller guarantees `kc` steps of each pointer and the
        // instruction set.
        unsafe {
            let w0 = _mm512_load_ps(b0);
            let w1 = _mm512_load_ps(b1);
            for i in 0..MR {
                let x = _mm512_set1_ps(*a0.add(i));
                acc[i][0] = _mm512_fmadd_ps(x, w0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(x, w1, acc[i][1]);
            }
            for i in 0..MR {
                let x = _mm512_set1_ps(*a1.add(i));
                acc[MR + i][0] = _mm512_fmadd_ps(x, w0, acc[MR + i][0]);
                acc[MR + i][1] = _mm512_fmadd_ps(x, w1, acc[MR + i][1]);
            }
            a0 = a0.add(MR);
            a1 = a1.add(MR);
            b0 = b0.add(NR);
            b1 = b1.add(NR);
        }
    }
}

/// `C += A · B` on a `2 MR x 2 NR` tile over `kc` steps of `k`.
///
/// `a0`/`a1` are two micro-panels (rows `0..MR` and `MR..2 MR`), `b0`/`b1`
/// two panels (columns `0..NR` and `NR..2 NR`), each at the block's first
/// `k`. On the last block the bias is added and the activation applied.
///
/// # Safety
/// `a0`, `a1` must hold `kc * MR` floats, `b0`, `b1` `kc * NR`; `c` must be
/// a `2 MR x 2 NR` tile with row stride `ldc`; `bias` `2 NR` floats. The CPU
/// must have AVX-512F, AVX2 and FMA.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_wide(
    kc: usize,
    a: [*const f32; 2],
    b: [*const f32; 2],
    c: *mut f32,
    ldc: usize,
    first: bool,
    epi: Option<(*const f32, Activation)>,
) {
    const ROWS: usize = 2 * MR;
    // SAFETY: the caller guarantees the extents and the instruction set.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        if !first {
            for (i, row) in acc.iter_mut().enumerate() {
                row[0] = _mm512_loadu_ps(c.add(i * ldc));
                row[1] = _mm512_loadu_ps(c.add(i * ldc + NR));
            }
        }
        accumulate_wide(kc, a, b, &mut acc);
        if let Some((bias, _)) = epi {
            let (bias0, bias1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(NR)));
            for row in acc.iter_mut() {
                row[0] = _mm512_add_ps(row[0], bias0);
                row[1] = _mm512_add_ps(row[1], bias1);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * ldc), row[0]);
            _mm512_storeu_ps(c.add(i * ldc + NR), row[1]);
        }
        if let Some((_, act)) = epi.filter(|(_, act)| *act != Activation::Identity) {
            // The tile is in L1; the activation runs on it with the 8-lane
            // code, so each element gets the bits the AVX2 path gives it.
            for i in 0..ROWS {
                let row = c.add(i * ldc);
                let mut v = [
                    Avx2::load(row),
                    Avx2::load(row.add(8)),
                    Avx2::load(row.add(16)),
                    Avx2::load(row.add(24)),
                ];
                act_regs(act, &mut v);
                for (j, x) in v.iter().enumerate() {
                    x.store(row.add(8 * j));
                }
            }
        }
    }
}

/// [`super::kernel::task`] with the wide tile, compiled for AVX-512.
///
/// # Safety
/// As [`super::kernel::task`], and the CPU must have AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn task_avx512(
    p: &Problem<'_>,
    rows: Range<usize>,
    panels: Range<usize>,
    scratch: &mut Vec<f32>,
) {
    let (k, n) = (p.k, p.n);
    let mblocks = pack_rows::<Avx2>(p, rows.clone(), scratch);
    // Micro-panel pairs whose 2 MR rows all lie inside the matrix.
    let full_pairs = rows.len() / (2 * MR);
    let mut kb = 0;
    while kb < k {
        let kc = KC2.min(k - kb);
        let (first, last) = (kb == 0, kb + kc == k);
        let mut panel = panels.start;
        while panel < panels.end {
            let col0 = panel * NR;
            let wide = panel + 1 < panels.end && col0 + 2 * NR <= n;
            let step = if wide { 2 } else { 1 };
            // SAFETY: `panel` (and `panel + 1` when wide) are panels of `b`,
            // whose bias is padded to whole panels; `kb + kc <= k`.
            let (b0, epi) = unsafe {
                (
                    p.b.as_ptr().add((panel * k + kb) * NR),
                    last.then(|| (p.bias.as_ptr().add(col0), p.act)),
                )
            };
            let a_at = |mb: usize| {
                // SAFETY: `scratch` holds `mblocks` micro-panels of `k x MR`.
                unsafe { scratch.as_ptr().add((mb * k + kb) * MR) }
            };
            let mut mb = 0;
            if wide {
                // SAFETY: as above for the second panel.
                let b1 = unsafe { b0.add(k * NR) };
                while mb / 2 < full_pairs {
                    let r0 = rows.start + mb * MR;
                    // SAFETY: the 2 MR x 2 NR tile lies inside `y` and is
                    // ours alone; the CPU has AVX-512F (caller).
                    unsafe {
                        micro_wide(
                            kc,
                            [a_at(mb), a_at(mb + 1)],
                            [b0, b1],
                            p.y.add(r0 * n + col0),
                            n,
                            first,
                            epi,
                        );
                    }
                    mb += 2;
                }
            }
            for mb in mb..mblocks {
                let r0 = rows.start + mb * MR;
                let nrows = MR.min(rows.end - r0);
                for j in 0..step {
                    let c0 = col0 + j * NR;
                    // SAFETY: as above; `tile` handles cut tiles.
                    unsafe {
                        tile::<Avx2>(
                            p,
                            kc,
                            a_at(mb),
                            b0.add(j * k * NR),
                            (r0, nrows),
                            (c0, NR.min(n - c0)),
                            first,
                            epi.map(|(bias, act)| (bias.add(j * NR), act)),
                        );
                    }
                }
            }
            panel += step;
        }
        kb += kc;
    }
}
