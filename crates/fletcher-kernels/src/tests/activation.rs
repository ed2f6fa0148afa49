use super::{act64, isas, ALL_ACTS};
use crate::activation::apply_with;
use crate::Activation;
use proptest::prelude::*;

/// Every `f32` step of `1/4096` over `[lo, hi]`, plus the endpoints' neighbours.
fn grid(lo: f32, hi: f32) -> Vec<f32> {
    let n = ((hi - lo) * 4096.0) as usize;
    let mut v: Vec<f32> = (0..=n).map(|i| lo + i as f32 / 4096.0).collect();
    v.extend([
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-30,
        -1e-30,
    ]);
    v
}

#[test]
fn gelu_erf_within_1e6_absolute_on_minus_10_10() {
    let xs = grid(-10.0, 10.0);
    for isa in isas() {
        let mut ys = xs.clone();
        apply_with(isa, Activation::Gelu, &mut ys);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &y) in xs.iter().zip(&ys) {
            let e = (y as f64 - act64(Activation::Gelu, x as f64)).abs();
            if e > worst.0 {
                worst = (e, x);
            }
        }
        eprintln!("{isa:?}: gelu max abs error {:e} at {}", worst.0, worst.1);
        assert!(
            worst.0 <= 1e-6,
            "{isa:?}: max error {:e} at {}",
            worst.0,
            worst.1
        );
    }
}

#[test]
fn activations_match_f64_reference() {
    let xs = grid(-30.0, 30.0);
    for isa in isas() {
        for act in ALL_ACTS {
            let mut ys = xs.clone();
            apply_with(isa, act, &mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let r = act64(act, x as f64);
                let tol = 1e-6 * r.abs().max(1.0);
                assert!(
                    (y as f64 - r).abs() <= tol,
                    "{isa:?} {act:?}({x}) = {y}, want {r}"
                );
            }
        }
    }
}

#[test]
fn activations_of_extremes_are_finite_and_sane() {
    let xs = [f32::MAX, -f32::MAX, 1e10, -1e10, 1e4, -1e4, 100.0, -100.0];
    for isa in isas() {
        for act in ALL_ACTS {
            let mut ys = xs;
            apply_with(isa, act, &mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                assert!(y.is_finite(), "{isa:?} {act:?}({x}) = {y}");
                if x > 0.0 {
                    assert!((y - x).abs() <= x * 1e-6, "{isa:?} {act:?}({x}) = {y}");
                } else if act != Activation::Identity {
                    assert!(y.abs() <= 1e-30, "{isa:?} {act:?}({x}) = {y}");
                }
            }
        }
    }
}

#[test]
fn scalar_is_apply() {
    for act in ALL_ACTS {
        for x in [-3.7f32, -0.2, 0.0, 0.5, 2.25, 9.0] {
            let mut v = [1.0, x, 2.0];
            act.apply(&mut v);
            assert_eq!(act.scalar(x).to_bits(), v[1].to_bits());
        }
    }
}

#[test]
fn exp_is_accurate() {
    let xs = grid(-87.0, 88.0);
    for isa in isas() {
        let mut ys = xs.clone();
        crate::simd::tests_exp(isa, &mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let r = (x as f64).exp();
            assert!(
                ((y as f64 - r) / r).abs() <= 2.5e-7,
                "{isa:?} exp({x}) = {y}, want {r}"
            );
        }
    }
}

proptest! {
    #[test]
    fn activations_anywhere(x in -1e3f32..1e3, i in 0usize..6) {
        let act = ALL_ACTS[i];
        for isa in isas() {
            let mut y = [x];
            apply_with(isa, act, &mut y);
            let r = act64(act, x as f64);
            prop_assert!((y[0] as f64 - r).abs() <= 1e-6 * r.abs().max(1.0), "{:?} {:?}({}) = {}, want {}", isa, act, x, y[0], r);
        }
    }
}
