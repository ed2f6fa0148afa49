//! The machine's peak `f32` multiply-add rate: 12 independent chains of
//! fused multiply-adds per thread, in 8-lane (AVX2) and 16-lane (AVX-512)
//! registers, with no memory traffic. It is the bound any kernel here can
//! approach, and shows whether 16-lane instructions do more work per cycle
//! than 8-lane ones on this CPU.
//!
//! Usage: `cargo run --release -p fletcher-kernels --example fma_peak -- [THREADS]`

use std::time::Instant;

const STEPS: u64 = 100_000_000;
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn chains_avx2() -> f32 {
    use std::arch::x86_64::*;
    let mut acc: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32 * 1e-3));
    let (a, b) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-4));
    for _ in 0..STEPS {
        for x in &mut acc {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut out = [0.0f32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x));
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn chains_avx512() -> f32 {
    use std::arch::x86_64::*;
    let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32 * 1e-3));
    let (a, b) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-4));
    for _ in 0..STEPS {
        for x in &mut acc {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, *x));
    _mm512_reduce_add_ps(sum)
}

/// GFLOP/s of `threads` threads each running `f`, which does
/// `STEPS * CHAINS * lanes` multiply-adds.
fn rate(threads: usize, lanes: usize, f: fn() -> f32) -> f64 {
    let start = Instant::now();
    let sums: Vec<f32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(f)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    std::hint::black_box(sums);
    let flops = 2.0 * (STEPS as f64) * (CHAINS * lanes * threads) as f64;
    flops / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(2, |s| s.parse().expect("THREADS"));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let f = || unsafe { chains_avx2() };
            println!(
                "avx2+fma, {threads} thread(s): {:.1} GFLOP/s",
                rate(threads, 8, f)
            );
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            let f = || unsafe { chains_avx512() };
            println!(
                "avx512f, {threads} thread(s): {:.1} GFLOP/s",
                rate(threads, 16, f)
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("no x86-64 vector path on this CPU ({threads} thread(s) requested)");
}
