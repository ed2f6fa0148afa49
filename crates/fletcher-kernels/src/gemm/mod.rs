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

#[cfg(target_arch = "x86_64")]
mod avx512;
mod kernel;
mod pack;

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
}

thread_local! {
    /// Packed rows of the input, reused across calls.
    static A_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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
        Self {
            packed,
            bias: padded,
            out_features,
            in_features,
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
    }

    /// `y = act(x · Wᵀ + b)` for `rows` rows; `x` is `[rows, in]`, `y` is
    /// `[rows, out]` and is overwritten. A row's result depends on that row
    /// alone, bit for bit, whatever `rows` is and however many threads the
    /// current rayon pool has.
    pub fn forward(&self, x: &[f32], rows: usize, y: &mut [f32], act: Activation) {
        self.forward_with(cpu::isa(), x, rows, y, act);
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
        let (k, n) = (self.in_features, self.out_features);
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
        let problem = Problem {
            x,
            k,
            n,
            b: self.packed.as_slice(),
            bias: &self.bias,
            act,
            y: y.as_mut_ptr(),
        };
        let panels = n.div_ceil(NR);
        let threads = if rows * k * n < SERIAL_MACS {
            1
        } else {
            rayon::current_num_threads()
        };
        let plan = Plan::new(rows, panels, threads);
        let run = |t: usize| {
            let (r, p) = plan.task(t);
            A_SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                // SAFETY: the plan's tiles are disjoint and inside `y`, whose
                // extent was checked above; the ISA was detected at runtime.
                unsafe { run_task(isa, &problem, r, p, &mut s) }
            });
        };
        if plan.tasks() == 1 || threads == 1 {
            (0..plan.tasks()).for_each(run);
        } else {
            (0..plan.tasks()).into_par_iter().for_each(run);
        }
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
