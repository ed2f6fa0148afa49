//! Time of `ragged_attention` at MiniLM's shape (12 heads of 32).
//!
//! Usage: `cargo run --release -p fletcher-kernels --example attn_bench -- [THREADS] [LEN] [SEQS]`
//! (defaults: 2 threads, sequences of 160 tokens, 100 of them).

use fletcher_kernels::attention::ragged_attention;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(2, |s| s.parse().expect("THREADS"));
    let len: usize = args.next().map_or(160, |s| s.parse().expect("LEN"));
    let seqs: usize = args.next().map_or(100, |s| s.parse().expect("SEQS"));
    let (heads, d) = (12, 32);
    let hidden = heads * d;
    let tokens = len * seqs;
    let cu: Vec<usize> = (0..=seqs).map(|s| s * len).collect();
    let qkv: Vec<f32> = (0..tokens * 3 * hidden)
        .map(|i| ((i * 104_729) % 997) as f32 * 2e-3 - 1.0)
        .collect();
    let mut out = vec![0f32; tokens * hidden];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        for _ in 0..2 {
            ragged_attention(&qkv, &cu, heads, d, &mut out);
        }
        let mut best = Duration::MAX;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            let t = Instant::now();
            ragged_attention(&qkv, &cu, heads, d, &mut out);
            best = best.min(t.elapsed());
        }
        std::hint::black_box(&out);
        let flops = 4.0 * (seqs * len * len * hidden) as f64;
        println!(
            "{seqs} x {len} tokens, {threads} thread(s): {:.2} ms, {:.1} GFLOP/s",
            best.as_secs_f64() * 1e3,
            flops / best.as_secs_f64() / 1e9
        );
    });
}
