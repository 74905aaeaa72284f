// Float vectors of the machine's width (GCC vector extensions; AVX-512 intrinsics where they help) and the few
// functions the kernels need on them: loads from float32 / bfloat16 / int8, horizontal sum, exp, GELU, sigmoid, tanh,
// bfloat16 rounding. The width follows the target: GCC keeps a vector wider than the registers in memory rather than
// in registers (BENCHMARKS.md, "Other CPUs", has what that cost).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace zhiyin {

#if defined(__AVX512F__)
constexpr int LANES = 16;
#elif defined(__AVX__)
constexpr int LANES = 8;
#else
constexpr int LANES = 4;  // SSE2, NEON
#endif
typedef float vf32 __attribute__((vector_size(4 * LANES)));  // LANES floats
typedef int32_t vi32 __attribute__((vector_size(4 * LANES)));
typedef uint32_t vu32 __attribute__((vector_size(4 * LANES)));
typedef int16_t vi16 __attribute__((vector_size(2 * LANES)));
typedef uint16_t vu16 __attribute__((vector_size(2 * LANES)));
typedef int8_t vi8 __attribute__((vector_size(LANES)));

inline vf32 splat(float v) { return vf32{} + v; }
inline vf32 load(const float *p) { vf32 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float *p, vf32 v) { std::memcpy(p, &v, sizeof v); }

// a * b + c, rounded once where the CPU has fused multiply-adds. Written out wherever a kernel's numbers must not
// depend on how the compiler built it: left to itself GCC may fuse a product with the add after it in one
// instantiation of a kernel and not in another, and a row's sums would depend on the rows beside it.
inline vf32 multiply_add(vf32 a, vf32 b, vf32 c) {
#if defined(__AVX512F__)
    return (vf32)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
    return (vf32)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(__aarch64__)
    return (vf32)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
#else
    return a * b + c;  // (no fused multiply-add to fuse into)
#endif
}
inline float multiply_add(float a, float b, float c) {
#if defined(__FMA__) || defined(__aarch64__)
    return __builtin_fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

#if defined(__AVX512F__)
inline vf32 load(const uint16_t *p) {  // bfloat16: the top half of a float32
    __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
    return (vf32)_mm512_castsi512_ps(w);
}
inline vf32 load(const int8_t *p) {
    return (vf32)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
inline float hsum(vf32 v) { return _mm512_reduce_add_ps((__m512)v); }
#elif defined(__AVX2__)  // (GCC's own int8/uint16 widening of 8-lane vectors goes through scalar registers)
inline vf32 load(const uint16_t *p) {
    __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
    return (vf32)_mm256_castsi256_ps(w);
}
inline vf32 load(const int8_t *p) {
    return (vf32)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
inline float hsum(vf32 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#else
inline vf32 load(const uint16_t *p) {
    vu16 h; std::memcpy(&h, p, sizeof h);
    vu32 w = __builtin_convertvector(h, vu32) << 16;
    vf32 v; std::memcpy(&v, &w, sizeof v); return v;
}
inline vf32 load(const int8_t *p) {
    vi8 q; std::memcpy(&q, p, sizeof q);
    return __builtin_convertvector(__builtin_convertvector(q, vi32), vf32);
}
inline float hsum(vf32 v) {
    float s = 0.f;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}
#endif

inline float one(const float *p) { return *p; }
inline float one(const uint16_t *p) { uint32_t b = uint32_t(*p) << 16; float f; std::memcpy(&f, &b, 4); return f; }
inline float one(const int8_t *p) { return float(*p); }

// float32 -> bfloat16 rounding to nearest even, as torch's .to(torch.bfloat16) does
inline uint16_t to_bf16(float f) {
    uint32_t b; std::memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40);  // NaN stays NaN
    return uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

inline vf32 select(vi32 mask, vf32 a, vf32 b) { return mask ? a : b; }

// to the nearest integer, ties to even (|x| < 2^22): adding 1.5 * 2^23 leaves no fraction bits
inline vf32 round_even(vf32 x) {
    const vf32 magic = splat(12582912.f);
    return (x + magic) - magic;
}

// x * y rounded to float, then to the nearest integer (ties to even), exactly as the scalar
// std::nearbyint(x * y) does: the rounding instructions, not round_even, which the compiler may fuse with the product
inline vi32 product_to_int(vf32 x, float y) {
#if defined(__AVX512F__)
    return (vi32)_mm512_cvtps_epi32((__m512)(x * y));
#elif defined(__AVX2__)
    return (vi32)_mm256_cvtps_epi32((__m256)(x * y));
#elif defined(__aarch64__)
    return (vi32)vcvtnq_s32_f32((float32x4_t)(x * y));
#else
    return __builtin_convertvector(round_even(x * y), vi32);  // no fused multiply-add on these targets
#endif
}

// e^x, Cephes' single-precision polynomial (about 1 ulp); inputs below -87.3 give ~1e-38, not 0
inline vf32 exp(vf32 x) {
    x = select(x < splat(-87.3f), splat(-87.3f), x);
    x = select(x > splat(88.3f), splat(88.3f), x);
    vf32 n = round_even(x * 1.44269504088896341f);
    vf32 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf32 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    vi32 e = (__builtin_convertvector(n, vi32) + 127) << 23;
    return p * (vf32)e;
}

// the logistic function 1 / (1 + e^-x), from exp (a few ulp)
inline vf32 sigmoid(vf32 x) { return 1.f / (1.f + exp(-x)); }

// tanh: Cephes' single-precision odd polynomial below |x| = 0.625, 1 - 2 / (e^2|x| + 1) with x's sign above (a few ulp)
inline vf32 tanh(vf32 x) {
    const vf32 a = select(x < splat(0.f), -x, x), z = x * x;
    vf32 p = splat(-5.70498872745e-3f);
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const vf32 large = 1.f - 2.f / (exp(2.f * a) + 1.f);
    return select(a < splat(0.625f), x + x * z * p, select(x < splat(0.f), -large, large));
}

// GELU with the exact erf: x/2 (1 + erf(x / sqrt 2)), erfc from Numerical Recipes (relative error < 1.2e-7)
inline vf32 gelu(vf32 x) {
    vf32 z = select(x < splat(0.f), -x, x) * 0.70710678118654752f;
    vf32 t = 1.f / (1.f + 0.5f * z);
    vf32 p = splat(0.17087277f);
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    vf32 erfc = t * exp(p - z * z);
    return 0.5f * x * select(x < splat(0.f), erfc, 2.f - erfc);
}

}  // namespace zhiyin
