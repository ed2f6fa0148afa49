use super::{in_pool, isas, Rng};
use crate::norm;
use proptest::prelude::*;

/// Layer norm in `f64`, and for each output the scale of an `f32` kernel's
/// rounding error: `x - mean` is off by a few units in the last place of the
/// row's largest value, and normalizing multiplies that by `|gamma| / sigma`.
fn reference(
    x: &[f32],
    res: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> (Vec<f64>, Vec<f64>) {
    let h = gamma.len();
    let mut out = Vec::with_capacity(x.len());
    let mut scale = Vec::with_capacity(x.len());
    for (r, row) in x.chunks_exact(h).enumerate() {
        // The sum x + residual is rounded to f32 first, as the kernel stores it.
        let v: Vec<f64> = (0..h)
            .map(|i| res.map_or(row[i], |res| row[i] + res[r * h + i]) as f64)
            .collect();
        let mean = v.iter().sum::<f64>() / h as f64;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / h as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        out.extend((0..h).map(|i| (v[i] - mean) * inv * gamma[i] as f64 + beta[i] as f64));
        let largest = v.iter().fold(0.0f64, |m, a| m.max(a.abs()));
        scale.extend((0..h).map(|i| largest * inv * (gamma[i] as f64).abs()));
    }
    (out, scale)
}

fn check(
    rows: usize,
    h: usize,
    offset: f32,
    eps: f32,
    residual: bool,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = rng
        .vec(rows * h, 2.0)
        .into_iter()
        .map(|v| v + offset)
        .collect();
    let res = rng.vec(rows * h, 1.0);
    let gamma = rng.vec(h, 2.0);
    let beta = rng.vec(h, 1.0);
    let res = residual.then_some(&res[..]);
    let (want, scale) = reference(&x, res, &gamma, &beta, eps);
    for isa in isas() {
        let mut y = x.clone();
        in_pool(2, || norm::run(isa, &mut y, res, &gamma, &beta, eps));
        for i in 0..y.len() {
            let tol = 1e-5 * want[i].abs().max(1.0) + 8.0 * f64::from(f32::EPSILON) * scale[i];
            if (y[i] as f64 - want[i]).abs() > tol {
                return Err(format!(
                    "{isa:?} rows={rows} h={h}: y[{i}] = {}, want {}",
                    y[i], want[i]
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn fixed_shapes_match_reference() {
    for (rows, h) in [
        (1, 1),
        (1, 384),
        (3, 7),
        (100, 384),
        (2000, 384),
        (5, 1024),
        (9, 33),
    ] {
        for residual in [false, true] {
            check(rows, h, 3.0, 1e-12, residual, (rows * h) as u64).unwrap();
        }
    }
}

/// Two values close together far from zero: `x - mean` cancels, and the
/// error bound must follow the row's conditioning (a case proptest found).
#[test]
fn ill_conditioned_rows_match_reference() {
    check(12, 2, -8.788, 1e-12, false, 3_494_464_116_649_037_377).unwrap();
}

#[test]
fn public_entry_points() {
    let mut x = vec![1.0, 2.0, 3.0, 4.0];
    norm::layer_norm(&mut x, &[1.0, 1.0], &[0.0, 0.5], 0.0);
    assert_eq!(x, [-1.0, 1.5, -1.0, 1.5]);
    let mut x = vec![1.0, 1.0];
    norm::add_layer_norm(&mut x, &[0.0, 2.0], &[2.0, 2.0], &[0.0, 0.0], 0.0);
    assert_eq!(x, [-2.0, 2.0]);
}

#[test]
fn rows_are_independent_bitwise() {
    let mut rng = Rng::new(5);
    let h = 384;
    let (gamma, beta) = (rng.vec(h, 1.0), rng.vec(h, 1.0));
    let probe = rng.vec(h, 4.0);
    let probe_res = rng.vec(h, 1.0);
    for isa in isas() {
        let mut alone = probe.clone();
        norm::run(isa, &mut alone, Some(&probe_res), &gamma, &beta, 1e-12);
        for (rows, threads) in [(2, 1), (9, 2), (500, 2), (3001, 3)] {
            let pos = rng.below(rows);
            let mut x = rng.vec(rows * h, 10.0);
            let mut res = rng.vec(rows * h, 1.0);
            x[pos * h..][..h].copy_from_slice(&probe);
            res[pos * h..][..h].copy_from_slice(&probe_res);
            in_pool(threads, || {
                norm::run(isa, &mut x, Some(&res), &gamma, &beta, 1e-12)
            });
            assert!(
                x[pos * h..][..h]
                    .iter()
                    .zip(&alone)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa:?} {rows}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_shapes_match_reference(
        rows in 1usize..30,
        h in 1usize..200,
        offset in -10f32..10.0,
        eps in prop_oneof![Just(1e-12f32), Just(1e-5f32)],
        residual in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check(rows, h, offset, eps, residual, seed).map_err(TestCaseError::fail)?;
    }
}
