//! Multi-head self-attention over ragged batches.
//!
//! Work is split on the current rayon pool over sequences (all heads of one
//! sequence a job) when there are enough of them to keep every thread busy,
//! and over `(sequence, head)` pairs when there are few. An all-heads job
//! first streams its sequence's rows into L2: the projections of a large
//! batch do not fit in cache, and one head's 128-byte slices of 4.5 KiB rows
//! are a pattern the memory system serves several times slower than a
//! front-to-back read. For one head the keys are gathered transposed
//! (`d x L`) and the values row-major (`L x d`) into thread-local scratch
//! padded to whole vectors, with the next rows prefetched; scores are
//! computed for up to 6 queries by 2 vectors of keys at a time with
//! broadcast multiply-adds (a register tile like the GEMM micro-kernel's: 12
//! accumulators, which fit the 16 AVX2 registers), the softmax subtracts the
//! row maximum, and the context is `P · V`, 6 queries by 2 vectors of
//! columns at a time, scaled by `1 / sum` at the end. With AVX-512 the
//! vectors have 16 lanes (a 32-wide head is one tile across), otherwise 8.
//! Each output element is a multiply-add chain in key order, so the two
//! paths agree to rounding but not bit for bit (their padding and the order
//! of the softmax sums differ). Everything a head computes depends
//! on its own sequence only (its length sets the padding), so results are
//! bitwise independent of the rest of the batch and of how jobs are cut.

use crate::cpu::{self, Isa};
use crate::simd::{self, SimdF32, MAX_LANES};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

/// Queries handled together (rows of the register tile).
const QB: usize = 6;

/// Self-attention for a batch of sequences laid end to end, with no padding.
///
/// `qkv` is `[tokens, 3 * hidden]`: each row holds the query, key and value
/// projections of one token, in that order, and inside each part head `h`
/// occupies `h * head_dim .. (h + 1) * head_dim`. `cu_seqlens` has one more
/// entry than there are sequences: 0 first, `tokens` last. The context,
/// `[tokens, hidden]` with heads concatenated, is written to `out`.
pub fn ragged_attention(
    qkv: &[f32],
    cu_seqlens: &[usize],
    num_heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    run(cpu::isa(), qkv, cu_seqlens, num_heads, head_dim, out);
}

/// Gathered keys and values of one `(sequence, head)` pair, and the
/// probabilities of one block of queries.
#[derive(Default)]
struct Scratch {
    kt: Vec<f32>,
    v: Vec<f32>,
    p: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The geometry shared by all pairs.
#[derive(Clone, Copy)]
struct Shape {
    hidden: usize,
    d: usize,
    scale: f32,
}

/// The output pointer, shared by pairs that write disjoint cells.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each (sequence, head) pair writes only its own rows and columns.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

impl Out {
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// [`ragged_attention`] on an explicit code path.
pub(crate) fn run(isa: Isa, qkv: &[f32], cu: &[usize], heads: usize, d: usize, out: &mut [f32]) {
    let hidden = heads * d;
    let tokens = cu.last().copied().unwrap_or(0);
    assert!(!cu.is_empty() && cu[0] == 0, "cu_seqlens must start with 0");
    assert!(
        cu.windows(2).all(|w| w[0] <= w[1]),
        "cu_seqlens must not decrease"
    );
    assert_eq!(qkv.len(), tokens * 3 * hidden);
    assert_eq!(out.len(), tokens * hidden);
    if tokens == 0 || hidden == 0 {
        return;
    }
    let shape = Shape {
        hidden,
        d,
        scale: 1.0 / (d as f32).sqrt(),
    };
    let seqs = cu.len() - 1;
    let threads = rayon::current_num_threads();
    // With enough sequences to keep every thread busy, a job takes all the
    // heads of one sequence and reads its rows once, front to back; with
    // few, a job is one (sequence, head) pair.
    let group = if seqs >= 4 * threads { heads } else { 1 };
    let jobs = seqs * (heads / group);
    let o = Out(out.as_mut_ptr());
    let job = |jb: usize| {
        let (s, g) = (jb / (heads / group), jb % (heads / group));
        let (start, len) = (cu[s], cu[s + 1] - cu[s]);
        if len == 0 {
            return;
        }
        let hs = g * group..(g + 1) * group;
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            // SAFETY: rows `start..start+len` lie in `qkv` and `out` (checked
            // above); this job alone writes the columns of heads `hs`.
            unsafe { heads_with(isa, qkv, start, len, hs, shape, o.ptr(), &mut sc) }
        });
    };
    let work: usize = cu
        .windows(2)
        .map(|w| (w[1] - w[0]) * (w[1] - w[0]))
        .sum::<usize>()
        * hidden;
    if threads == 1 || work < 1 << 16 {
        (0..jobs).for_each(job);
    } else {
        (0..jobs).into_par_iter().for_each(job);
    }
}

/// # Safety
/// As [`heads`]; `isa` must be supported by the CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn heads_with(
    isa: Isa,
    qkv: &[f32],
    start: usize,
    len: usize,
    hs: Range<usize>,
    shape: Shape,
    out: *mut f32,
    sc: &mut Scratch,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        Isa::Avx2Fma => unsafe { heads_avx2(qkv, start, len, hs, shape, out, sc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        Isa::Avx512 => unsafe { heads_avx512(qkv, start, len, hs, shape, out, sc) },
        // SAFETY: forwarded from the caller.
        _ => unsafe { heads::<simd::Portable>(qkv, start, len, hs, shape, out, sc) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn heads_avx2(
    qkv: &[f32],
    start: usize,
    len: usize,
    hs: Range<usize>,
    shape: Shape,
    out: *mut f32,
    sc: &mut Scratch,
) {
    // SAFETY: forwarded from the caller.
    unsafe { heads::<simd::Avx2>(qkv, start, len, hs, shape, out, sc) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn heads_avx512(
    qkv: &[f32],
    start: usize,
    len: usize,
    hs: Range<usize>,
    shape: Shape,
    out: *mut f32,
    sc: &mut Scratch,
) {
    // SAFETY: forwarded from the caller.
    unsafe { heads::<simd::Avx512>(qkv, start, len, hs, shape, out, sc) }
}

/// Rows ahead of the one being gathered whose query, key and value of the
/// head are fetched.
const PREFETCH_ROWS: usize = 4;

/// Asks the CPU to bring every cache line of `xs` towards the core: into L1
/// with `L1`, else into L2.
#[inline(always)]
fn prefetch<const L1: bool>(xs: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in xs.chunks(16) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        // SAFETY: a prefetch has no architectural effect and `line` is a
        // valid address.
        unsafe {
            if L1 {
                _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
            } else {
                _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = xs;
}

/// Gathers head `h` of the sequence of rows `start..start+len`: the keys
/// transposed (`d x lp`) into `sc.kt` and the values (`len x dp`) into
/// `sc.v`, zero padded (`lp` and `dp` are `len` and `d` rounded up to whole
/// vectors).
#[allow(clippy::too_many_arguments)]
fn gather(
    qkv: &[f32],
    start: usize,
    len: usize,
    h: usize,
    shape: Shape,
    (lp, dp): (usize, usize),
    sc: &mut Scratch,
) {
    let Shape { hidden, d, .. } = shape;
    let stride = 3 * hidden;
    sc.kt.clear();
    sc.kt.resize(d * lp, 0.0);
    sc.v.clear();
    sc.v.resize(len * dp, 0.0);
    for j in 0..len {
        if j + PREFETCH_ROWS < len {
            let ahead = &qkv[(start + j + PREFETCH_ROWS) * stride..][..stride];
            for part in 0..3 {
                prefetch::<true>(&ahead[part * hidden + h * d..][..d]);
            }
        }
        let row = &qkv[(start + j) * stride..][..stride];
        for (c, &k) in row[hidden + h * d..][..d].iter().enumerate() {
            sc.kt[c * lp + j] = k;
        }
        let v = &row[2 * hidden + h * d..][..d];
        for (dst, &x) in sc.v[j * dp..][..d].iter_mut().zip(v) {
            *dst = x;
        }
    }
}

/// Attention of heads `hs` of the sequence of rows `start..start+len`, one
/// head after the other.
///
/// With more than one head, the sequence's rows are first fetched into L2
/// front to back (a stream the memory system serves far faster than the
/// strided reads of one head's columns).
///
/// # Safety
/// Those rows must lie in `qkv` (`[_, 3 * hidden]`) and in `out`
/// (`[_, hidden]`), and no other thread may write their columns of heads
/// `hs`.
#[inline(always)]
unsafe fn heads<V: SimdF32>(
    qkv: &[f32],
    start: usize,
    len: usize,
    hs: Range<usize>,
    shape: Shape,
    out: *mut f32,
    sc: &mut Scratch,
) {
    let Shape { hidden, d, scale } = shape;
    let stride = 3 * hidden;
    let (lp, dp) = (len.next_multiple_of(V::LANES), d.next_multiple_of(V::LANES));
    if hs.len() > 1 {
        prefetch::<false>(&qkv[start * stride..(start + len) * stride]);
    }
    sc.p.clear();
    sc.p.resize(QB * lp, 0.0);
    for h in hs {
        gather(qkv, start, len, h, shape, (lp, dp), sc);
        let q_at = |i: usize| qkv[(start + i) * stride + h * d..].as_ptr();
        let (kt, v, p) = (sc.kt.as_ptr(), sc.v.as_ptr(), sc.p.as_mut_ptr());
        let mut i = 0;
        while i < len {
            let qb = QB.min(len - i);
            // SAFETY: `kt`, `v` and `p` have the extents set above, the
            // queries lie in `qkv`, and the caller owns the output cells.
            unsafe {
                let o = out.add((start + i) * hidden + h * d);
                let t = Tile {
                    kt,
                    v,
                    p,
                    len,
                    lp,
                    d,
                    dp,
                };
                macro_rules! go {
                    ($b:literal) => {{
                        let inv = block::<V, $b>(&q_at, i, t, scale);
                        context::<V, $b>(t, inv, hidden, o);
                    }};
                }
                match qb {
                    6 => go!(6),
                    5 => go!(5),
                    4 => go!(4),
                    3 => go!(3),
                    2 => go!(2),
                    _ => go!(1),
                }
            }
            i += qb;
        }
    }
}

/// The gathered keys and values of one head and the probability rows of one
/// block of queries, with their extents.
#[derive(Clone, Copy)]
struct Tile {
    /// `d x lp`, keys transposed.
    kt: *const f32,
    /// `len x dp`.
    v: *const f32,
    /// `QB x lp`.
    p: *mut f32,
    len: usize,
    lp: usize,
    d: usize,
    dp: usize,
}

/// Scores and softmax of queries `i..i+B`, leaving unnormalized
/// probabilities in `sc.p` (row `b` at `b * lp`); returns each row's
/// `1 / sum`.
///
/// # Safety
/// `q_at(i + b)` must point at `d` readable floats; `t` as in [`heads`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<V: SimdF32, const B: usize>(
    q_at: &impl Fn(usize) -> *const f32,
    i: usize,
    t: Tile,
    scale: f32,
) -> [f32; B] {
    let Tile {
        kt, p, len, lp, d, ..
    } = t;
    let mut inv = [0.0f32; B];
    let q: [*const f32; B] = std::array::from_fn(|b| q_at(i + b));
    let vscale = V::splat(scale);
    let l = V::LANES;
    // SAFETY: `kt` is `d x lp`, `p` is `QB x lp`, `q[b]` has `d` floats.
    unsafe {
        let mut j = 0;
        // 2 vectors of keys at a time, then 1.
        while j + 2 * l <= lp {
            let mut acc = [[V::splat(0.0); 2]; B];
            for c in 0..d {
                let kr = kt.add(c * lp + j);
                let k = [V::load(kr), V::load(kr.add(l))];
                for b in 0..B {
                    let qv = V::broadcast(q[b].add(c));
                    for u in 0..2 {
                        acc[b][u] = qv.mul_add(k[u], acc[b][u]);
                    }
                }
            }
            for b in 0..B {
                for u in 0..2 {
                    acc[b][u].mul(vscale).store(p.add(b * lp + j + l * u));
                }
            }
            j += 2 * l;
        }
        while j < lp {
            let mut acc = [V::splat(0.0); B];
            for c in 0..d {
                let k = V::load(kt.add(c * lp + j));
                for b in 0..B {
                    acc[b] = V::broadcast(q[b].add(c)).mul_add(k, acc[b]);
                }
            }
            for b in 0..B {
                acc[b].mul(vscale).store(p.add(b * lp + j));
            }
            j += l;
        }
        // Softmax numerators per query row; padded keys get probability 0.
        for b in 0..B {
            let row = p.add(b * lp);
            for jj in len..lp {
                *row.add(jj) = f32::NEG_INFINITY;
            }
            let mut mx = V::splat(f32::NEG_INFINITY);
            for jj in (0..lp).step_by(l) {
                mx = mx.max(V::load(row.add(jj)));
            }
            let m = V::splat(mx.hmax());
            let mut s = V::splat(0.0);
            for jj in (0..lp).step_by(l) {
                let e = simd::exp(V::load(row.add(jj)).sub(m));
                e.store(row.add(jj));
                s = s.add(e);
            }
            inv[b] = 1.0 / s.hsum();
        }
    }
    inv
}

/// `out[b] = inv[b] * sum_j p[b][j] * v[j]` for the `B` queries of a block;
/// output row `b` starts at `o + b * hidden`.
///
/// # Safety
/// `t` as in [`heads`]; `o` must point at `B` writable rows of `d`
/// floats with stride `hidden`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn context<V: SimdF32, const B: usize>(t: Tile, inv: [f32; B], hidden: usize, o: *mut f32) {
    let Tile {
        kt: _,
        v,
        p,
        len,
        lp,
        d,
        dp,
    } = t;
    let l = V::LANES;
    let store = |acc: V, b: usize, c0: usize| {
        let r = acc.mul(V::splat(inv[b]));
        // SAFETY: `c0 < d`; a full vector is stored only when it fits in the
        // row, otherwise through a buffer.
        unsafe {
            if c0 + l <= d {
                r.store(o.add(b * hidden + c0));
            } else {
                let mut buf = [0.0f32; MAX_LANES];
                r.store(buf.as_mut_ptr());
                std::ptr::copy_nonoverlapping(buf.as_ptr(), o.add(b * hidden + c0), d - c0);
            }
        }
    };
    // SAFETY: `p` is `QB x lp`, `v` is `len x dp`, `c0 + l * u <= dp`.
    unsafe {
        let mut c0 = 0;
        while c0 + 2 * l <= dp {
            let mut acc = [[V::splat(0.0); 2]; B];
            for j in 0..len {
                let vr = v.add(j * dp + c0);
                let vv = [V::load(vr), V::load(vr.add(l))];
                for b in 0..B {
                    let pb = V::broadcast(p.add(b * lp + j));
                    for u in 0..2 {
                        acc[b][u] = pb.mul_add(vv[u], acc[b][u]);
                    }
                }
            }
            for b in 0..B {
                for u in 0..2 {
                    store(acc[b][u], b, c0 + l * u);
                }
            }
            c0 += 2 * l;
        }
        while c0 < dp {
            let mut acc = [V::splat(0.0); B];
            for j in 0..len {
                let vv = V::load(v.add(j * dp + c0));
                for b in 0..B {
                    acc[b] = V::broadcast(p.add(b * lp + j)).mul_add(vv, acc[b]);
                }
            }
            for b in 0..B {
                store(acc[b], b, c0);
            }
            c0 += l;
        }
    }
}
