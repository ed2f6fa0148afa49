//! CPU math for Fletcher's encoders.
//!
//! Every kernel here works on dense row-major `f32` buffers and runs on the
//! current rayon thread pool, so a device controls its parallelism by
//! installing its own pool around a forward pass.
//!
//! The code path (AVX2+FMA or portable) is chosen once per process, see
//! [`cpu::isa`]. Results are batch invariant: a row's (or a sequence's)
//! output depends on that row alone, bit for bit, whatever else is in the
//! batch and however many threads run.

// Register tiles are indexed by constant loop bounds on purpose: the loops
// unroll and the arrays live in registers.
#![allow(clippy::needless_range_loop)]

pub mod activation;
pub mod attention;
pub mod cpu;
pub mod gemm;
pub mod norm;
pub(crate) mod simd;

pub use activation::Activation;
pub use cpu::{isa, Isa};
pub use gemm::{strassen_enabled, PackedLinear};

#[cfg(test)]
mod tests;
