//! Which instruction set the kernels use on this CPU.

use std::sync::OnceLock;

/// The code path the kernels take, chosen once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// 512-bit AVX-512F for the matrix multiply and attention, AVX2 and FMA
    /// elsewhere (x86-64). Its linear layers give the same bits as
    /// [`Isa::Avx2Fma`]'s; attention agrees with it to rounding.
    Avx512,
    /// 256-bit AVX2 with fused multiply-add (x86-64).
    Avx2Fma,
    /// Plain Rust that the compiler vectorizes for the build target.
    Portable,
}

impl Isa {
    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512f+avx2+fma",
            Self::Avx2Fma => "avx2+fma",
            Self::Portable => "portable",
        }
    }

    /// Every path this CPU can run, the fastest first.
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        if detect_avx512() {
            v.push(Self::Avx512);
        }
        if detect_avx2_fma() {
            v.push(Self::Avx2Fma);
        }
        v.push(Self::Portable);
        v
    }

    /// The path named `name` (as [`Isa::name`] gives it, or `avx512`,
    /// `avx2`), when this CPU can run it.
    pub fn from_name(name: &str) -> Option<Isa> {
        let isa = match name.to_ascii_lowercase().as_str() {
            "avx512" | "avx512f+avx2+fma" => Self::Avx512,
            "avx2" | "avx2+fma" => Self::Avx2Fma,
            "portable" => Self::Portable,
            _ => return None,
        };
        Self::available().contains(&isa).then_some(isa)
    }
}

fn detect_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn detect_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        detect_avx2_fma() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The path the kernels take on this CPU, detected on first use and cached.
///
/// Setting `FLETCHER_KERNELS_ISA` to `portable`, `avx2` or `avx512` in the
/// environment before the first call picks that path instead of the fastest
/// (for debugging and benchmarks); a path this CPU lacks is ignored.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        std::env::var("FLETCHER_KERNELS_ISA")
            .ok()
            .and_then(|v| Isa::from_name(&v))
            .unwrap_or(Isa::available()[0])
    })
}
