use super::{in_pool, isas, Rng};
use crate::attention;
use proptest::prelude::*;

fn reference(qkv: &[f32], cu: &[usize], heads: usize, d: usize) -> Vec<f64> {
    let hidden = heads * d;
    let stride = 3 * hidden;
    let tokens = *cu.last().unwrap();
    let mut out = vec![0.0; tokens * hidden];
    let scale = 1.0 / (d as f64).sqrt();
    for w in cu.windows(2) {
        for h in 0..heads {
            for i in w[0]..w[1] {
                let s: Vec<f64> = (w[0]..w[1])
                    .map(|j| {
                        (0..d)
                            .map(|c| {
                                qkv[i * stride + h * d + c] as f64
                                    * qkv[j * stride + hidden + h * d + c] as f64
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (jj, j) in (w[0]..w[1]).enumerate() {
                    for c in 0..d {
                        out[i * hidden + h * d + c] +=
                            e[jj] / sum * qkv[j * stride + 2 * hidden + h * d + c] as f64;
                    }
                }
            }
        }
    }
    out
}

fn check(
    lens: &[usize],
    heads: usize,
    d: usize,
    scale: f32,
    seed: u64,
    threads: usize,
) -> Result<(), String> {
    let mut cu = vec![0];
    for &l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    let tokens = *cu.last().unwrap();
    let mut rng = Rng::new(seed);
    let qkv = rng.vec(tokens * 3 * heads * d, scale);
    let want = reference(&qkv, &cu, heads, d);
    for isa in isas() {
        let mut out = vec![f32::NAN; tokens * heads * d];
        in_pool(threads, || {
            attention::run(isa, &qkv, &cu, heads, d, &mut out)
        });
        for i in 0..out.len() {
            if (out[i] as f64 - want[i]).abs() > 2e-6 * (1.0 + scale as f64) {
                return Err(format!(
                    "{isa:?} lens={lens:?} heads={heads} d={d}: out[{i}] = {}, want {}",
                    out[i], want[i]
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn fixed_shapes_match_reference() {
    check(&[1], 1, 1, 1.0, 1, 1).unwrap();
    check(&[10, 1, 17, 5], 12, 32, 2.0, 2, 2).unwrap();
    check(&[256], 12, 32, 1.0, 3, 2).unwrap();
    check(&[33, 64, 7], 2, 64, 3.0, 4, 2).unwrap();
    check(&[9, 40], 3, 20, 1.0, 5, 2).unwrap();
    check(&[0, 3, 0], 2, 8, 1.0, 6, 2).unwrap();
    // Enough sequences for a job to take every head of one.
    check(&[7, 30, 1, 12, 0, 5, 64, 9, 3, 20], 3, 16, 2.0, 7, 2).unwrap();
}

#[test]
fn large_scores_stay_finite() {
    check(&[12, 5], 2, 32, 30.0, 9, 2).unwrap();
}

/// A sequence alone and inside batches of other sequences, on 1 to 3
/// threads: identical bits.
#[test]
fn sequences_are_independent_bitwise() {
    let (heads, d) = (12, 32);
    let hidden = heads * d;
    let mut rng = Rng::new(21);
    for len in [1, 5, 16, 37, 256] {
        let probe = rng.vec(len * 3 * hidden, 2.0);
        for isa in isas() {
            let mut alone = vec![0.0; len * hidden];
            in_pool(1, || {
                attention::run(isa, &probe, &[0, len], heads, d, &mut alone)
            });
            for (others, threads) in [
                (&[3usize, 40][..], 2),
                (&[1, 1, 200, 9][..], 3),
                (&[64; 6][..], 2),
                // Enough sequences for the all-heads jobs.
                (&[64, 3, 17, 1, 90, 8, 30, 2, 11][..], 2),
                (&[5; 12][..], 3),
            ] {
                let pos = rng.below(others.len() + 1);
                let mut lens = others.to_vec();
                lens.insert(pos, len);
                let mut cu = vec![0];
                for &l in &lens {
                    cu.push(cu.last().unwrap() + l);
                }
                let mut qkv = rng.vec(cu.last().unwrap() * 3 * hidden, 2.0);
                qkv[cu[pos] * 3 * hidden..][..len * 3 * hidden].copy_from_slice(&probe);
                let mut out = vec![0.0; cu.last().unwrap() * hidden];
                in_pool(threads, || {
                    attention::run(isa, &qkv, &cu, heads, d, &mut out)
                });
                let got = &out[cu[pos] * hidden..][..len * hidden];
                assert!(
                    got.iter()
                        .zip(&alone)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa:?} len={len} lens={lens:?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_batches_match_reference(
        lens in proptest::collection::vec(prop_oneof![Just(1usize), 1usize..50], 1..5),
        heads in 1usize..4,
        d in 1usize..70,
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        check(&lens, heads, d, 1.5, seed, threads).map_err(TestCaseError::fail)?;
    }
}
