//! Tests against `f64` references, and bitwise batch-invariance tests, run on
//! every code path this CPU has (`cargo test --release -p fletcher-kernels`).

mod activation;
mod attention;
mod gemm;
mod norm;

use crate::cpu::Isa;

/// A small deterministic generator (xorshift64*).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[-1, 1)`.
    pub(crate) fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub(crate) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Every code path of this CPU.
pub(crate) fn isas() -> Vec<Isa> {
    Isa::available()
}

/// Runs `f` inside a rayon pool of `threads` threads.
pub(crate) fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool")
        .install(f)
}

/// `erf` in `f64` to about 1e-15, from the everywhere-positive series
/// `erf x = 2/sqrt(pi) e^(-x^2) sum 2^n x^(2n+1) / (2n+1)!!`.
pub(crate) fn erf64(x: f64) -> f64 {
    if x.abs() > 6.0 {
        return x.signum();
    }
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-17 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x * x / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}

/// The activations in `f64`.
pub(crate) fn act64(act: crate::Activation, x: f64) -> f64 {
    use crate::Activation::*;
    match act {
        Identity => x,
        Gelu => 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2)),
        GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        Relu => x.max(0.0),
        Silu => x / (1.0 + (-x).exp()),
        QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }
}

pub(crate) const ALL_ACTS: [crate::Activation; 6] = [
    crate::Activation::Identity,
    crate::Activation::Gelu,
    crate::Activation::GeluTanh,
    crate::Activation::Relu,
    crate::Activation::Silu,
    crate::Activation::QuickGelu,
];
