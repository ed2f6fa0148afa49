//! An `f32` vector (8 lanes, or 16 with AVX-512) with one implementation per
//! instruction set, and the vector math (exp, erf, activations) written once
//! on top of it.
//!
//! Every function here is `#[inline(always)]` so that it is compiled inside
//! the `#[target_feature]` entry point that calls it. Each lane is computed
//! independently of the others, so a value's result never depends on its
//! neighbours.

// Fitted coefficients are kept with the digits the fit produced.
#![allow(clippy::excessive_precision)]

/// `LANES` `f32` lanes.
///
/// # Safety
///
/// Implementors may assume that the CPU supports their instruction set;
/// their values only exist inside code compiled for it.
pub(crate) unsafe trait SimdF32: Copy {
    /// Lanes of the vector, at most [`MAX_LANES`].
    const LANES: usize;
    /// Reads `LANES` values from `p` (any alignment).
    ///
    /// # Safety
    /// `p..p+LANES` must be readable.
    unsafe fn load(p: *const f32) -> Self;
    /// Writes `LANES` values to `p` (any alignment).
    ///
    /// # Safety
    /// `p..p+LANES` must be writable.
    unsafe fn store(self, p: *mut f32);
    /// All lanes set to `*p`.
    ///
    /// # Safety
    /// `p` must be readable.
    unsafe fn broadcast(p: *const f32) -> Self;
    fn splat(v: f32) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// `self * b + c`, fused where the instruction set has it.
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    fn abs(self) -> Self;
    /// Rounds to the nearest integer, ties to even.
    fn round(self) -> Self;
    /// Per lane: `if a < b { x } else { y }`.
    fn select_lt(a: Self, b: Self, x: Self, y: Self) -> Self;
    /// `2^n` for integer-valued `n` in `[-126, 127]`.
    fn exp2i(n: Self) -> Self;
    /// Sum of the lanes, in a fixed order.
    fn hsum(self) -> f32;
    /// Maximum of the lanes.
    fn hmax(self) -> f32;
}

/// The widest vector any implementation has.
pub(crate) const MAX_LANES: usize = 16;

/// An 8-lane vector (the code written for exactly 8 lanes takes these),
/// which can also transpose an 8 x 8 block.
pub(crate) trait Lanes8: SimdF32 {
    /// The 8 x 8 matrix whose rows are `rows`, transposed: lane `i` of
    /// result `j` is lane `j` of `rows[i]`.
    fn transpose8(rows: [Self; 8]) -> [Self; 8];
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::SimdF32;
    use std::arch::x86_64::*;

    /// A `__m256`; only created by code compiled with AVX2 and FMA.
    #[derive(Clone, Copy, Debug)]
    #[repr(transparent)]
    pub(crate) struct Avx2(__m256);

    // SAFETY: every method uses AVX/AVX2/FMA intrinsics only, and values of
    // this type are only created inside `#[target_feature(enable =
    // "avx2,fma")]` functions entered after runtime detection.
    unsafe impl SimdF32 for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller guarantees 8 readable floats; see impl note.
            unsafe { Self(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller guarantees 8 writable floats; see impl note.
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn broadcast(p: *const f32) -> Self {
            // SAFETY: the caller guarantees `p` is readable; see impl note.
            unsafe { Self(_mm256_broadcast_ss(&*p)) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm256_set1_ps(v)) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm256_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm256_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm256_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm256_div_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm256_fmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm256_max_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm256_min_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn abs(self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0)) }
        }
        #[inline(always)]
        fn round(self) -> Self {
            // SAFETY: see impl note.
            unsafe {
                Self(_mm256_round_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(self.0))
            }
        }
        #[inline(always)]
        fn select_lt(a: Self, b: Self, x: Self, y: Self) -> Self {
            // SAFETY: see impl note.
            unsafe {
                Self(_mm256_blendv_ps(
                    y.0,
                    x.0,
                    _mm256_cmp_ps::<_CMP_LT_OQ>(a.0, b.0),
                ))
            }
        }
        #[inline(always)]
        fn exp2i(n: Self) -> Self {
            // SAFETY: see impl note.
            unsafe {
                let e = _mm256_add_epi32(_mm256_cvtps_epi32(n.0), _mm256_set1_epi32(127));
                Self(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)))
            }
        }
        #[inline(always)]
        fn hsum(self) -> f32 {
            // SAFETY: see impl note.
            unsafe {
                let s = _mm_add_ps(
                    _mm256_castps256_ps128(self.0),
                    _mm256_extractf128_ps::<1>(self.0),
                );
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn hmax(self) -> f32 {
            // SAFETY: see impl note.
            unsafe {
                let s = _mm_max_ps(
                    _mm256_castps256_ps128(self.0),
                    _mm256_extractf128_ps::<1>(self.0),
                );
                let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }

    impl super::Lanes8 for Avx2 {
        #[inline(always)]
        fn transpose8(r: [Self; 8]) -> [Self; 8] {
            // SAFETY: see impl note.
            unsafe {
                let t: [__m256; 8] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1].0, r[i | 1].0);
                    if i % 2 == 0 {
                        _mm256_unpacklo_ps(a, b)
                    } else {
                        _mm256_unpackhi_ps(a, b)
                    }
                });
                // Pairs of rows interleaved; now pairs of pairs.
                let q = [
                    _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                    _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                    _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                    _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                    _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                    _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                    _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                    _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
                ];
                std::array::from_fn(|j| {
                    let (lo, hi) = (q[j % 4], q[4 + j % 4]);
                    Self(if j < 4 {
                        _mm256_permute2f128_ps::<0x20>(lo, hi)
                    } else {
                        _mm256_permute2f128_ps::<0x31>(lo, hi)
                    })
                })
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::SimdF32;
    use std::arch::x86_64::*;

    /// A `__m512`; only created by code compiled with AVX-512F.
    #[derive(Clone, Copy, Debug)]
    #[repr(transparent)]
    pub(crate) struct Avx512(__m512);

    impl Avx512 {
        /// The low and high 8 lanes.
        #[inline(always)]
        fn halves(self) -> (__m256, __m256) {
            // SAFETY: see the impl note below.
            unsafe {
                (
                    _mm512_castps512_ps256(self.0),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.0))),
                )
            }
        }
    }

    // SAFETY: every method uses AVX-512F (and AVX) intrinsics only, and
    // values of this type are only created inside `#[target_feature(enable =
    // "avx512f,avx2,fma")]` functions entered after runtime detection.
    unsafe impl SimdF32 for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller guarantees 16 readable floats; see impl note.
            unsafe { Self(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller guarantees 16 writable floats; see impl note.
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn broadcast(p: *const f32) -> Self {
            // SAFETY: the caller guarantees `p` is readable; see impl note.
            unsafe { Self(_mm512_set1_ps(*p)) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm512_set1_ps(v)) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm512_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm512_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm512_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm512_div_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm512_fmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm512_max_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm512_min_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn abs(self) -> Self {
            // SAFETY: see impl note.
            unsafe { Self(_mm512_abs_ps(self.0)) }
        }
        #[inline(always)]
        fn round(self) -> Self {
            // SAFETY: see impl note.
            unsafe {
                Self(_mm512_roundscale_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(self.0))
            }
        }
        #[inline(always)]
        fn select_lt(a: Self, b: Self, x: Self, y: Self) -> Self {
            // SAFETY: see impl note.
            unsafe {
                let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a.0, b.0);
                Self(_mm512_mask_blend_ps(lt, y.0, x.0))
            }
        }
        #[inline(always)]
        fn exp2i(n: Self) -> Self {
            // SAFETY: see impl note.
            unsafe {
                let e = _mm512_add_epi32(_mm512_cvtps_epi32(n.0), _mm512_set1_epi32(127));
                Self(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(e)))
            }
        }
        #[inline(always)]
        fn hsum(self) -> f32 {
            // SAFETY: see impl note.
            unsafe {
                let (lo, hi) = self.halves();
                let s = _mm256_add_ps(lo, hi);
                let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn hmax(self) -> f32 {
            // SAFETY: see impl note.
            unsafe {
                let (lo, hi) = self.halves();
                let s = _mm256_max_ps(lo, hi);
                let s = _mm_max_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
                let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }
}

/// Eight lanes in plain Rust, for CPUs without a dedicated path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable([f32; 8]);

impl Portable {
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        Self(self.0.map(f))
    }
    #[inline(always)]
    fn zip(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut r = self.0;
        for (a, b) in r.iter_mut().zip(o.0) {
            *a = f(*a, b);
        }
        Self(r)
    }
}

// SAFETY: plain Rust, valid on every CPU.
unsafe impl SimdF32 for Portable {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable floats.
        Self(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 8 writable floats.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        // SAFETY: the caller guarantees `p` is readable.
        Self([unsafe { *p }; 8])
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Self([v; 8])
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.zip(o, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.zip(o, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self.zip(o, |a, b| a * b)
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self.zip(o, |a, b| a / b)
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        let mut r = self.0;
        for i in 0..8 {
            r[i] = r[i] * b.0[i] + c.0[i];
        }
        Self(r)
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        self.zip(o, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        self.zip(o, |a, b| if a < b { a } else { b })
    }
    #[inline(always)]
    fn abs(self) -> Self {
        self.map(f32::abs)
    }
    #[inline(always)]
    fn round(self) -> Self {
        self.map(f32::round_ties_even)
    }
    #[inline(always)]
    fn select_lt(a: Self, b: Self, x: Self, y: Self) -> Self {
        let mut r = y.0;
        for i in 0..8 {
            if a.0[i] < b.0[i] {
                r[i] = x.0[i];
            }
        }
        Self(r)
    }
    #[inline(always)]
    fn exp2i(n: Self) -> Self {
        n.map(|v| f32::from_bits(((v as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    fn hsum(self) -> f32 {
        let v = self.0;
        ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
    }
    #[inline(always)]
    fn hmax(self) -> f32 {
        self.0.into_iter().fold(f32::NEG_INFINITY, f32::max)
    }
}

impl Lanes8 for Portable {
    #[inline(always)]
    fn transpose8(rows: [Self; 8]) -> [Self; 8] {
        std::array::from_fn(|j| Self(std::array::from_fn(|i| rows[i].0[j])))
    }
}

/// `p[0] + x * (p[1] + x * (...))`.
#[inline(always)]
fn horner<V: SimdF32>(x: V, p: &[f32]) -> V {
    let mut acc = V::splat(p[p.len() - 1]);
    for &c in p[..p.len() - 1].iter().rev() {
        acc = acc.mul_add(x, V::splat(c));
    }
    acc
}

/// `e^x`, within about 2 ulp for `x` in `[-87.3, 88]`; 0 below that range,
/// `e^88` above it.
#[inline(always)]
pub(crate) fn exp<V: SimdF32>(x: V) -> V {
    const LO: f32 = -87.3;
    let xc = x.max(V::splat(LO)).min(V::splat(88.0));
    let n = xc.mul(V::splat(std::f32::consts::LOG2_E)).round();
    // Cody-Waite reduction with ln 2 split in two (the high part is exact).
    let r = n.mul_add(V::splat(-0.693_359_375), xc);
    let r = n.mul_add(V::splat(2.121_944_4e-4), r);
    // Cephes' expf polynomial for e^r on [-ln2/2, ln2/2].
    const P: [f32; 6] = [
        5.000_000_1e-1,
        1.666_666_5e-1,
        4.166_579_6e-2,
        8.333_452e-3,
        1.399_82e-3,
        1.987_569_1e-4,
    ];
    let p = horner(r, &P);
    let y = p.mul_add(r.mul(r), r).add(V::splat(1.0));
    let y = y.mul(V::exp2i(n));
    V::select_lt(x, V::splat(LO), V::splat(0.0), y)
}

/// `1 + a1 z + ... + a6 z^6` with `erfc(z) ~ 1 / that^16` for `z >= 0`
/// (Abramowitz and Stegun 7.1.28: absolute error at most 3e-7).
const ERFC_POW16: [f32; 7] = [
    1.0,
    0.070_523_078_4,
    0.042_282_012_3,
    0.009_270_527_2,
    0.000_152_014_3,
    0.000_276_567_2,
    0.000_043_063_8,
];

/// GELU with the exact error function, `x/2 * (1 + erf(x/sqrt 2))`, to within
/// 1e-6 absolute everywhere.
///
/// With `z = |x|/sqrt 2` it is `max(x, 0) - |x|/2 * erfc(z)` for both signs
/// of `x`, and `erfc(z)` is one polynomial raised to the 16th power and
/// inverted: no exponential and no branch, a third of the work of splitting
/// the range.
#[inline(always)]
pub(crate) fn gelu_erf<V: SimdF32>(x: V) -> V {
    let ax = x.abs();
    let z = ax.mul(V::splat(std::f32::consts::FRAC_1_SQRT_2));
    let q = horner(z, &ERFC_POW16);
    let q2 = q.mul(q);
    let q4 = q2.mul(q2);
    let q8 = q4.mul(q4);
    let erfc = V::splat(1.0).div(q8.mul(q8));
    ax.mul(V::splat(-0.5)).mul_add(erfc, x.max(V::splat(0.0)))
}

/// `x / (1 + e^t)`, 0 once `e^t` passes `e^88` (where the quotient is
/// below `|x| * 6e-39` anyway).
#[inline(always)]
fn x_over_1p_exp<V: SimdF32>(x: V, t: V) -> V {
    let r = x.div(exp(t).add(V::splat(1.0)));
    V::select_lt(t, V::splat(88.0), r, V::splat(0.0))
}

/// `x * sigmoid(k x)` as `x / (1 + e^(-k x))`.
#[inline(always)]
fn x_sigmoid<V: SimdF32>(x: V, k: f32) -> V {
    x_over_1p_exp(x, x.mul(V::splat(-k)))
}

/// The tanh approximation of GELU, `x/2 (1 + tanh(u))`, computed as the
/// identical `x * sigmoid(2u)`.
#[inline(always)]
pub(crate) fn gelu_tanh<V: SimdF32>(x: V) -> V {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    let x2 = x.mul(x);
    let u = x.mul(V::splat(0.044_715 * C).mul_add(x2, V::splat(C)));
    x_over_1p_exp(x, u.mul(V::splat(-2.0)))
}

#[inline(always)]
pub(crate) fn silu<V: SimdF32>(x: V) -> V {
    x_sigmoid(x, 1.0)
}

#[inline(always)]
pub(crate) fn quick_gelu<V: SimdF32>(x: V) -> V {
    x_sigmoid(x, 1.702)
}

#[inline(always)]
pub(crate) fn relu<V: SimdF32>(x: V) -> V {
    x.max(V::splat(0.0))
}

/// `exp` over a slice on an explicit code path, for tests.
#[cfg(test)]
pub(crate) fn tests_exp(isa: crate::Isa, xs: &mut [f32]) {
    #[inline(always)]
    fn go<V: SimdF32>(xs: &mut [f32]) {
        for c in xs.chunks_exact_mut(V::LANES) {
            // SAFETY: `c` holds `LANES` floats.
            unsafe { exp(V::load(c.as_ptr())).store(c.as_mut_ptr()) }
        }
        for x in xs.chunks_exact_mut(V::LANES).into_remainder() {
            let mut b = [*x; MAX_LANES];
            // SAFETY: `b` holds at least `LANES` floats.
            unsafe { exp(V::load(b.as_ptr())).store(b.as_mut_ptr()) }
            *x = b[0];
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn go_avx2(xs: &mut [f32]) {
        go::<Avx2>(xs);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn go_avx512(xs: &mut [f32]) {
        go::<Avx512>(xs);
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only listed by `Isa::available` when the CPU has it.
        crate::Isa::Avx2Fma => unsafe { go_avx2(xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        crate::Isa::Avx512 => unsafe { go_avx512(xs) },
        _ => go::<Portable>(xs),
    }
}
