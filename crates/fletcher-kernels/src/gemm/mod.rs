//! Matrix multiplication for linear layers with weights packed once at load.
//!
//! The loop nest is BLIS-like around an `MR x NR` (6 x 16) register tile:
//! the weight is packed into `NR`-column panels once, each task packs its
//! rows of the input into `MR`-row micro-panels, `K` is walked in blocks of
//! [`KC`] (so a panel block stays in L1 while the micro-panels stream from
//! L2), and bias plus activation are applied to the tile in registers after
//! its last block.
//!
//! Batch invariance: every output element is one chain of fused multiply-adds
//! over `k = 0, 1, ..., K-1` (see [`kernel`]), then `+ bias`, then the
//! activation; edge rows and columns run the same micro-kernel on zero-padded
//! data. Neither the number of rows, nor the split across threads, nor the
//! block sizes change that chain, so a row's result is the same bits however
//! it is batched.
//!
//! [`PackedLinear::forward_segmented`] also takes runs of rows from one
//! segment (one sequence of a ragged batch) through one level of Strassen's
//! algorithm ([`strassen`]): 7/8 of the multiply-adds, results within
//! rounding of the plain ones, and still the same bits for a segment
//! however it is batched, since a run never leaves its segment.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod kernel;
mod pack;
mod strassen;

use crate::cpu::{self, Isa};
use crate::Activation;
use kernel::Problem;
use pack::AlignedBuf;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

/// Rows of the register tile.
pub(crate) const MR: usize = 6;
/// Columns of the register tile (two 8-lane vectors).
pub(crate) const NR: usize = 16;
/// Steps of `k` per block.
pub(crate) const KC: usize = 384;
/// Micro-panels (of `MR` rows) per task when rows are split.
const MC_BLOCKS: usize = 12;
/// Below this many multiply-adds a product runs on the calling thread.
const SERIAL_MACS: usize = 1 << 18;

/// The weight and bias of a linear layer, `y = x · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    /// `out.div_ceil(NR)` panels of `in x NR`, see [`pack`].
    packed: AlignedBuf,
    /// `out` values, zero-padded to whole panels.
    bias: Vec<f32>,
    out_features: usize,
    in_features: usize,
    /// The weight's Strassen combinations (7/4 of its size), when
    /// [`strassen_enabled`] and its shape allows them.
    strassen: Option<strassen::Combos>,
}

thread_local! {
    /// Packed rows of the input, reused across calls.
    static A_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Summed and packed input blocks of the Strassen path.
    static S_SCRATCH: RefCell<strassen::Scratch> = RefCell::new(strassen::Scratch::default());
}

/// Whether [`PackedLinear::forward_segmented`] takes one level of
/// Strassen's algorithm where a segment has the rows for it: on unless the
/// environment sets `FLETCHER_KERNELS_STRASSEN=0`, which makes every row's
/// result independent of the other rows, bit for bit, at 8/7 of the cost.
pub fn strassen_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FLETCHER_KERNELS_STRASSEN").map_or(true, |v| v != "0"))
}

impl PackedLinear {
    /// Packs a row-major `[out_features, in_features]` weight (the layout of
    /// PyTorch's `nn.Linear`) and an optional bias of `out_features`.
    pub fn new(
        weight: &[f32],
        bias: Option<&[f32]>,
        out_features: usize,
        in_features: usize,
    ) -> Self {
        assert_eq!(weight.len(), out_features * in_features);
        let panels = out_features.div_ceil(NR);
        let mut padded = vec![0.0; panels * NR];
        if let Some(b) = bias {
            assert_eq!(b.len(), out_features);
            padded[..out_features].copy_from_slice(b);
        }
        let packed = pack::pack_b(weight, out_features, in_features);
        let strassen = (strassen_enabled() && strassen::Combos::fits(in_features, out_features))
            .then(|| strassen::Combos::new(weight, out_features, in_features));
        Self {
            packed,
            bias: padded,
            out_features,
            in_features,
            strassen,
        }
    }

    /// Columns of the input.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Columns of the output.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Bytes held by the packed weight and bias.
    pub fn size_bytes(&self) -> usize {
        (self.packed.as_slice().len() + self.bias.len()) * 4
            + self
                .strassen
                .as_ref()
                .map_or(0, strassen::Combos::size_bytes)
    }

    /// `y = act(x · Wᵀ + b)` for `rows` rows; `x` is `[rows, in]`, `y` is
    /// `[rows, out]` and is overwritten. A row's result depends on that row
    /// alone, bit for bit, whatever `rows` is and however many threads the
    /// current rayon pool has.
    pub fn forward(&self, x: &[f32], rows: usize, y: &mut [f32], act: Activation) {
        self.forward_with(cpu::isa(), x, rows, y, act);
    }

    /// [`forward`](Self::forward) over rows cut into segments (a ragged
    /// batch's sequences): segment `i` is rows `bounds[i]..bounds[i + 1]`,
    /// `bounds` starting at 0 and ending at the number of rows.
    ///
    /// Unless `FLETCHER_KERNELS_STRASSEN=0` (see [`strassen_enabled`]), each
    /// run of `2 H` rows from a segment's start (96 rows) takes one level of
    /// Strassen's algorithm, for 7/8 of the multiply-adds; the segment's last
    /// rows take the plain loop nest. A row's result then depends on the rows
    /// of its own segment, and differs from [`forward`](Self::forward)'s by
    /// rounding; it is still the same bits whatever the other segments are,
    /// where the segment sits, and however many threads there are.
    pub fn forward_segmented(&self, x: &[f32], bounds: &[usize], y: &mut [f32], act: Activation) {
        self.forward_on(cpu::isa(), strassen_enabled(), x, bounds, y, act);
    }

    /// [`forward`](Self::forward) on an explicit code path.
    pub(crate) fn forward_with(
        &self,
        isa: Isa,
        x: &[f32],
        rows: usize,
        y: &mut [f32],
        act: Activation,
    ) {
        self.forward_on(isa, false, x, &[0, rows], y, act);
    }

    /// [`forward_segmented`](Self::forward_segmented) on an explicit code
    /// path, with or without the Strassen chunks.
    pub(crate) fn forward_on(
        &self,
        isa: Isa,
        strassen: bool,
        x: &[f32],
        bounds: &[usize],
        y: &mut [f32],
        act: Activation,
    ) {
        let (k, n) = (self.in_features, self.out_features);
        let rows = bounds.last().copied().unwrap_or(0);
        assert!(
            bounds.first().is_none_or(|&b| b == 0) && bounds.windows(2).all(|w| w[0] <= w[1]),
            "segment bounds must rise from 0"
        );
        assert_eq!(x.len(), rows * k);
        assert_eq!(y.len(), rows * n);
        if rows == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for row in y.chunks_exact_mut(n) {
                row.copy_from_slice(&self.bias[..n]);
                crate::activation::apply_with(isa, act, row);
            }
            return;
        }
        let threads = if rows * k * n < SERIAL_MACS {
            1
        } else {
            rayon::current_num_threads()
        };
        let combos = self.strassen.as_ref().filter(|_| strassen);
        let span = 2 * strassen::H;
        let mut chunks = Vec::new();
        let mut rest = Vec::new();
        if combos.is_some() {
            for w in bounds.windows(2) {
                let whole = (w[1] - w[0]) / span;
                chunks.extend((0..whole).map(|c| w[0] + c * span));
                if w[0] + whole * span < w[1] {
                    rest.push(w[0] + whole * span..w[1]);
                }
            }
        }
        let Some(combos) = combos.filter(|_| !chunks.is_empty()) else {
            self.plain(isa, x, rows, y.as_mut_ptr(), act, threads, &[]);
            return;
        };
        // The rows no chunk covers are gathered, multiplied as one
        // contiguous block alongside the chunks, and put back.
        let rest_rows: usize = rest.iter().map(ExactSizeIterator::len).sum();
        let mut x_rest = Vec::with_capacity(rest_rows * k);
        for r in &rest {
            x_rest.extend_from_slice(&x[r.start * k..r.end * k]);
        }
        let mut y_rest = vec![0f32; rest_rows * n];
        // With few chunks, each is cut into parts along the output columns
        // so the threads share them evenly.
        let units = n / 2 / strassen::UNIT;
        let parts = (4 * threads).div_ceil(chunks.len()).clamp(1, units);
        let halves = strassen::Problem {
            x,
            k,
            n,
            combos,
            bias: &self.bias,
            act,
            y: y.as_mut_ptr(),
        };
        let chunk_tasks: Vec<(usize, Range<usize>)> = chunks
            .iter()
            .flat_map(|&r0| {
                (0..parts).map(move |j| (r0, j * units / parts..(j + 1) * units / parts))
            })
            .collect();
        let run_chunk_task = |t: usize| {
            let (r0, ref cols) = chunk_tasks[t];
            S_SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                // SAFETY: chunk tasks cover disjoint tiles of the chunks'
                // rows inside `y`, whose extent was checked above; the ISA
                // was detected at runtime.
                unsafe { run_chunk(isa, &halves, r0, cols.clone(), &mut s) }
            });
        };
        self.plain(
            isa,
            &x_rest,
            rest_rows,
            y_rest.as_mut_ptr(),
            act,
            threads,
            &[(chunk_tasks.len(), &run_chunk_task)],
        );
        let mut at = 0;
        for r in rest {
            let len = r.len() * n;
            y[r.start * n..r.end * n].copy_from_slice(&y_rest[at..at + len]);
            at += len;
        }
    }

    /// The plain loop nest over `rows` rows of `x` into `y`, its tasks run
    /// in one parallel loop with `extra`'s (a count of tasks, and what runs
    /// task `i` of them).
    #[allow(clippy::too_many_arguments)]
    fn plain(
        &self,
        isa: Isa,
        x: &[f32],
        rows: usize,
        y: *mut f32,
        act: Activation,
        threads: usize,
        extra: &[(usize, &(dyn Fn(usize) + Sync))],
    ) {
        let problem = Problem {
            x,
            k: self.in_features,
            n: self.out_features,
            b: self.packed.as_slice(),
            bias: &self.bias,
            act,
            y,
        };
        let panels = self.out_features.div_ceil(NR);
        let plan = (rows > 0).then(|| Plan::new(rows, panels, threads));
        let plain = plan.map_or(0, |p| p.tasks());
        let extra_tasks: usize = extra.iter().map(|e| e.0).sum();
        let run = |t: usize| {
            if t >= plain {
                let mut t = t - plain;
                for (count, f) in extra {
                    if t < *count {
                        return f(t);
                    }
                    t -= count;
                }
                return;
            }
            let (r, p) = plan.expect("plain tasks need rows").task(t);
            A_SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                // SAFETY: the plan's tiles are disjoint and inside `y`, which
                // holds `rows` rows (callers); the ISA was detected at
                // runtime.
                unsafe { run_task(isa, &problem, r, p, &mut s) }
            });
        };
        let tasks = plain + extra_tasks;
        if tasks == 1 || threads == 1 {
            (0..tasks).for_each(run);
        } else {
            // One task per job, so threads steal whole tasks from each other
            // to the end instead of each running a fixed half.
            (0..tasks).into_par_iter().with_max_len(1).for_each(run);
        }
    }
}

/// Rows in each half of a Strassen chunk.
#[cfg(test)]
pub(crate) fn strassen_half_rows() -> usize {
    strassen::H
}

/// # Safety
/// As [`strassen::chunk`]; `isa` must be supported by the CPU.
unsafe fn run_chunk(
    isa: Isa,
    p: &strassen::Problem<'_>,
    r0: usize,
    units: Range<usize>,
    s: &mut strassen::Scratch,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        Isa::Avx2Fma => unsafe { strassen::chunk_avx2(p, r0, units, s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        Isa::Avx512 => unsafe { strassen::chunk_avx512(p, r0, units, s) },
        // SAFETY: forwarded from the caller.
        _ => unsafe { strassen::chunk_portable(p, r0, units, s) },
    }
}

/// # Safety
/// As [`kernel::task`]; `isa` must be supported by the CPU.
unsafe fn run_task(
    isa: Isa,
    p: &Problem<'_>,
    rows: Range<usize>,
    panels: Range<usize>,
    s: &mut Vec<f32>,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        Isa::Avx2Fma => unsafe { kernel::task_avx2(p, rows, panels, s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        Isa::Avx512 => unsafe { avx512::task_avx512(p, rows, panels, s) },
        // SAFETY: forwarded from the caller.
        _ => unsafe { kernel::task_portable(p, rows, panels, s) },
    }
}

/// How one product is cut into tasks: a grid of row ranges (whole
/// micro-panels) by panel ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    rows: usize,
    panels: usize,
    m_tasks: usize,
    n_tasks: usize,
}

impl Plan {
    fn new(rows: usize, panels: usize, threads: usize) -> Self {
        let mblocks = rows.div_ceil(MR);
        let m_tasks = mblocks.div_ceil(MC_BLOCKS);
        // Enough tasks for work stealing to even out the threads; when the
        // rows alone do not give that many (short batches), split the
        // output columns too.
        let target = if threads > 1 { 4 * threads } else { 1 };
        let n_tasks = if m_tasks >= target {
            1
        } else {
            target.div_ceil(m_tasks).min(panels)
        };
        Self {
            rows,
            panels,
            m_tasks,
            n_tasks,
        }
    }

    fn tasks(&self) -> usize {
        self.m_tasks * self.n_tasks
    }

    /// Rows and panels of task `t`.
    fn task(&self, t: usize) -> (Range<usize>, Range<usize>) {
        let (mi, ni) = (t / self.n_tasks, t % self.n_tasks);
        let mblocks = self.rows.div_ceil(MR);
        let b0 = mi * mblocks / self.m_tasks;
        let b1 = (mi + 1) * mblocks / self.m_tasks;
        let rows = (b0 * MR).min(self.rows)..(b1 * MR).min(self.rows);
        let p0 = ni * self.panels / self.n_tasks;
        let p1 = (ni + 1) * self.panels / self.n_tasks;
        (rows, p0..p1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_everything_once() {
        for rows in [1, 5, 6, 7, 16, 71, 72, 73, 256, 2048, 8192] {
            for panels in [1, 3, 24, 96] {
                for threads in [1, 2, 3, 8] {
                    let plan = Plan::new(rows, panels, threads);
                    let mut seen = vec![0u8; rows * panels];
                    for t in 0..plan.tasks() {
                        let (r, p) = plan.task(t);
                        assert!(r.start % MR == 0);
                        for i in r {
                            for j in p.clone() {
                                seen[i * panels + j] += 1;
                            }
                        }
                    }
                    assert!(seen.iter().all(|&s| s == 1), "{rows} {panels} {threads}");
                }
            }
        }
    }
}
