//! The matrix-multiply ceiling of this machine, measured on the spot.

use std::time::Instant;

use fletcher_kernels::{Activation, PackedLinear};

/// GFLOP/s of the engine's own plain f32 GEMM (no Strassen chunks) on a
/// dense `2048 x 384 x 1536` product (the shape of a MiniLM feed-forward
/// layer) with `threads` threads: the rate of a classic `2 m k n`-flop
/// product on this machine. An encoder pass whose products take the
/// Strassen chunks does 7/8 of those flops there, so its effective rate,
/// counted in classic flops, can pass this ceiling.
pub fn ceiling_gflops(threads: usize) -> f64 {
    let (m, k, n) = (2048, 384, 1536);
    let weight: Vec<f32> = (0..n * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let mut y = vec![0.0; m * n];
    let linear = PackedLinear::new(&weight, None, n, k);
    let Ok(pool) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
    else {
        return f64::NAN;
    };
    pool.install(|| {
        for _ in 0..3 {
            linear.forward(&x, m, &mut y, Activation::Identity);
        }
        let iterations = 12;
        let start = Instant::now();
        for _ in 0..iterations {
            linear.forward(&x, m, &mut y, Activation::Identity);
        }
        let seconds = start.elapsed().as_secs_f64() / f64::from(iterations);
        2.0 * (m * k * n) as f64 / seconds / 1e9
    })
}
