//! `pool` against a naive per-mode computation on random ragged batches.

use fletcher_model::{pool, Pooling};
use proptest::prelude::*;

/// One mode of one sequence (`[len, h]`), computed the obvious way.
fn naive(seq: &[Vec<f32>], mode: Pooling, h: usize) -> Vec<f64> {
    let n = seq.len();
    if n == 0 {
        return vec![0.0; h];
    }
    (0..h)
        .map(|i| {
            let col = seq.iter().map(|row| row[i] as f64);
            match mode {
                Pooling::Cls => seq[0][i] as f64,
                Pooling::LastToken => seq[n - 1][i] as f64,
                Pooling::Max => col.fold(f64::NEG_INFINITY, f64::max),
                Pooling::Mean => col.sum::<f64>() / n as f64,
                Pooling::MeanSqrtLen => col.sum::<f64>() / (n as f64).sqrt(),
            }
        })
        .collect()
}

fn mode() -> impl Strategy<Value = Pooling> {
    prop::sample::select(Pooling::ALL.to_vec())
}

proptest! {
    #[test]
    fn pool_matches_naive(
        h in 1usize..12,
        lens in prop::collection::vec(0usize..7, 0..6),
        modes in prop::collection::vec(mode(), 1..4),
        seed in any::<u64>(),
    ) {
        let mut state = seed | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2001) as f32 / 100.0 - 10.0
        };
        let seqs: Vec<Vec<Vec<f32>>> =
            lens.iter().map(|&n| (0..n).map(|_| (0..h).map(|_| next()).collect()).collect()).collect();
        let hidden: Vec<f32> = seqs.iter().flatten().flatten().copied().collect();
        let mut cu = vec![0];
        for &n in &lens {
            cu.push(cu.last().unwrap() + n);
        }
        let width = h * modes.len();
        let mut out = vec![f32::NAN; lens.len() * width];
        pool(&hidden, h, &cu, &modes, &mut out);
        for (s, seq) in seqs.iter().enumerate() {
            for (m, &mode) in modes.iter().enumerate() {
                let want = naive(seq, mode, h);
                let got = &out[s * width + m * h..][..h];
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    prop_assert!((g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "seq {s} mode {mode} dim {i}: {g} vs {w}");
                }
            }
        }
    }
}
