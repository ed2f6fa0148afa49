//! Which instruction set the kernels use on this CPU.

use std::sync::OnceLock;

/// The code path the kernels take, chosen once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// 256-bit AVX2 with fused multiply-add (x86-64).
    Avx2Fma,
    /// Plain Rust that the compiler vectorizes for the build target.
    Portable,
}

impl Isa {
    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx2Fma => "avx2+fma",
            Self::Portable => "portable",
        }
    }

    /// Every path this CPU can run, the fastest first.
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        if detect_avx2_fma() {
            v.push(Self::Avx2Fma);
        }
        v.push(Self::Portable);
        v
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

/// The path the kernels take on this CPU, detected on first use and cached.
///
/// Setting `FLETCHER_KERNELS_ISA=portable` in the environment before the
/// first call forces the portable path (for debugging and benchmarks).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced =
            std::env::var("FLETCHER_KERNELS_ISA").is_ok_and(|v| v.eq_ignore_ascii_case("portable"));
        if !forced && detect_avx2_fma() {
            Isa::Avx2Fma
        } else {
            Isa::Portable
        }
    })
}
