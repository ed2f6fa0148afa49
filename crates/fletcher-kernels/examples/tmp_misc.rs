use std::time::Instant;
fn main() {
    let threads: usize = std::env::args().nth(1).map_or(2, |s| s.parse().unwrap());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let (heads, d) = (12, 32);
        let hidden = heads * d;
        for (seqs, len) in [(64usize, 15usize), (8, 256), (1, 10)] {
            let tokens = seqs * len;
            let qkv: Vec<f32> = (0..tokens * 3 * hidden).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let cu: Vec<usize> = (0..=seqs).map(|s| s * len).collect();
            let mut out = vec![0f32; tokens * hidden];
            let flops = 4.0 * (seqs * len * len * hidden) as f64;
            let mut best = f64::MAX;
            for _ in 0..30 {
                let t = Instant::now();
                fletcher_kernels::attention::ragged_attention(&qkv, &cu, heads, d, &mut out);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("attention {seqs}x{len}: {:.1} us, {:.1} GFLOP/s", best * 1e6, flops / best / 1e9);
        }
        for rows in [16usize, 2048] {
            let mut x: Vec<f32> = (0..rows * 384).map(|i| (i % 97) as f32 * 0.01).collect();
            let r = x.clone();
            let g = vec![1.0f32; 384];
            let b = vec![0.0f32; 384];
            let mut best = f64::MAX;
            for _ in 0..50 {
                let t = Instant::now();
                fletcher_kernels::norm::add_layer_norm(&mut x, &r, &g, &b, 1e-12);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("add_layer_norm {rows}x384: {:.1} us ({:.2} ns/row-elem)", best * 1e6, best * 1e9 / (rows * 384) as f64);
        }
    });
}
