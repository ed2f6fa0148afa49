//! Element-wise activation functions named as in Hugging Face configs.

use crate::cpu::Isa;
use crate::simd::{self, Lanes8, SimdF32};

/// An activation applied after a linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// No activation.
    Identity,
    /// GELU with the exact error function (`gelu` in transformers).
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `max(0, x)`.
    Relu,
    /// `x * sigmoid(x)` (`silu`, `swish`).
    Silu,
    /// `x * sigmoid(1.702 x)`.
    QuickGelu,
}

impl Activation {
    /// Maps a `hidden_act` value from a transformers config.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" | "gelu_python" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "quick_gelu" => Self::QuickGelu,
            "linear" | "identity" => Self::Identity,
            _ => return None,
        })
    }

    /// Applies the activation to every element, vectorized; the result of
    /// each element is bit for bit the one [`PackedLinear`](crate::PackedLinear)
    /// computes in its fused epilogue.
    pub fn apply(self, xs: &mut [f32]) {
        apply_with(crate::cpu::isa(), self, xs);
    }

    /// The activation of one value (the same bits as [`Activation::apply`]).
    pub fn scalar(self, x: f32) -> f32 {
        let mut b = [x];
        self.apply(&mut b);
        b[0]
    }
}

/// The activation of 8 lanes.
#[inline(always)]
pub(crate) fn act_vec<V: SimdF32>(act: Activation, x: V) -> V {
    match act {
        Activation::Identity => x,
        Activation::Gelu => simd::gelu_erf(x),
        Activation::GeluTanh => simd::gelu_tanh(x),
        Activation::Relu => simd::relu(x),
        Activation::Silu => simd::silu(x),
        Activation::QuickGelu => simd::quick_gelu(x),
    }
}

/// Applies `act` to `regs` in place, with the match outside the loop.
#[inline(always)]
pub(crate) fn act_regs<V: SimdF32>(act: Activation, regs: &mut [V]) {
    macro_rules! each {
        ($f:expr) => {
            for r in regs.iter_mut() {
                *r = $f(*r);
            }
        };
    }
    match act {
        Activation::Identity => {}
        Activation::Gelu => each!(simd::gelu_erf),
        Activation::GeluTanh => each!(simd::gelu_tanh),
        Activation::Relu => each!(simd::relu),
        Activation::Silu => each!(simd::silu),
        Activation::QuickGelu => each!(simd::quick_gelu),
    }
}

#[inline(always)]
fn apply_slice<V: Lanes8>(act: Activation, xs: &mut [f32]) {
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 floats.
        unsafe { act_vec(act, V::load(c.as_ptr())).store(c.as_mut_ptr()) };
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut buf = [0.0f32; 8];
        buf[..rest.len()].copy_from_slice(rest);
        // SAFETY: `buf` holds exactly 8 floats.
        unsafe { act_vec(act, V::load(buf.as_ptr())).store(buf.as_mut_ptr()) };
        rest.copy_from_slice(&buf[..rest.len()]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2(act: Activation, xs: &mut [f32]) {
    apply_slice::<simd::Avx2>(act, xs);
}

/// [`Activation::apply`] on an explicit code path.
pub(crate) fn apply_with(isa: Isa, act: Activation, xs: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only used on CPUs that have AVX2 and FMA.
        Isa::Avx2Fma | Isa::Avx512 => unsafe { apply_avx2(act, xs) },
        _ => apply_slice::<simd::Portable>(act, xs),
    }
}
