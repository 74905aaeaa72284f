// 16-lane float vectors (GCC vector extensions; AVX-512 intrinsics where they help) and the few functions the
// decoder step needs on them: loads from float32 / bfloat16 / int8, horizontal sum, exp, GELU, bfloat16 rounding.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace zhiyin {

constexpr int LANES = 16;
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef int8_t i8x16 __attribute__((vector_size(16)));

inline f32x16 splat(float v) { return f32x16{} + v; }
inline f32x16 load(const float *p) { f32x16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float *p, f32x16 v) { std::memcpy(p, &v, sizeof v); }

#if defined(__AVX512F__)
inline f32x16 load(const uint16_t *p) {  // bfloat16: the top half of a float32
    __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
    return (f32x16)_mm512_castsi512_ps(w);
}
inline f32x16 load(const int8_t *p) {
    return (f32x16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
inline float hsum(f32x16 v) { return _mm512_reduce_add_ps((__m512)v); }
#else
inline f32x16 load(const uint16_t *p) {
    u16x16 h; std::memcpy(&h, p, sizeof h);
    u32x16 w = __builtin_convertvector(h, u32x16) << 16;
    f32x16 v; std::memcpy(&v, &w, sizeof v); return v;
}
inline f32x16 load(const int8_t *p) {
    i8x16 q; std::memcpy(&q, p, sizeof q);
    return __builtin_convertvector(__builtin_convertvector(q, i32x16), f32x16);
}
inline float hsum(f32x16 v) {
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

inline f32x16 select(i32x16 mask, f32x16 a, f32x16 b) { return mask ? a : b; }

// to the nearest integer, ties to even (|x| < 2^22): adding 1.5 * 2^23 leaves no fraction bits
inline f32x16 round_even(f32x16 x) {
    const f32x16 magic = splat(12582912.f);
    return (x + magic) - magic;
}

// e^x, Cephes' single-precision polynomial (about 1 ulp); inputs below -87.3 give ~1e-38, not 0
inline f32x16 exp(f32x16 x) {
    x = select(x < splat(-87.3f), splat(-87.3f), x);
    x = select(x > splat(88.3f), splat(88.3f), x);
    f32x16 n = round_even(x * 1.44269504088896341f);
    f32x16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    f32x16 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    i32x16 e = (__builtin_convertvector(n, i32x16) + 127) << 23;
    return p * (f32x16)e;
}

// GELU with the exact erf: x/2 (1 + erf(x / sqrt 2)), erfc from Numerical Recipes (relative error < 1.2e-7)
inline f32x16 gelu(f32x16 x) {
    f32x16 z = select(x < splat(0.f), -x, x) * 0.70710678118654752f;
    f32x16 t = 1.f / (1.f + 0.5f * z);
    f32x16 p = splat(0.17087277f);
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    f32x16 erfc = t * exp(p - z * z);
    return 0.5f * x * select(x < splat(0.f), erfc, 2.f - erfc);
}

}  // namespace zhiyin
