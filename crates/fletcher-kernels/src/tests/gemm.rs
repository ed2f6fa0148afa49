use super::{act64, in_pool, isas, Rng, ALL_ACTS};
use crate::{Activation, PackedLinear};
use proptest::prelude::*;

/// `act(x · Wᵀ + b)` in `f64`, and for each output the sum of `|x_p w_p|`
/// (the scale of the rounding error).
fn reference(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    act: Activation,
) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for r in 0..m {
        for j in 0..n {
            let (mut s, mut a) = (b[j] as f64, (b[j] as f64).abs());
            for p in 0..k {
                let t = x[r * k + p] as f64 * w[j * k + p] as f64;
                s += t;
                a += t.abs();
            }
            y[r * n + j] = act64(act, s);
            mag[r * n + j] = a;
        }
    }
    (y, mag)
}

fn check(
    m: usize,
    k: usize,
    n: usize,
    act: Activation,
    seed: u64,
    threads: usize,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let x = rng.vec(m * k, 1.0);
    let w = rng.vec(n * k, 0.5);
    let b = rng.vec(n, 1.0);
    let lin = PackedLinear::new(&w, Some(&b), n, k);
    let (want, mag) = reference(&x, &w, &b, m, k, n, act);
    for isa in isas() {
        let mut y = vec![f32::NAN; m * n];
        in_pool(threads, || lin.forward_with(isa, &x, m, &mut y, act));
        for i in 0..m * n {
            let tol = 2e-6 * (1.0 + mag[i]) + 1e-6 * want[i].abs();
            if (y[i] as f64 - want[i]).abs() > tol || y[i].is_nan() {
                return Err(format!(
                    "{isa:?} {m}x{k}x{n} {act:?}: y[{i}] = {}, want {}",
                    y[i], want[i]
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn fixed_shapes_match_reference() {
    for (m, k, n) in [
        (1, 1, 1),
        (1, 384, 384),
        (7, 384, 1152),
        (16, 1536, 384),
        (37, 800, 33),
        (200, 64, 100),
        (6, 16, 16),
        (24, 400, 64),
        (41, 1536, 80),
    ] {
        for (i, act) in ALL_ACTS.into_iter().enumerate() {
            check(m, k, n, act, (m * 1000 + k + n + i) as u64, 2).unwrap();
        }
    }
}

#[test]
fn no_bias_and_empty() {
    let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let lin = PackedLinear::new(&w, None, 2, 3);
    let mut y = [0.0; 2];
    lin.forward(&[1.0, 1.0, 1.0], 1, &mut y, Activation::Identity);
    assert_eq!(y, [6.0, 15.0]);
    lin.forward(&[], 0, &mut [], Activation::Gelu);
    let lin0 = PackedLinear::new(&[], Some(&[0.5, -1.0]), 2, 0);
    let mut y = [9.0; 4];
    lin0.forward(&[], 2, &mut y, Activation::Relu);
    assert_eq!(y, [0.5, 0.0, 0.5, 0.0]);
}

/// Row `r` of `x` computed alone, and inside batches of many sizes at many
/// positions among other random rows, in pools of 1 to 4 threads: the bits
/// must be identical.
#[test]
fn batch_invariance_is_bitwise() {
    let mut rng = Rng::new(7);
    for (k, n) in [(384, 1152), (1536, 384), (100, 37), (5, 3)] {
        let w = rng.vec(n * k, 0.5);
        let b = rng.vec(n, 1.0);
        let lin = PackedLinear::new(&w, Some(&b), n, k);
        let probe = rng.vec(k, 1.0);
        for isa in isas() {
            for act in [Activation::Identity, Activation::Gelu] {
                let mut alone = vec![0.0; n];
                in_pool(1, || lin.forward_with(isa, &probe, 1, &mut alone, act));
                for (batch, threads) in [
                    (1, 2),
                    (2, 2),
                    (5, 1),
                    (6, 2),
                    (7, 3),
                    (13, 2),
                    (64, 2),
                    (300, 4),
                    (301, 2),
                ] {
                    let pos = rng.below(batch);
                    let mut x = rng.vec(batch * k, 3.0);
                    x[pos * k..][..k].copy_from_slice(&probe);
                    let mut y = vec![0.0; batch * n];
                    in_pool(threads, || lin.forward_with(isa, &x, batch, &mut y, act));
                    let got = &y[pos * n..][..n];
                    for j in 0..n {
                        assert_eq!(
                            got[j].to_bits(),
                            alone[j].to_bits(),
                            "{isa:?} {act:?} k={k} n={n}: row {pos} of {batch} on {threads} threads, column {j}"
                        );
                    }
                }
            }
        }
    }
}

/// The fused epilogue gives the same bits as the identity product followed
/// by `Activation::apply`.
#[test]
fn fused_epilogue_is_apply() {
    let mut rng = Rng::new(11);
    let (m, k, n) = (23, 200, 50);
    let x = rng.vec(m * k, 2.0);
    let w = rng.vec(n * k, 0.5);
    let b = rng.vec(n, 1.0);
    let lin = PackedLinear::new(&w, Some(&b), n, k);
    for isa in isas() {
        let mut plain = vec![0.0; m * n];
        lin.forward_with(isa, &x, m, &mut plain, Activation::Identity);
        for act in ALL_ACTS {
            let mut fused = vec![0.0; m * n];
            lin.forward_with(isa, &x, m, &mut fused, act);
            let mut after = plain.clone();
            crate::activation::apply_with(isa, act, &mut after);
            assert!(
                fused
                    .iter()
                    .zip(&after)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa:?} {act:?}"
            );
        }
    }
}

/// Every code path gives the same bits when each has fused multiply-add:
/// shapes with whole and cut 12 x 32 tiles, an odd panel at the end, `k`
/// spanning several blocks, and Strassen chunks, with bias and every
/// activation.
#[test]
fn paths_with_fma_agree() {
    let paths: Vec<_> = isas()
        .into_iter()
        .filter(|i| *i != crate::Isa::Portable)
        .collect();
    if paths.len() < 2 {
        return;
    }
    let mut rng = Rng::new(3);
    let h = crate::gemm::strassen_half_rows();
    for (m, k, n, threads) in [
        (9, 77, 40, 1),
        (29, 400, 72, 2),
        (48, 1536, 96, 2),
        (13, 384, 1152, 3),
        // Strassen chunks and a plain tail.
        (16 * h + 25, 384, 128, 2),
    ] {
        let bounds = [0, m / 2, m];
        let (x, w, b) = (rng.vec(m * k, 1.0), rng.vec(n * k, 0.5), rng.vec(n, 1.0));
        let lin = PackedLinear::new(&w, Some(&b), n, k);
        for act in ALL_ACTS {
            let mut first = vec![0.0; m * n];
            in_pool(threads, || {
                lin.forward_on(paths[0], true, &x, &bounds, &mut first, act)
            });
            for &isa in &paths[1..] {
                let mut y = vec![0.0; m * n];
                in_pool(threads, || {
                    lin.forward_on(isa, true, &x, &bounds, &mut y, act)
                });
                let same = y
                    .iter()
                    .zip(&first)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{isa:?} against {:?}: {m}x{k}x{n} {act:?}", paths[0]);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_shapes_match_reference(
        m in 1usize..40,
        k in 1usize..900,
        n in 1usize..70,
        act in 0usize..6,
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        check(m, k, n, ALL_ACTS[act], seed, threads).map_err(TestCaseError::fail)?;
    }
}

/// Products of enough rows to take the Strassen chunks, with rows left over
/// for the plain loop nest: every output within rounding of the `f64`
/// reference, the rounding scale being that of the row and of its partner
/// in the chunk, on every code path and activation; and not the plain
/// path's bits, so the chunks did run.
#[test]
fn strassen_chunks_match_reference() {
    if !crate::strassen_enabled() {
        return;
    }
    let mut rng = Rng::new(17);
    let h = crate::gemm::strassen_half_rows();
    for (m, k, n, threads) in [
        (8 * h + 37, 64, 64, 1),
        (16 * h + 30, 384, 1152, 2),
        (24 * h + 48, 1536, 384, 3),
    ] {
        let x = rng.vec(m * k, 1.0);
        let w = rng.vec(n * k, 0.5);
        let b = rng.vec(n, 1.0);
        let lin = PackedLinear::new(&w, Some(&b), n, k);
        let (pre, mag) = reference(&x, &w, &b, m, k, n, Activation::Identity);
        let chunked = m / (2 * h) * 2 * h;
        let partner = |r: usize| match r {
            r if r >= chunked => r,
            r if r % (2 * h) < h => r + h,
            r => r - h,
        };
        for act in ALL_ACTS {
            for isa in isas() {
                let mut y = vec![f32::NAN; m * n];
                in_pool(threads, || {
                    lin.forward_on(isa, true, &x, &[0, m], &mut y, act)
                });
                for r in 0..m {
                    for j in 0..n {
                        let i = r * n + j;
                        let want = act64(act, pre[i]);
                        let scale = 1.0 + mag[i] + mag[partner(r) * n + j];
                        let tol = 1e-5 * scale + 1e-6 * want.abs();
                        assert!(
                            (y[i] as f64 - want).abs() <= tol,
                            "{isa:?} {m}x{k}x{n} {act:?}: y[{r}][{j}] = {}, want {want}",
                            y[i]
                        );
                    }
                }
                let mut plain = vec![0.0; m * n];
                in_pool(threads, || lin.forward_with(isa, &x, m, &mut plain, act));
                let differ = y[..chunked * n]
                    .iter()
                    .zip(&plain)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert!(differ > 0, "{isa:?} {m}x{k}x{n}: no chunk ran");
                let tail = |v: &[f32]| {
                    v[chunked * n..]
                        .iter()
                        .map(|x| x.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    tail(&y),
                    tail(&plain),
                    "rows after the chunks take the plain path"
                );
            }
        }
    }
}

/// A segment's rows computed alone and inside batches of other segments of
/// many lengths, at many positions, in pools of 1 to 4 threads, with the
/// Strassen chunks on: the bits must be identical.
#[test]
fn segmented_batch_invariance_is_bitwise() {
    if !crate::strassen_enabled() {
        return;
    }
    let mut rng = Rng::new(23);
    let h = crate::gemm::strassen_half_rows();
    for (k, n) in [(384, 1152), (1536, 384), (64, 64)] {
        let w = rng.vec(n * k, 0.5);
        let b = rng.vec(n, 1.0);
        let lin = PackedLinear::new(&w, Some(&b), n, k);
        for len in [h, 2 * h, 3 * 2 * h + 7, 5 * 2 * h] {
            let probe = rng.vec(len * k, 1.0);
            for isa in isas() {
                let act = Activation::Gelu;
                let mut alone = vec![0.0; len * n];
                in_pool(1, || {
                    lin.forward_on(isa, true, &probe, &[0, len], &mut alone, act)
                });
                for (others, threads) in [(1, 2), (3, 1), (4, 3), (6, 4)] {
                    let lens: Vec<usize> = (0..others).map(|_| 1 + rng.below(4 * h)).collect();
                    let pos = rng.below(others + 1);
                    let mut bounds = vec![0];
                    let mut x = Vec::new();
                    let mut start = 0;
                    for i in 0..=others {
                        if i == pos {
                            start = x.len() / k;
                            x.extend_from_slice(&probe);
                            bounds.push(x.len() / k);
                        }
                        if i < others {
                            x.extend(rng.vec(lens[i] * k, 3.0));
                            bounds.push(x.len() / k);
                        }
                    }
                    let rows = x.len() / k;
                    let mut y = vec![0.0; rows * n];
                    in_pool(threads, || {
                        lin.forward_on(isa, true, &x, &bounds, &mut y, act)
                    });
                    let got = &y[start * n..][..len * n];
                    assert!(
                        got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa:?} k={k} n={n}: segment of {len} at row {start} of {rows}, {threads} threads"
                    );
                }
            }
        }
    }
}
