// Weight-streaming products for decoding: y[m, n] = x[m, :] . W[n, :] (* scale[n]) for the few rows m of a decoder
// step and a range of output rows n, so that threads can split one product by n inside a parallel region.
//
// A decoder step multiplies a few activation rows (batch x 2 with guidance) by every weight matrix, so its speed is
// how fast the weights stream from memory: each weight element is loaded once and used for all M rows. W is float32,
// bfloat16 (raw uint16) or int8 with a float32 scale per output row. Int8 weights on x86 CPUs with AVX2 or
// AVX512-VNNI and on 64-bit ARM multiply int16 activations (x quantized per row, `quantize_rows`) with vpmaddwd /
// vpdpwssd / smlal: exact integer sums, so all give the same numbers; elsewhere (SSE) int8 converts to float.
#pragma once
#include <algorithm>
#include "vector_math.h"

namespace zhiyin {

enum WeightType : int32_t { F32 = 0, BF16 = 1, I8 = 2 };

// A bias-free linear layer: weight [n, k] row-major (float32, bfloat16 or int8); scale [n] for int8, else null.
struct Linear {
    const void *weight;
    const float *scale;
    int64_t n, k;
    int32_t type, unused;
};

// The activation rows a product reads: x [m, k] float32, and for int8 weights (with VNNI) the same rows as
// int16 with a scale per row (xq [m, k], xscale [m]).
struct Rows {
    const float *x;
    const int16_t *xq;
    const float *xscale;
    int64_t m;
};

constexpr int MAX_ROWS = 8;
#if (defined(__AVX512VNNI__) && defined(__AVX512BW__)) || defined(__AVX2__) || defined(__aarch64__)
#define ZHIYIN_INT16 1
constexpr bool INT16_ACTIVATIONS = true;
#else
#define ZHIYIN_INT16 0
constexpr bool INT16_ACTIVATIONS = false;
#endif

inline bool needs_int16(const Linear &w) { return INT16_ACTIVATIONS && w.type == I8; }

// x [m, k] -> xq [m, k] int16, xscale [m]: x ~= xq * xscale. Each int32 lane of a product's accumulators sums k/16
// products of |w| <= 127 and |xq| <= limit, so limit keeps them from overflowing (32767 up to k = 8256).
inline void quantize_rows(const float *x, int64_t m, int64_t k, int16_t *xq, float *xscale) {
    const double lanes_sum = 127.0 * double((k + 15) / 16);
    const float limit = float(std::min(32767.0, std::floor(2147483647.0 / lanes_sum)));
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        vf32 top_lanes = {};
        int64_t j = 0;
        for (; j + LANES <= k; j += LANES) {
            vf32 v = load(row + j);
            v = select(v < splat(0.f), -v, v);
            top_lanes = select(v > top_lanes, v, top_lanes);
        }
        float top = 0.f;
        for (int i = 0; i < LANES; i++) top = std::max(top, top_lanes[i]);
        for (; j < k; j++) top = std::max(top, std::fabs(row[j]));
        const float scale = top > 0.f ? top / limit : 1.f, inverse = 1.f / scale;
        for (j = 0; j + LANES <= k; j += LANES) {
            vi16 h = __builtin_convertvector(product_to_int(load(row + j), inverse), vi16);
            std::memcpy(xq + r * k + j, &h, sizeof h);
        }
        for (; j < k; j++) xq[r * k + j] = int16_t(std::nearbyint(row[j] * inverse));
        xscale[r] = scale;
    }
}

inline void put(float *y, float v, bool add) { *y = add ? *y + v : v; }

// v rounded to a float here: the compiler may not fuse the product that made it with an add that follows. Left to
// itself GCC fused `y += sum * scale` for some rows of a block and not for others, so that a row's numbers
// depended on its place among the rows (BENCHMARKS.md, "zhiyin batch").
inline float rounded(float v) {
    volatile float kept = v;
    return kept;
}

// Weight rows n .. n+NB-1 against all M rows of x, NB x M accumulators in registers.
template <int M, int NB, typename W>
inline void float_block(const float *x, const W *w, const float *scale, int64_t K, int64_t n, float *y, int64_t ldy,
                        bool add) {
    vf32 acc[NB][M] = {};
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) {
        vf32 xv[M];
        for (int m = 0; m < M; m++) xv[m] = load(x + m * K + k);
        for (int b = 0; b < NB; b++) {
            vf32 wv = load(w + (n + b) * K + k);
            for (int m = 0; m < M; m++) acc[b][m] += wv * xv[m];
        }
    }
    for (int b = 0; b < NB; b++) {
        const W *row = w + (n + b) * K;
        const float s_n = scale ? scale[n + b] : 1.0f;
        for (int m = 0; m < M; m++) {
            float s = hsum(acc[b][m]);
            for (int64_t j = k; j < K; j++) s += one(row + j) * x[m * K + j];
            put(y + m * ldy + n + b, s * s_n, add);
        }
    }
}

template <int M, int NB, typename W>
void float_range(const float *x, const W *w, const float *scale, int64_t K, float *y, int64_t ldy, bool add,
                 int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + NB <= n1; n += NB) float_block<M, NB>(x, w, scale, K, n, y, ldy, add);
    for (; n < n1; n++) float_block<M, 1>(x, w, scale, K, n, y, ldy, add);
}

// Block sizes: for one or two activation rows, short weight rows (K < 2048) are read one at a time and long ones
// eight at a time; more rows are compute-bound and share each activation load among a few weight rows
// (BENCHMARKS.md, "Kernel block sizes").
template <typename W>
void float_matvec(const Rows &r, const W *w, const float *scale, int64_t K, float *y, int64_t ldy, bool add,
                  int64_t n0, int64_t n1) {
    const bool long_rows = K >= 2048;
    const float *x = r.x;
    switch (r.m) {
    case 1: return long_rows ? float_range<1, 8>(x, w, scale, K, y, ldy, add, n0, n1)
                             : float_range<1, 1>(x, w, scale, K, y, ldy, add, n0, n1);
    case 2: return long_rows ? float_range<2, 8>(x, w, scale, K, y, ldy, add, n0, n1)
                             : float_range<2, 1>(x, w, scale, K, y, ldy, add, n0, n1);
    case 3: return float_range<3, 4>(x, w, scale, K, y, ldy, add, n0, n1);
    case 4: return float_range<4, 4>(x, w, scale, K, y, ldy, add, n0, n1);
    case 5: return float_range<5, 3>(x, w, scale, K, y, ldy, add, n0, n1);
    case 6: return float_range<6, 3>(x, w, scale, K, y, ldy, add, n0, n1);
    case 7: return float_range<7, 3>(x, w, scale, K, y, ldy, add, n0, n1);
    default: return float_range<8, 3>(x, w, scale, K, y, ldy, add, n0, n1);
    }
}

#if ZHIYIN_INT16
// the columns k.. of a row that the vector loop leaves, exactly
inline int64_t int16_tail(const int8_t *row, const int16_t *x, int64_t k, int64_t K) {
    int64_t s = 0;
    for (; k < K; k++) s += int64_t(row[k]) * x[k];
    return s;
}
#endif

// int16_dots<NB, M>: weight rows row[0..NB) (K apart) against M rows of xq, NB x M accumulators in registers ->
// the exact integer sums, sums[b * M + m]. Each int32 lane sums k/16 products on every CPU (quantize_rows' bound).
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
inline int64_t reduce_exact(__m512i v) {  // 16 int32 lanes summed in int64
    __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
    return _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}

template <int NB, int M>
inline void int16_dots(const int16_t *xq, const int8_t *row, int64_t K, int64_t *sums) {
    __m512i acc[NB][M];
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++) acc[b][m] = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512i wv[NB];
        for (int b = 0; b < NB; b++) wv[b] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(row + b * K + k)));
        for (int m = 0; m < M; m++) {
            const __m512i xv = _mm512_loadu_si512(xq + m * K + k);
            for (int b = 0; b < NB; b++) acc[b][m] = _mm512_dpwssd_epi32(acc[b][m], wv[b], xv);
        }
    }
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++) sums[b * M + m] = reduce_exact(acc[b][m]) + int16_tail(row + b * K, xq + m * K, k, K);
}
#elif defined(__AVX2__)
inline int64_t reduce_exact(__m256i v) {  // 8 int32 lanes summed in int64
    __m256i s = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                 _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
    __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return _mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1);
}

// vpmaddwd: two accumulators per pair (even and odd 16 columns of each 32), so that each int32 lane sums k/16
// products, as one lane of vpdpwssd's does
template <int NB, int M>
inline void int16_dots(const int16_t *xq, const int8_t *row, int64_t K, int64_t *sums) {
    __m256i even[NB][M], odd[NB][M];
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++) even[b][m] = odd[b][m] = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i w0[NB], w1[NB];
        for (int b = 0; b < NB; b++) {
            w0[b] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + b * K + k)));
            w1[b] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + b * K + k + 16)));
        }
        for (int m = 0; m < M; m++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + m * K + k));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + m * K + k + 16));
            for (int b = 0; b < NB; b++) {
                even[b][m] = _mm256_add_epi32(even[b][m], _mm256_madd_epi16(w0[b], x0));
                odd[b][m] = _mm256_add_epi32(odd[b][m], _mm256_madd_epi16(w1[b], x1));
            }
        }
    }
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++)
            sums[b * M + m] = reduce_exact(even[b][m]) + reduce_exact(odd[b][m]) +
                              int16_tail(row + b * K, xq + m * K, k, K);
}
#elif defined(__aarch64__)
// NEON's widening multiply-adds (smlal, 4 int32 lanes): four accumulators per pair, one per 8 of each 32 columns,
// so that each lane sums k/16 products, as one lane of vpdpwssd's does
template <int NB, int M>
inline void int16_dots(const int16_t *xq, const int8_t *row, int64_t K, int64_t *sums) {
    int32x4_t acc[NB][4][M];
    for (int b = 0; b < NB; b++)
        for (int a = 0; a < 4; a++)
            for (int m = 0; m < M; m++) acc[b][a][m] = vdupq_n_s32(0);
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        for (int half = 0; half < 2; half++) {
            int16x8_t w0[NB], w1[NB];
            for (int b = 0; b < NB; b++) {
                const int8x16_t w = vld1q_s8(row + b * K + k + 16 * half);
                w0[b] = vmovl_s8(vget_low_s8(w)), w1[b] = vmovl_high_s8(w);
            }
            for (int m = 0; m < M; m++) {
                const int16_t *x = xq + m * K + k + 16 * half;
                const int16x8_t x0 = vld1q_s16(x), x1 = vld1q_s16(x + 8);
                for (int b = 0; b < NB; b++) {
                    int32x4_t &a0 = acc[b][2 * half][m], &a1 = acc[b][2 * half + 1][m];
                    a0 = vmlal_high_s16(vmlal_s16(a0, vget_low_s16(w0[b]), vget_low_s16(x0)), w0[b], x0);
                    a1 = vmlal_high_s16(vmlal_s16(a1, vget_low_s16(w1[b]), vget_low_s16(x1)), w1[b], x1);
                }
            }
        }
    }
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++) {
            int64_t s = int16_tail(row + b * K, xq + m * K, k, K);
            for (int a = 0; a < 4; a++) s += vaddlvq_s32(acc[b][a][m]);  // 4 int32 lanes summed in int64
            sums[b * M + m] = s;
        }
}
#endif

#if ZHIYIN_INT16
// Block sizes of int8 products (BENCHMARKS.md, "Kernel block sizes"). Up to STREAMED_ROWS activation rows the
// product is bandwidth-bound: one weight row at a time against all of them. More rows are compute-bound: the
// weights go by in chunks of 32 rows, read from memory once, and the activation rows pass over each chunk (still in
// cache) PASS_ROWS at a time, PASS_WEIGHT_ROWS weight rows at a time (registers: NB x M accumulators).
constexpr int STREAMED_ROWS = 5;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && !defined(__znver4__)
constexpr int PASS_ROWS = 8, PASS_WEIGHT_ROWS = 2;
#else
constexpr int PASS_ROWS = 4, PASS_WEIGHT_ROWS = 1;
#endif

// Weight rows [n0, n1) against M rows of x, NB weight rows at a time: exact integer sums, scaled
template <int NB, int M>
void int16_range(const int16_t *xq, const float *xscale, const int8_t *w, const float *scale, int64_t K, float *y,
                 int64_t ldy, bool add, int64_t n0, int64_t n1) {
    int64_t n = n0, sums[NB * M];
    for (; n + NB <= n1; n += NB) {
        int16_dots<NB, M>(xq, w + n * K, K, sums);
        for (int b = 0; b < NB; b++)
            for (int m = 0; m < M; m++) {
                float *out = y + m * ldy + n + b;
                const float value = rounded(float(sums[b * M + m]) * (scale[n + b] * xscale[m]));
                *out = add ? *out + value : value;
            }
    }
    if (NB > 1 && n < n1) int16_range<1, M>(xq, xscale, w, scale, K, y, ldy, add, n, n1);
}

// m <= 8 activation rows against weight rows [n0, n1), NB weight rows at a time
template <int NB>
void int16_rows(const int16_t *x, const float *xs, int64_t m, const int8_t *w, const float *scale, int64_t K,
                float *y, int64_t ldy, bool add, int64_t n0, int64_t n1) {
    switch (m) {
    case 1: return int16_range<NB, 1>(x, xs, w, scale, K, y, ldy, add, n0, n1);
    case 2: return int16_range<NB, 2>(x, xs, w, scale, K, y, ldy, add, n0, n1);
    case 3: return int16_range<NB, 3>(x, xs, w, scale, K, y, ldy, add, n0, n1);
    case 4: return int16_range<NB, 4>(x, xs, w, scale, K, y, ldy, add, n0, n1);
    case 5: return int16_range<NB, 5>(x, xs, w, scale, K, y, ldy, add, n0, n1);
    case 6: return int16_range<NB, 6>(x, xs, w, scale, K, y, ldy, add, n0, n1);
    case 7: return int16_range<NB, 7>(x, xs, w, scale, K, y, ldy, add, n0, n1);
    default: return int16_range<NB, 8>(x, xs, w, scale, K, y, ldy, add, n0, n1);
    }
}

// Any number of activation rows. Every output is the same exact sum, scaled the same way, whatever the blocking:
// a row's numbers do not depend on how many rows are beside it.
inline void int16_matvec(const Rows &r, const int8_t *w, const float *scale, int64_t K, float *y, int64_t ldy,
                         bool add, int64_t n0, int64_t n1) {
    if (r.m <= STREAMED_ROWS) return int16_rows<1>(r.xq, r.xscale, r.m, w, scale, K, y, ldy, add, n0, n1);
    for (int64_t c0 = n0; c0 < n1; c0 += 32) {
        const int64_t c1 = std::min(n1, c0 + 32);
        for (int64_t i = 0; i < r.m; i += PASS_ROWS)
            int16_rows<PASS_WEIGHT_ROWS>(r.xq + i * K, r.xscale + i, std::min<int64_t>(PASS_ROWS, r.m - i), w, scale,
                                         K, y + i * ldy, ldy, add, c0, c1);
    }
}
#endif

// y[m * ldy + n] (+)= rows . W[n] for n in [n0, n1), any number of rows (float weights MAX_ROWS at a time)
inline void matvec(const Linear &w, const Rows &r, float *y, int64_t ldy, bool add, int64_t n0, int64_t n1) {
#if ZHIYIN_INT16
    if (w.type == I8) return int16_matvec(r, (const int8_t *)w.weight, w.scale, w.k, y, ldy, add, n0, n1);
#endif
    for (int64_t i = 0; i < r.m; i += MAX_ROWS) {
        const Rows block{r.x + i * w.k, nullptr, nullptr, std::min<int64_t>(MAX_ROWS, r.m - i)};
        float *out = y + i * ldy;
        switch (w.type) {
        case F32: float_matvec(block, (const float *)w.weight, nullptr, w.k, out, ldy, add, n0, n1); break;
        case BF16: float_matvec(block, (const uint16_t *)w.weight, nullptr, w.k, out, ldy, add, n0, n1); break;
        default: float_matvec(block, (const int8_t *)w.weight, w.scale, w.k, out, ldy, add, n0, n1);
        }
    }
}

// This thread's share [n0, n1) of n output rows, in blocks of 8 so that the kernels' row blocks stay whole
inline void share(int64_t n, int thread, int threads, int64_t &n0, int64_t &n1) {
    const int64_t blocks = (n + 7) / 8;
    n0 = std::min(n, blocks * thread / threads * 8);
    n1 = std::min(n, blocks * (thread + 1) / threads * 8);
}

}  // namespace zhiyin
