//! GFLOP/s of `PackedLinear::forward` at MiniLM's shapes.
//!
//! Usage: `cargo run --release -p fletcher-kernels --example gemm_bench -- [THREADS] [ACT] [SEGMENT]`
//! (THREADS defaults to 2; ACT is an HF activation name such as `gelu`, default identity;
//! the rows are cut into sequences of SEGMENT rows, default 160, for `forward_segmented`,
//! and 0 runs the plain `forward`). GFLOP/s count the classic `2 m k n` flops.

use fletcher_kernels::{Activation, PackedLinear};
use std::time::{Duration, Instant};

const ROWS: [usize; 5] = [16, 256, 1024, 2048, 8192];
/// (K, N): fused QKV, attention output, FFN up, FFN down.
const SHAPES: [(usize, usize, &str); 4] = [
    (384, 1152, "qkv"),
    (384, 384, "attn-out"),
    (384, 1536, "ffn-up"),
    (1536, 384, "ffn-down"),
];

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(2, |s| s.parse().expect("THREADS"));
    let act = args.next().map_or(Activation::Identity, |s| {
        Activation::from_hf_name(&s).expect("ACT")
    });
    let segment: usize = args.next().map_or(160, |s| s.parse().expect("SEGMENT"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    println!(
        "isa {}, {threads} thread(s), activation {act:?}, {}",
        fletcher_kernels::isa().name(),
        match segment {
            0 => "plain forward".to_owned(),
            s => format!(
                "segments of {s} rows, Strassen {}",
                if fletcher_kernels::strassen_enabled() {
                    "on"
                } else {
                    "off"
                }
            ),
        }
    );
    println!(
        "{:>6} {:>5} {:>5} {:>9}  {:>8}  {:>10}",
        "M", "K", "N", "layer", "GFLOP/s", "us/call"
    );
    pool.install(|| {
        for (k, n, name) in SHAPES {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.01).collect();
            let lin = PackedLinear::new(&w, Some(&b), n, k);
            for m in ROWS {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 104_729) % 997) as f32 * 1e-3 - 0.5)
                    .collect();
                let mut y = vec![0f32; m * n];
                let bounds: Vec<usize> = match segment {
                    0 => vec![0, m],
                    s => (0..m).step_by(s).chain([m]).collect(),
                };
                let run = |y: &mut [f32]| {
                    if segment == 0 {
                        lin.forward(&x, m, y, act);
                    } else {
                        lin.forward_segmented(&x, &bounds, y, act);
                    }
                };
                let flops = 2.0 * (m * k * n) as f64;
                // Warm up, then time batches of calls for at least ~0.3 s in total and keep
                // the best batch (the machines are shared and noisy).
                for _ in 0..3 {
                    run(&mut y);
                }
                let per_batch = ((2e8 / flops) as usize).max(1);
                let mut best = Duration::MAX;
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(300) {
                    let t = Instant::now();
                    for _ in 0..per_batch {
                        run(&mut y);
                    }
                    best = best.min(t.elapsed() / per_batch as u32);
                }
                std::hint::black_box(&y);
                let secs = best.as_secs_f64();
                println!(
                    "{m:>6} {k:>5} {n:>5} {name:>9}  {:>8.1}  {:>10.1}",
                    flops / secs / 1e9,
                    secs * 1e6
                );
            }
        }
    });
}
