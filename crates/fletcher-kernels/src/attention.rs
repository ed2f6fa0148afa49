//! Multi-head self-attention over ragged batches.
//!
//! Work is split over `(sequence, head)` pairs on the current rayon pool.
//! For one pair the keys are gathered transposed (`d x L`) and the values
//! row-major (`L x d`) into thread-local scratch padded to whole vectors;
//! scores are computed for up to 6 queries by 16 keys at a time with
//! broadcast multiply-adds (a 6 x 16 register tile, like the GEMM
//! micro-kernel, so the 12 accumulators stay in the 16 vector registers),
//! the softmax subtracts the row maximum, and the context is `P · V`, 6
//! queries by 16 columns at a time, scaled by `1 / sum` at the end. Everything a pair
//! computes depends on its own sequence only (its length sets the padding),
//! so results are bitwise independent of the rest of the batch.

use crate::cpu::{self, Isa};
use crate::simd::{self, F32x8};
use rayon::prelude::*;
use std::cell::RefCell;

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
    let pairs = seqs * heads;
    let o = Out(out.as_mut_ptr());
    let job = |pair: usize| {
        let (s, h) = (pair / heads, pair % heads);
        let (start, len) = (cu[s], cu[s + 1] - cu[s]);
        if len == 0 {
            return;
        }
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            // SAFETY: rows `start..start+len` lie in `qkv` and `out` (checked
            // above); this pair alone writes columns `h*d..(h+1)*d` of them.
            unsafe { pair_with(isa, qkv, start, len, h, shape, o.ptr(), &mut sc) }
        });
    };
    let work: usize = cu
        .windows(2)
        .map(|w| (w[1] - w[0]) * (w[1] - w[0]))
        .sum::<usize>()
        * hidden;
    if rayon::current_num_threads() == 1 || work < 1 << 16 {
        (0..pairs).for_each(job);
    } else {
        (0..pairs).into_par_iter().for_each(job);
    }
}

/// # Safety
/// As [`pair`]; `isa` must be supported by the CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn pair_with(
    isa: Isa,
    qkv: &[f32],
    start: usize,
    len: usize,
    h: usize,
    shape: Shape,
    out: *mut f32,
    sc: &mut Scratch,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        Isa::Avx2Fma => unsafe { pair_avx2(qkv, start, len, h, shape, out, sc) },
        // SAFETY: forwarded from the caller.
        _ => unsafe { pair::<simd::Portable>(qkv, start, len, h, shape, out, sc) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_avx2(
    qkv: &[f32],
    start: usize,
    len: usize,
    h: usize,
    shape: Shape,
    out: *mut f32,
    sc: &mut Scratch,
) {
    // SAFETY: forwarded from the caller.
    unsafe { pair::<simd::Avx2>(qkv, start, len, h, shape, out, sc) }
}

/// Attention of head `h` of the sequence of rows `start..start+len`.
///
/// # Safety
/// Those rows must lie in `qkv` (`[_, 3 * hidden]`) and in `out`
/// (`[_, hidden]`), and no other thread may write their head-`h` columns.
#[inline(always)]
unsafe fn pair<V: F32x8>(
    qkv: &[f32],
    start: usize,
    len: usize,
    h: usize,
    shape: Shape,
    out: *mut f32,
    sc: &mut Scratch,
) {
    let Shape { hidden, d, scale } = shape;
    let stride = 3 * hidden;
    let lp = len.next_multiple_of(8);
    let dp = d.next_multiple_of(8);
    // Gather K transposed (d x lp) and V (len x dp), zero padded.
    sc.kt.clear();
    sc.kt.resize(d * lp, 0.0);
    sc.v.clear();
    sc.v.resize(len * dp, 0.0);
    sc.p.clear();
    sc.p.resize(QB * lp, 0.0);
    for j in 0..len {
        let row = &qkv[(start + j) * stride..][..stride];
        let k = &row[hidden + h * d..][..d];
        for (c, &kv) in k.iter().enumerate() {
            sc.kt[c * lp + j] = kv;
        }
        sc.v[j * dp..][..d].copy_from_slice(&row[2 * hidden + h * d..][..d]);
    }
    let q_at = |i: usize| qkv[(start + i) * stride + h * d..].as_ptr();
    let mut i = 0;
    while i < len {
        let qb = QB.min(len - i);
        // SAFETY: the scratch buffers have the extents set above, the
        // queries lie in `qkv`, and the caller owns the output cells.
        unsafe {
            let o = out.add((start + i) * hidden + h * d);
            macro_rules! go {
                ($b:literal) => {{
                    let inv = block::<V, $b>(&q_at, i, len, lp, d, scale, sc);
                    context::<V, $b>(sc, inv, len, lp, d, dp, hidden, o);
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

/// Scores and softmax of queries `i..i+B`, leaving unnormalized
/// probabilities in `sc.p` (row `b` at `b * lp`); returns each row's
/// `1 / sum`.
///
/// # Safety
/// `q_at(i + b)` must point at `d` readable floats; buffers as in [`pair`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<V: F32x8, const B: usize>(
    q_at: &impl Fn(usize) -> *const f32,
    i: usize,
    len: usize,
    lp: usize,
    d: usize,
    scale: f32,
    sc: &mut Scratch,
) -> [f32; B] {
    let mut inv = [0.0f32; B];
    let q: [*const f32; B] = std::array::from_fn(|b| q_at(i + b));
    let kt = sc.kt.as_ptr();
    let p = sc.p.as_mut_ptr();
    let vscale = V::splat(scale);
    // SAFETY: `kt` is `d x lp`, `p` is `QB x lp`, `q[b]` has `d` floats.
    unsafe {
        let mut j = 0;
        // 2 vectors of keys at a time, then 1.
        while j + 16 <= lp {
            let mut acc = [[V::splat(0.0); 2]; B];
            for c in 0..d {
                let kr = kt.add(c * lp + j);
                let k = [V::load(kr), V::load(kr.add(8))];
                for b in 0..B {
                    let qv = V::broadcast(q[b].add(c));
                    for u in 0..2 {
                        acc[b][u] = qv.mul_add(k[u], acc[b][u]);
                    }
                }
            }
            for b in 0..B {
                for u in 0..2 {
                    acc[b][u].mul(vscale).store(p.add(b * lp + j + 8 * u));
                }
            }
            j += 16;
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
            j += 8;
        }
        // Softmax numerators per query row; padded keys get probability 0.
        for b in 0..B {
            let row = p.add(b * lp);
            for jj in len..lp {
                *row.add(jj) = f32::NEG_INFINITY;
            }
            let mut mx = V::splat(f32::NEG_INFINITY);
            for jj in (0..lp).step_by(8) {
                mx = mx.max(V::load(row.add(jj)));
            }
            let m = V::splat(mx.hmax());
            let mut s = V::splat(0.0);
            for jj in (0..lp).step_by(8) {
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
/// Buffers as in [`pair`]; `o` must point at `B` writable rows of `d`
/// floats with stride `hidden`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn context<V: F32x8, const B: usize>(
    sc: &Scratch,
    inv: [f32; B],
    len: usize,
    lp: usize,
    d: usize,
    dp: usize,
    hidden: usize,
    o: *mut f32,
) {
    let (p, v) = (sc.p.as_ptr(), sc.v.as_ptr());
    let store = |acc: V, b: usize, c0: usize| {
        let r = acc.mul(V::splat(inv[b]));
        // SAFETY: `c0 < d`; a full vector is stored only when it fits in the
        // row, otherwise through a buffer.
        unsafe {
            if c0 + 8 <= d {
                r.store(o.add(b * hidden + c0));
            } else {
                let mut buf = [0.0f32; 8];
                r.store(buf.as_mut_ptr());
                std::ptr::copy_nonoverlapping(buf.as_ptr(), o.add(b * hidden + c0), d - c0);
            }
        }
    };
    // SAFETY: `p` is `QB x lp`, `v` is `len x dp`, `c0 + 8 * u <= dp`.
    unsafe {
        let mut c0 = 0;
        while c0 + 16 <= dp {
            let mut acc = [[V::splat(0.0); 2]; B];
            for j in 0..len {
                let vr = v.add(j * dp + c0);
                let vv = [V::load(vr), V::load(vr.add(8))];
                for b in 0..B {
                    let pb = V::broadcast(p.add(b * lp + j));
                    for u in 0..2 {
                        acc[b][u] = pb.mul_add(vv[u], acc[b][u]);
                    }
                }
            }
            for b in 0..B {
                for u in 0..2 {
                    store(acc[b][u], b, c0 + 8 * u);
                }
            }
            c0 += 16;
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
            c0 += 8;
        }
    }
}
