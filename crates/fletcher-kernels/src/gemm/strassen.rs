//! One level of Strassen's algorithm over the packed micro-kernels.
//!
//! A chunk is `2 H` consecutive rows of one segment (a sequence): its top
//! and bottom halves, the two halves of `k` and the two halves of the
//! output columns cut `C = A · B` into 2 x 2 blocks, and the seven products
//!
//! ```text
//! M1 = (A11 + A22)(B11 + B22)    C11 = M1 + M4 - M5 + M7
//! M2 = (A21 + A22) B11           C12 = M3 + M5
//! M3 = A11 (B12 - B22)           C21 = M2 + M4
//! M4 = A22 (B21 - B11)           C22 = M1 - M2 + M3 + M6
//! M5 = (A11 + A12) B22
//! M6 = (A21 - A11)(B11 + B12)
//! M7 = (A12 - A22)(B21 + B22)
//! ```
//!
//! replace the eight block products of the plain loop nest: 7/8 of its
//! multiply-adds. The weight's seven combinations are packed once at load
//! (7/4 of the weight's memory); each chunk sums its input blocks into a
//! scratch buffer and packs them as usual. For one strip of output columns
//! at a time, the micro-kernel stores, adds or subtracts each product's
//! tile into one or two of the four blocks, kept in a contiguous buffer in
//! L1, and the finished strip gets the bias and activation on its way out.
//!
//! Every element of every product is one chain of fused multiply-adds in
//! `k` order and the blocks are combined in a fixed order, so a chunk's
//! result does not depend on the code path's tile width, the threads, or
//! the rows around the chunk. It does depend on all the chunk's rows: it
//! differs from the plain path's by rounding (the scale of the error is
//! that of the row and of its partner in the other half), and a non-finite
//! value in one row spreads to its partner.

use super::pack::{pack_a, pack_b, AlignedBuf};
use super::{MR, NR};
use crate::activation::act_regs;
use crate::simd::Lanes8;
use crate::Activation;
use std::ops::Range;

/// Rows in each half of a chunk: a whole number of 12-row AVX-512 tiles
/// and of 6-row 8-lane tiles.
pub(crate) const H: usize = 24;
/// Output columns in the unit that chunks are cut into for parallel work:
/// a whole number of tiles of either width.
pub(crate) const UNIT: usize = 2 * NR;

/// A quarter of a 2 x 2 blocking: (row half, column half).
type Quarter = (usize, usize);

/// How a tile goes into an output block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Store,
    Add,
    Sub,
}

/// One of the seven products: the input blocks it sums (the second with a
/// sign), and the output blocks it goes into.
struct Product {
    a: (Quarter, Option<(Quarter, f32)>),
    out: &'static [(Quarter, Op)],
}

const PRODUCTS: [Product; 7] = [
    Product {
        a: ((0, 0), Some(((1, 1), 1.0))),
        out: &[((0, 0), Op::Store), ((1, 1), Op::Store)],
    },
    Product {
        a: ((1, 0), Some(((1, 1), 1.0))),
        out: &[((1, 0), Op::Store), ((1, 1), Op::Sub)],
    },
    Product {
        a: ((0, 0), None),
        out: &[((0, 1), Op::Store), ((1, 1), Op::Add)],
    },
    Product {
        a: ((1, 1), None),
        out: &[((0, 0), Op::Add), ((1, 0), Op::Add)],
    },
    Product {
        a: ((0, 0), Some(((0, 1), 1.0))),
        out: &[((0, 0), Op::Sub), ((0, 1), Op::Add)],
    },
    Product {
        a: ((1, 0), Some(((0, 0), -1.0))),
        out: &[((1, 1), Op::Add)],
    },
    Product {
        a: ((0, 1), Some(((1, 1), -1.0))),
        out: &[((0, 0), Op::Add)],
    },
];

/// The weight blocks (`B = Wᵀ`, quarters as (k half, column half)) each
/// product multiplies by, in [`PRODUCTS`]' order.
const B_COMBOS: [(Quarter, Option<(Quarter, f32)>); 7] = [
    ((0, 0), Some(((1, 1), 1.0))),
    ((0, 0), None),
    ((0, 1), Some(((1, 1), -1.0))),
    ((1, 0), Some(((0, 0), -1.0))),
    ((1, 1), None),
    ((0, 0), Some(((0, 1), 1.0))),
    ((1, 0), Some(((1, 1), 1.0))),
];

/// The seven weight combinations, each packed as `n / 2` columns of
/// `k / 2` rows.
#[derive(Debug, Clone)]
pub(crate) struct Combos {
    packed: Vec<AlignedBuf>,
}

impl Combos {
    /// Whether a `k x n` weight can take this path: both halvings exact and
    /// each output half a whole number of 32-column tiles.
    pub(crate) fn fits(k: usize, n: usize) -> bool {
        k >= 2 && k.is_multiple_of(2) && n.is_multiple_of(4 * NR)
    }

    /// Builds the combinations from a row-major `[n, k]` weight.
    pub(crate) fn new(weight: &[f32], n: usize, k: usize) -> Self {
        assert!(Self::fits(k, n));
        let (nh, kh) = (n / 2, k / 2);
        // Block (k half i, column half j) of B is block (j, i) of W.
        let at = |(i, j): Quarter, r: usize, c: usize| weight[(j * nh + r) * k + i * kh + c];
        let packed = B_COMBOS
            .iter()
            .map(|&(first, second)| {
                let mut w = vec![0f32; nh * kh];
                for r in 0..nh {
                    for c in 0..kh {
                        let mut v = at(first, r, c);
                        if let Some((q, sign)) = second {
                            v += sign * at(q, r, c);
                        }
                        w[r * kh + c] = v;
                    }
                }
                pack_b(&w, nh, kh)
            })
            .collect();
        Self { packed }
    }

    pub(crate) fn size_bytes(&self) -> usize {
        self.packed.iter().map(|b| b.as_slice().len() * 4).sum()
    }
}

/// What one Strassen product call computes, shared by its chunks.
#[derive(Clone, Copy)]
pub(crate) struct Problem<'a> {
    pub x: &'a [f32],
    pub k: usize,
    pub n: usize,
    pub combos: &'a Combos,
    /// `n` values.
    pub bias: &'a [f32],
    pub act: Activation,
    /// The `[rows, n]` output; chunks write disjoint rows of it.
    pub y: *mut f32,
}

// SAFETY: `y` is only written through disjoint chunks of rows, one task
// each, and the buffer outlives the tasks.
unsafe impl Sync for Problem<'_> {}
// SAFETY: as above.
unsafe impl Send for Problem<'_> {}

/// An output block a tile goes into.
#[derive(Clone, Copy)]
struct Dest {
    c: *mut f32,
    op: Op,
}

/// A register tile that runs a whole product over `kc` steps and then
/// updates one or two output blocks.
trait Tile {
    const ROWS: usize;
    const COLS: usize;

    /// `dest op= A · B` for each of `dests`, `a` being `ROWS / MR`
    /// consecutive micro-panels of `kc x MR` and `b` `COLS / NR`
    /// consecutive panels of `kc x NR`.
    ///
    /// # Safety
    /// The extents above; each destination a `ROWS x COLS` tile with row
    /// stride `COLS`.
    unsafe fn run(kc: usize, a: *const f32, b: *const f32, dests: &[Dest]);
}

/// The 8-lane `MR x NR` tile.
struct Narrow<V>(std::marker::PhantomData<V>);

impl<V: Lanes8> Tile for Narrow<V> {
    const ROWS: usize = MR;
    const COLS: usize = NR;

    #[inline(always)]
    unsafe fn run(kc: usize, a: *const f32, b: *const f32, dests: &[Dest]) {
        let mut acc = [V::splat(0.0); 2 * MR];
        // SAFETY: the caller guarantees the extents.
        unsafe {
            super::kernel::accumulate::<V>(kc, a, b, &mut acc);
            for d in dests {
                for i in 0..MR {
                    for h in 0..2 {
                        let at = d.c.add(i * NR + 8 * h);
                        let t = acc[2 * i + h];
                        let v = match d.op {
                            Op::Store => t,
                            Op::Add => V::load(at).add(t),
                            Op::Sub => V::load(at).sub(t),
                        };
                        v.store(at);
                    }
                }
            }
        }
    }
}

/// The AVX-512 `2 MR x 2 NR` tile.
#[cfg(target_arch = "x86_64")]
struct Wide;

#[cfg(target_arch = "x86_64")]
impl Tile for Wide {
    const ROWS: usize = 2 * MR;
    const COLS: usize = 2 * NR;

    #[inline(always)]
    unsafe fn run(kc: usize, a: *const f32, b: *const f32, dests: &[Dest]) {
        use std::arch::x86_64::*;
        const ROWS: usize = 2 * MR;
        // SAFETY: the caller guarantees the extents and AVX-512F.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
            super::avx512::accumulate_wide(kc, [a, a.add(kc * MR)], [b, b.add(kc * NR)], &mut acc);
            for d in dests {
                for (i, row) in acc.iter().enumerate() {
                    for (h, &t) in row.iter().enumerate() {
                        let at = d.c.add(i * 2 * NR + h * NR);
                        let v = match d.op {
                            Op::Store => t,
                            Op::Add => _mm512_add_ps(_mm512_loadu_ps(at), t),
                            Op::Sub => _mm512_sub_ps(_mm512_loadu_ps(at), t),
                        };
                        _mm512_storeu_ps(at, v);
                    }
                }
            }
        }
    }
}

/// Scratch of one thread: a summed input block, the seven packed ones, and
/// the four output blocks of one strip of columns.
#[derive(Default)]
pub(crate) struct Scratch {
    sum: Vec<f32>,
    packed: Vec<f32>,
    strip: Vec<f32>,
}

/// Computes rows `r0 .. r0 + 2 H` of `p`, in the columns of `units` (of
/// [`UNIT`] columns) of each output half.
///
/// # Safety
/// Those rows must lie in `x` and `y`, no other thread may touch them, and
/// `T` and `V` must be supported by the CPU.
#[inline(always)]
unsafe fn chunk<T: Tile, V: Lanes8>(
    p: &Problem<'_>,
    r0: usize,
    units: Range<usize>,
    s: &mut Scratch,
) {
    let (k, n) = (p.k, p.n);
    let (kh, nh) = (k / 2, n / 2);
    s.sum.resize(H * kh, 0.0);
    s.packed.resize(PRODUCTS.len() * H * kh, 0.0);
    let block = |(i, j): Quarter, r: usize| &p.x[(r0 + i * H + r) * k + j * kh..][..kh];
    for (product, packed) in PRODUCTS.iter().zip(s.packed.chunks_exact_mut(H * kh)) {
        let (first, second) = product.a;
        for (r, dst) in s.sum.chunks_exact_mut(kh).enumerate() {
            let src = block(first, r);
            match second {
                None => dst.copy_from_slice(src),
                Some((q, sign)) => {
                    let other = block(q, r);
                    if sign > 0.0 {
                        for ((d, &x), &o) in dst.iter_mut().zip(src).zip(other) {
                            *d = x + o;
                        }
                    } else {
                        for ((d, &x), &o) in dst.iter_mut().zip(src).zip(other) {
                            *d = x - o;
                        }
                    }
                }
            }
        }
        pack_a::<V>(&s.sum, kh, 0..H, packed);
    }
    // One strip of output columns at a time: its four blocks are built in a
    // contiguous buffer that stays in L1 across the seven products (rows of
    // `y` a few KiB apart would crowd a handful of L1 sets), then get the
    // bias and activation on their way to `y`.
    let strip = H * T::COLS;
    s.strip.resize(4 * strip, 0.0);
    let quarter = |(i, j): Quarter| 2 * i + j;
    let per_unit = UNIT / T::COLS;
    for tc in units.start * per_unit..units.end * per_unit {
        for (m, (product, b)) in PRODUCTS.iter().zip(&p.combos.packed).enumerate() {
            // SAFETY: panel `tc * COLS / NR` and the next ones lie in `b`.
            let bp = unsafe { b.as_slice().as_ptr().add(tc * (T::COLS / NR) * kh * NR) };
            for tr in 0..H / T::ROWS {
                let mut dests = [Dest {
                    c: std::ptr::null_mut(),
                    op: Op::Store,
                }; 2];
                for (d, &(q, op)) in dests.iter_mut().zip(product.out) {
                    // SAFETY: the tile lies inside block `q` of the strip.
                    let c = unsafe {
                        s.strip
                            .as_mut_ptr()
                            .add(quarter(q) * strip + tr * T::ROWS * T::COLS)
                    };
                    *d = Dest { c, op };
                }
                // SAFETY: `packed` holds, per product, `H / MR` micro-panels
                // of `kh x MR`; the tile's rows lie in the strip.
                unsafe {
                    let ap = s.packed.as_ptr().add((m * H + tr * T::ROWS) * kh);
                    T::run(kh, ap, bp, &dests[..product.out.len()]);
                }
            }
        }
        for (q, block) in s.strip.chunks_exact(strip).enumerate() {
            let (i, j) = (q / 2, q % 2);
            let col = j * nh + tc * T::COLS;
            for (r, src) in block.chunks_exact(T::COLS).enumerate() {
                // SAFETY: row `r0 + i H + r` is one of the chunk's, ours
                // alone (caller), and `col + COLS <= n`, the length of
                // `bias`.
                unsafe {
                    let dst = p.y.add((r0 + i * H + r) * n + col);
                    finish::<V>(src, p.bias.as_ptr().add(col), p.act, dst);
                }
            }
        }
    }
}

/// Writes `act(src + bias)` to `dst`, [`NR`] floats at a time.
///
/// # Safety
/// `bias` and `dst` must hold `src.len()` floats, a multiple of `NR`.
#[inline(always)]
unsafe fn finish<V: Lanes8>(src: &[f32], bias: *const f32, act: Activation, dst: *mut f32) {
    for (c, part) in src.chunks_exact(NR).enumerate() {
        // SAFETY: the caller guarantees the extents.
        unsafe {
            let mut v: [V; 2] = std::array::from_fn(|h| {
                let at = NR * c + 8 * h;
                V::load(part.as_ptr().add(8 * h)).add(V::load(bias.add(at)))
            });
            act_regs(act, &mut v);
            for (h, x) in v.iter().enumerate() {
                x.store(dst.add(NR * c + 8 * h));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// [`chunk`] with the AVX-512 tile.
///
/// # Safety
/// As [`chunk`], and the CPU must have AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn chunk_avx512(
    p: &Problem<'_>,
    r0: usize,
    units: Range<usize>,
    s: &mut Scratch,
) {
    // SAFETY: forwarded from the caller.
    unsafe { chunk::<Wide, crate::simd::Avx2>(p, r0, units, s) }
}

#[cfg(target_arch = "x86_64")]
/// [`chunk`] with the 8-lane tile, compiled for AVX2 and FMA.
///
/// # Safety
/// As [`chunk`], and the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn chunk_avx2(p: &Problem<'_>, r0: usize, units: Range<usize>, s: &mut Scratch) {
    // SAFETY: forwarded from the caller.
    unsafe { chunk::<Narrow<crate::simd::Avx2>, crate::simd::Avx2>(p, r0, units, s) }
}

/// [`chunk`] in portable code.
///
/// # Safety
/// As [`chunk`].
pub(crate) unsafe fn chunk_portable(
    p: &Problem<'_>,
    r0: usize,
    units: Range<usize>,
    s: &mut Scratch,
) {
    // SAFETY: forwarded from the caller.
    unsafe { chunk::<Narrow<crate::simd::Portable>, crate::simd::Portable>(p, r0, units, s) }
}
