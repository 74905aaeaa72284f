// Weight-streaming products for decoding: y[m, n] = x[m, :] . W[n, :] (* scale[n]) for the few rows m of a decoder
// step and a range of output rows n, so that threads can split one product by n inside a parallel region.
//
// A decoder step multiplies a few activation rows (batch x 2 with guidance) by every weight matrix, so its speed is
// how fast the weights stream from memory: each weight element is loaded once and used for all M rows. W is float32,
// bfloat16 (raw uint16), int8 with a float32 scale per output row, or int4 with a float32 scale per output row and
// an int8 scale per group of 32 columns. Int8 weights on x86 CPUs with AVX2 or AVX512-VNNI and on 64-bit ARM
// multiply int16 activations (x quantized per row, `quantize_rows`) with vpmaddwd / vpdpwssd / smlal; int4 weights
// multiply int8 activations (`quantize_bytes`) with vpdpbusd / vpmaddubsw / sdot (ARMv8.2's dot product) or smlal:
// exact integer sums, so all give the same numbers. Elsewhere (SSE) int8 converts to float, and int4 sums exactly in
// plain C++ (the same numbers again, slowly).
#pragma once
#include <algorithm>
#include <vector>
#include "vector_math.h"

namespace zhiyin {

enum WeightType : int32_t { F32 = 0, BF16 = 1, I8 = 2, I4 = 3 };

// A bias-free linear layer: weight [n, k] row-major (float32, bfloat16 or int8); scale [n] for int8 and int4, else
// null. int4 (modules/quantization.py's quantize_int4 and int4_blocks): weight (row, j) = scale[row] x group scale
// (-63..63) of its 32 columns x value (-8..7). kp = k rounded up to 32 (the padding holds zeros); the rows go in
// blocks of 16 (the last one R <= 16 rows), each block 16 x kp / 2 bytes (R x kp / 2): group by group (32 columns),
// four runs t = 0..3 of R x 4 bytes, row j's 4 bytes holding columns 8t..8t+3 of the group in their low nibbles and
// 8t+4..8t+7 in their high ones, as value + 8; then the block's group scales in groups, group by group, R each.
// tiles: int8 weights also as AMX tiles (amx_int8_range), or null.
struct Linear {
    const void *weight;
    const float *scale;
    const int8_t *groups;
    int64_t n, k;
    int32_t type, unused;
    const int8_t *tiles;
};

constexpr int INT4_GROUP = 32, INT4_ROWS = 16;

// The columns int4 weights and their int8 activation rows are stored with: k rounded up to whole groups
inline int64_t int4_columns(int64_t k) { return (k + INT4_GROUP - 1) / INT4_GROUP * INT4_GROUP; }

// The activation rows a product reads: x [m, k] float32, and for int8 weights (with VNNI) the same rows as
// int16 with a scale per row (xq [m, k], xscale [m]); for int4 weights as int8 (xb [m, kp], kp = k rounded up to
// 32, the padding zeros; xscale [m]) with each group's offsets (xb_offsets [m, kp / 32], `offset_halves`).
struct Rows {
    const float *x;
    const int16_t *xq;
    const float *xscale;
    int64_t m;
    const int8_t *xb;
    const int32_t *xb_offsets;
};

constexpr int MAX_ROWS = 8;

// Weight rows are read from memory as they are multiplied: the loops ask for the bytes PREFETCH_BYTES ahead of the
// ones they read, so that the next ones are on their way while these are multiplied (the hardware's prefetcher alone
// left the integer products a quarter slower: BENCHMARKS.md, "int4, and every mode per CPU level"). Into the L2 cache
// (locality 2), not L1: a core has few L1 misses in flight, and 4 KB of requests held there capped one core's stream
// at ~15 GB/s on Zen 4 (BENCHMARKS.md, "Huge pages and prefetching into L2"). 8 KB ahead rather than 4: where memory
// answers at ~50 GB/s, 4 KB in flight held the bfloat16 and int4 products to ~40 and ~38 GB/s (8 KB: ~50, ~45), and
// where it answers at ~30 both keep up (BENCHMARKS.md, "Two memory speeds"). Built for AVX-512, 6 KB: on Zen 4 the
// int4 products ran ~5 % faster than at 8 KB where memory answered at ~30 GB/s and ~3 % where at ~45, and the fused
// step 2-4 % (int4, int8, float32; bfloat16 the same), where AVX2's builds were as fast or faster at 8 KB
// (BENCHMARKS.md, "Weights asked for 6 KB ahead").
#if defined(__AVX512F__)
constexpr int PREFETCH_BYTES = 6144;
#else
constexpr int PREFETCH_BYTES = 8192;
#endif
inline void prefetch(const void *p) { __builtin_prefetch(static_cast<const char *>(p) + PREFETCH_BYTES, 0, 2); }
#if (defined(__AVX512VNNI__) && defined(__AVX512BW__)) || defined(__AVX2__) || defined(__aarch64__)
#define ZHIYIN_INT16 1
constexpr bool INT16_ACTIVATIONS = true;
#else
#define ZHIYIN_INT16 0
constexpr bool INT16_ACTIVATIONS = false;
#endif

// What activations a product with w takes: the float rows, int16 (int8 weights, where vectors multiply integers)
// or int8 (int4 weights, always: there is no float path for them)
enum ActivationType { FLOAT_ROWS, INT16_ROWS, INT8_ROWS };
inline ActivationType activations(const Linear &w) {
    return w.type == I4 ? INT8_ROWS : INT16_ACTIVATIONS && w.type == I8 ? INT16_ROWS : FLOAT_ROWS;
}

inline float largest_magnitude(const float *row, int64_t k) {
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
    return top;
}

// x [m, k] -> xq [m, k] int16, xscale [m]: x ~= xq * xscale. Each int32 lane of an int8 product's accumulators sums
// k/16 products of |w| <= 127 and |xq| <= limit, so limit keeps them from overflowing (32767 up to k = 8256).
inline void quantize_rows(const float *x, int64_t m, int64_t k, int16_t *xq, float *xscale) {
    const double lanes_sum = 127.0 * double((k + 15) / 16);
    const float limit = float(std::min(32767.0, std::floor(2147483647.0 / lanes_sum)));
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        const float top = largest_magnitude(row, k);
        const float scale = top > 0.f ? top / limit : 1.f, inverse = 1.f / scale;
        int64_t j = 0;
        for (; j + LANES <= k; j += LANES) {
            vi16 h = __builtin_convertvector(product_to_int(load(row + j), inverse), vi16);
            std::memcpy(xq + r * k + j, &h, sizeof h);
        }
        for (; j < k; j++) xq[r * k + j] = int16_t(std::nearbyint(row[j] * inverse));
        xscale[r] = scale;
    }
}

// What int4's value + 8 adds to a group's sum, 8 x the sum of its 32 columns of xb, as one int32 of two int16
// halves: the low one -8 x the columns 4i and 4i + 1 (i = 0..7), the high one -8 x the columns 4i + 2 and 4i + 3,
// the columns each int16 lane of AVX2's vpmaddubsw sums (each half at most 8 x 16 x 127 in magnitude)
inline int32_t offset_halves(const int8_t *group) {
    int32_t low = 0, high = 0;
    for (int c = 0; c < INT4_GROUP; c++) (c % 4 < 2 ? low : high) += group[c];
    return int32_t(uint32_t(uint16_t(-8 * low)) | uint32_t(uint16_t(-8 * high)) << 16);
}
// 8 x the group's sum of xb, from its offset_halves
inline int32_t whole_offset(int32_t offsets) { return -(int32_t(int16_t(offsets)) + int32_t(int16_t(offsets >> 16))); }

// x [m, k] -> xb [m, kp] int8 (-127..127; kp = k rounded up to 32, the padding zeros), xscale [m], and offsets
// [m, kp / 32]: each group's offset_halves
inline void quantize_bytes(const float *x, int64_t m, int64_t k, int8_t *xb, int32_t *offsets, float *xscale) {
    const int64_t kp = int4_columns(k);
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        int8_t *out = xb + r * kp;
        const float top = largest_magnitude(row, k);
        const float scale = top > 0.f ? top / 127.f : 1.f, inverse = 1.f / scale;
        int64_t j = 0;
        for (; j + LANES <= k; j += LANES) {
            vi32 v = product_to_int(load(row + j), inverse);
            v = v > 127 ? 127 : v;
            v = v < -127 ? -127 : v;
            vi8 b = __builtin_convertvector(v, vi8);
            std::memcpy(out + j, &b, sizeof b);
        }
        for (; j < k; j++) out[j] = int8_t(std::clamp(std::nearbyint(row[j] * inverse), -127.f, 127.f));
        for (; j < kp; j++) out[j] = 0;
        for (int64_t g = 0; g < kp / INT4_GROUP; g++)
            offsets[r * (kp / INT4_GROUP) + g] = offset_halves(out + g * INT4_GROUP);
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
            prefetch(w + (n + b) * K + k);
            vf32 wv = load(w + (n + b) * K + k);
            for (int m = 0; m < M; m++) acc[b][m] = multiply_add(wv, xv[m], acc[b][m]);
        }
    }
    for (int b = 0; b < NB; b++) {
        const W *row = w + (n + b) * K;
        const float s_n = scale ? scale[n + b] : 1.0f;
        for (int m = 0; m < M; m++) {
            float s = hsum(acc[b][m]);
            for (int64_t j = k; j < K; j++) s = multiply_add(one(row + j), x[m * K + j], s);
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

// Each 64 columns go to two accumulators per pair (the first and the second 32) where registers allow: two
// dependency chains of vpdpwssd instead of one (BENCHMARKS.md, "Kernel block sizes")
template <int NB, int M>
constexpr int chains() { return NB * M <= 8 ? 2 : 1; }

template <int NB, int M>
inline void int16_dots(const int16_t *xq, const int8_t *row, int64_t K, int64_t *sums) {
    constexpr int C = chains<NB, M>();
    __m512i acc[C][NB][M];
    for (int c = 0; c < C; c++)
        for (int b = 0; b < NB; b++)
            for (int m = 0; m < M; m++) acc[c][b][m] = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        __m512i w0[NB], w1[NB];
        for (int b = 0; b < NB; b++) {
            prefetch(row + b * K + k);
            w0[b] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(row + b * K + k)));
            w1[b] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(row + b * K + k + 32)));
        }
        for (int m = 0; m < M; m++) {
            const __m512i x0 = _mm512_loadu_si512(xq + m * K + k), x1 = _mm512_loadu_si512(xq + m * K + k + 32);
            for (int b = 0; b < NB; b++) {
                acc[0][b][m] = _mm512_dpwssd_epi32(acc[0][b][m], w0[b], x0);
                acc[C - 1][b][m] = _mm512_dpwssd_epi32(acc[C - 1][b][m], w1[b], x1);
            }
        }
    }
    for (; k + 32 <= K; k += 32)
        for (int b = 0; b < NB; b++) {
            const __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(row + b * K + k)));
            for (int m = 0; m < M; m++)
                acc[0][b][m] = _mm512_dpwssd_epi32(acc[0][b][m], wv, _mm512_loadu_si512(xq + m * K + k));
        }
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++) {
            int64_t sum = int16_tail(row + b * K, xq + m * K, k, K);
            for (int c = 0; c < C; c++) sum += reduce_exact(acc[c][b][m]);
            sums[b * M + m] = sum;
        }
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
            prefetch(row + b * K + k);
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
                prefetch(row + b * K + k + 16 * half);
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

// int4 weights against int8 activations (x quantized per row to -127..127, `quantize_bytes`), 16 weight rows at a
// time: the exact integer sums sum_g group_scale[n, g] * sum_{k in g} value[n, k] * xb[k]. Each weight's byte
// holds value + 8 (0..15, unsigned), so a product first sums (value + 8) * xb and then takes back 8 x the group's
// sum of xb (`Rows::xb_offsets`). The layout (Linear's) puts 16 rows side by side, 4 columns each, so that one
// 64-byte load is what AVX512-VNNI's vpdpbusd multiplies (unsigned bytes by a signed 4-byte activation broadcast
// to every row): 64 products an instruction, the rows in the lanes, no horizontal sums. A group's sum over
// 32 columns is at most 32 x 8 x 127 in magnitude (fits int16), times its scale at most 2^21: 1024 groups (32768
// columns, quantize_int4's limit) stay within int32. Every CPU computes these exact sums: the same numbers.

// int4_block<M>: one block of R <= 16 weight rows (bytes, group scales) against M rows of xb (kp apart, their
// offsets G apart) -> sums[m * 16 + j]; the plain C++ for any R, and for blocks of 16 on the vector units below
inline void int4_block_plain(const int8_t *xb, const int32_t *offsets, int64_t kp, const uint8_t *bytes,
                             const int8_t *scales, int R, int M, int32_t *sums) {
    const int64_t G = kp / INT4_GROUP;
    for (int j = 0; j < R; j++)
        for (int m = 0; m < M; m++) {
            int64_t sum = 0;
            for (int64_t g = 0; g < G; g++) {
                const int8_t *x = xb + m * kp + g * INT4_GROUP;
                int64_t group = -whole_offset(offsets[m * G + g]);
                for (int t = 0; t < 4; t++)
                    for (int i = 0; i < 4; i++) {
                        const uint8_t byte = bytes[(g * 4 + t) * 4 * R + 4 * j + i];
                        group += (byte & 15) * x[8 * t + i] + (byte >> 4) * x[8 * t + 4 + i];
                    }
                sum += group * scales[g * R + j];
            }
            sums[m * INT4_ROWS + j] = int32_t(sum);
        }
}

inline int32_t four_bytes(const int8_t *p) {  // 4 activation bytes as one int32, to broadcast
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define ZHIYIN_INT4_BLOCKS 1
constexpr int INT4_PASS_ROWS = 8;
template <int M>
inline void int4_block(const int8_t *xb, const int32_t *offsets, int64_t kp, const uint8_t *bytes,
                       const int8_t *scales, int32_t *sums) {
    const int64_t G = kp / INT4_GROUP;
    const __m512i nibble = _mm512_set1_epi8(15), high_nibble = _mm512_set1_epi8(char(0xf0));
    __m512i acc[M];
    for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_si512();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *p = bytes + g * 256;
        __m512i low[4], high[4];
        for (int t = 0; t < 4; t++) {
            prefetch(p + 64 * t);
            const __m512i v = _mm512_loadu_si512(p + 64 * t);
            low[t] = _mm512_and_si512(v, nibble), high[t] = _mm512_and_si512(v, high_nibble);  // 16 x the nibble
        }
        const __m512i scale = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(scales + g * 16)));
        for (int m = 0; m < M; m++) {
            const int8_t *x = xb + m * kp + g * INT4_GROUP;
            __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
            for (int t = 0; t < 4; t++) {
                a = _mm512_dpbusd_epi32(a, low[t], _mm512_set1_epi32(four_bytes(x + 8 * t)));
                b = _mm512_dpbusd_epi32(b, high[t], _mm512_set1_epi32(four_bytes(x + 8 * t + 4)));
            }
            const __m512i group = _mm512_sub_epi32(_mm512_add_epi32(a, _mm512_srai_epi32(b, 4)),  // b: 16 x its sums
                                                   _mm512_set1_epi32(whole_offset(offsets[m * G + g])));
            acc[m] = _mm512_add_epi32(acc[m], _mm512_mullo_epi32(group, scale));
        }
    }
    for (int m = 0; m < M; m++) _mm512_storeu_si512(sums + m * INT4_ROWS, acc[m]);
}
#elif defined(__AVX2__)
// vpmaddubsw: pairs of (value + 8) * xb summed into int16 (at most 2 x 15 x 127), eight of them added per group to the
// group's offset halves (`offset_halves`), so that each int16 lane ends at its 16 columns' sum of value * xb (at most
// 16 x 8 x 127 in magnitude: exact, whatever the additions wrapped through on the way); then vpmaddwd multiplies both
// halves of a lane by the row's group scale and adds them into int32. Each 64-byte run as two halves of 8 rows, the
// runs one at a time and two activation rows a pass, so that every sum stays in one of AVX2's 16 registers.
#define ZHIYIN_INT4_BLOCKS 1
constexpr int INT4_PASS_ROWS = 2;
// v held in a register at this point: left to itself GCC reorders the block's chains of integer adds into trees
// whose partial sums no longer fit in AVX2's 16 registers (~60 of them went through the stack in every group, and
// the products ran at half the speed from cache: BENCHMARKS.md, "Attention's reads")
inline void in_register(__m256i &v) { asm("" : "+x"(v)); }
template <int M>
inline void int4_block(const int8_t *xb, const int32_t *offsets, int64_t kp, const uint8_t *bytes,
                       const int8_t *scales, int32_t *sums) {
    const int64_t G = kp / INT4_GROUP;
    const __m256i nibble = _mm256_set1_epi8(15);
    const __m128i doubled = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    __m256i acc[2][M];
    for (int h = 0; h < 2; h++)
        for (int m = 0; m < M; m++) acc[h][m] = _mm256_setzero_si256();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *p = bytes + g * 256;
        __m256i lanes[2][M];
        for (int m = 0; m < M; m++) lanes[0][m] = lanes[1][m] = _mm256_set1_epi32(offsets[m * G + g]);
        for (int t = 0; t < 4; t++) {
            prefetch(p + 64 * t);
            __m256i low[2], high[2];
            for (int h = 0; h < 2; h++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 64 * t + 32 * h));
                low[h] = _mm256_and_si256(v, nibble), high[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
            }
            for (int m = 0; m < M; m++) {
                const int8_t *x = xb + m * kp + g * INT4_GROUP + 8 * t;
                const __m256i first = _mm256_set1_epi32(four_bytes(x)), second = _mm256_set1_epi32(four_bytes(x + 4));
                for (int h = 0; h < 2; h++) {
                    lanes[h][m] = _mm256_add_epi16(lanes[h][m], _mm256_maddubs_epi16(low[h], first));
                    lanes[h][m] = _mm256_add_epi16(lanes[h][m], _mm256_maddubs_epi16(high[h], second));
                    in_register(lanes[h][m]);
                }
            }
        }
        for (int h = 0; h < 2; h++) {
            int64_t eight_scales;  // rows 8h..8h+7, each as two int16 (both halves of its lane)
            std::memcpy(&eight_scales, scales + g * 16 + 8 * h, 8);
            const __m256i scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(_mm_cvtsi64_si128(eight_scales), doubled));
            for (int m = 0; m < M; m++) acc[h][m] = _mm256_add_epi32(acc[h][m], _mm256_madd_epi16(lanes[h][m], scale));
        }
    }
    for (int h = 0; h < 2; h++)
        for (int m = 0; m < M; m++) _mm256_storeu_si256((__m256i *)(sums + m * INT4_ROWS + 8 * h), acc[h][m]);
}
#elif defined(__aarch64__)
// NEON: each quarter of a 64-byte run (4 rows, 4 bytes each) against the group's activation bytes, two activation
// rows a pass. A group's sums start at minus its offset and go to the row sums times the group scale.
#define ZHIYIN_INT4_BLOCKS 1
constexpr int INT4_PASS_ROWS = 2;
#if defined(__ARM_FEATURE_DOTPROD)
// ARMv8.2's dot product (Apple M1 and later, Neoverse, Cortex-A76 and later): sdot by element, a quarter against 4
// activation bytes taken from a lane of the group's 32, 4 products into each row's int32 lane, as vpdpbusd reads the
// layout (value + 8 is 0..15: the same as a signed byte). 64 sdot a group for 2 rows, run by run.
template <int LANE>  // low nibbles by the activations' lane LANE, high ones by lane LANE + 1
inline int32x4_t dot_lanes(int32x4_t sum, int8x16_t low, int8x16_t high, int8x16_t x) {
    return vdotq_laneq_s32(vdotq_laneq_s32(sum, low, x, LANE), high, x, LANE + 1);
}
// group[q][m] += quarter q of the group at p against the M activation rows' bytes of the group (x, kp apart)
template <int M>
inline void add_group(const uint8_t *p, const int8_t *x, int64_t kp, int32x4_t (&group)[4][M]) {
    const uint8x16_t nibble = vdupq_n_u8(15);
    int8x16_t bytes[M][2];  // columns 4i..4i+3 in lane i % 4 of bytes[m][i / 4]
    for (int m = 0; m < M; m++) bytes[m][0] = vld1q_s8(x + m * kp), bytes[m][1] = vld1q_s8(x + m * kp + 16);
    for (int t = 0; t < 4; t++) {  // run t: columns 8t..8t+3 (low nibbles) and 8t+4..8t+7 (high)
        for (int q = 0; q < 4; q++) {
            const uint8x16_t v = vld1q_u8(p + 64 * t + 16 * q);
            const int8x16_t low = vreinterpretq_s8_u8(vandq_u8(v, nibble));
            const int8x16_t high = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
            for (int m = 0; m < M; m++)
                group[q][m] = t % 2 ? dot_lanes<2>(group[q][m], low, high, bytes[m][t / 2])
                                    : dot_lanes<0>(group[q][m], low, high, bytes[m][t / 2]);
        }
    }
}
#else
// Without it (ARMv8.0: Cortex-A53, A72), smlal on bytes: (value + 8) * xb into int16 (eight products a lane, 15240
// at most), then pairwise into int32, quarter by quarter
template <int M>
inline void add_group(const uint8_t *p, const int8_t *x, int64_t kp, int32x4_t (&group)[4][M]) {
    const uint8x16_t nibble = vdupq_n_u8(15);
    for (int q = 0; q < 4; q++) {
        int8x16_t low[4], high[4];
        for (int t = 0; t < 4; t++) {
            const uint8x16_t v = vld1q_u8(p + 64 * t + 16 * q);
            low[t] = vreinterpretq_s8_u8(vandq_u8(v, nibble)), high[t] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
        }
        for (int m = 0; m < M; m++) {
            int16x8_t first = vdupq_n_s16(0), second = vdupq_n_s16(0);  // rows 0-1 and 2-3 of the quarter
            for (int t = 0; t < 4; t++) {
                const int8x16_t a = vreinterpretq_s8_s32(vdupq_n_s32(four_bytes(x + m * kp + 8 * t)));
                const int8x16_t b = vreinterpretq_s8_s32(vdupq_n_s32(four_bytes(x + m * kp + 8 * t + 4)));
                first = vmlal_s8(vmlal_s8(first, vget_low_s8(low[t]), vget_low_s8(a)), vget_low_s8(high[t]),
                                 vget_low_s8(b));
                second = vmlal_high_s8(vmlal_high_s8(second, low[t], a), high[t], b);
            }
            group[q][m] = vaddq_s32(group[q][m], vpaddq_s32(vpaddlq_s16(first), vpaddlq_s16(second)));
        }
    }
}
#endif
template <int M>
inline void int4_block(const int8_t *xb, const int32_t *offsets, int64_t kp, const uint8_t *bytes,
                       const int8_t *scales, int32_t *sums) {
    const int64_t G = kp / INT4_GROUP;
    int32x4_t acc[4][M];
    for (int q = 0; q < 4; q++)
        for (int m = 0; m < M; m++) acc[q][m] = vdupq_n_s32(0);
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *p = bytes + g * 256;
        for (int t = 0; t < 4; t++) prefetch(p + 64 * t);
        int32x4_t group[4][M];
        for (int m = 0; m < M; m++) {
            const int32x4_t start = vdupq_n_s32(-whole_offset(offsets[m * G + g]));
            for (int q = 0; q < 4; q++) group[q][m] = start;
        }
        add_group<M>(p, xb + g * INT4_GROUP, kp, group);
        const int8x16_t sixteen = vld1q_s8(scales + g * 16);
        const int16x8_t low_scales = vmovl_s8(vget_low_s8(sixteen)), high_scales = vmovl_high_s8(sixteen);
        const int32x4_t scale[4] = {vmovl_s16(vget_low_s16(low_scales)), vmovl_high_s16(low_scales),
                                    vmovl_s16(vget_low_s16(high_scales)), vmovl_high_s16(high_scales)};
        for (int q = 0; q < 4; q++)
            for (int m = 0; m < M; m++) acc[q][m] = vmlaq_s32(acc[q][m], group[q][m], scale[q]);
    }
    for (int q = 0; q < 4; q++)
        for (int m = 0; m < M; m++) vst1q_s32(sums + m * INT4_ROWS + 4 * q, acc[q][m]);
}
#else
#define ZHIYIN_INT4_BLOCKS 0
constexpr int INT4_PASS_ROWS = 8;
#endif

// y[n] (+)= sum x scale[n] x xscale for the rows n0..n1-1 of a block that starts at `first` (sums [16], its rows'):
// a whole block a vector at a time, each product rounded to a float before it is added (as `rounded` does)
inline void finish_int4_block(const int32_t *sums, const float *scale, float xscale, int64_t first, int64_t n0,
                              int64_t n1, float *y, bool add) {
    if (n0 == first && n1 == first + INT4_ROWS && INT4_ROWS % LANES == 0) {
        for (int j = 0; j < INT4_ROWS; j += LANES) {
            vi32 integers;
            std::memcpy(&integers, sums + j, sizeof integers);
            volatile vf32 kept = __builtin_convertvector(integers, vf32) * (load(scale + first + j) * xscale);
            const vf32 value = kept;
            store(y + first + j, add ? load(y + first + j) + value : value);
        }
        return;
    }
    for (int64_t n = n0; n < n1; n++) {
        const float value = rounded(float(sums[n - first]) * (scale[n] * xscale));
        y[n] = add ? y[n] + value : value;
    }
}

// Weight rows [n0, n1) against all rows of r: block by block (16 rows), the activation rows INT4_PASS_ROWS at a
// time (registers); a block the range cuts is computed whole and only the range's rows written
inline void int4_range(const Linear &w, const Rows &r, float *y, int64_t ldy, bool add, int64_t n0, int64_t n1) {
    const int64_t kp = int4_columns(w.k), G = kp / INT4_GROUP;
    const uint8_t *weight = (const uint8_t *)w.weight;
    int32_t sums[INT4_ROWS * INT4_PASS_ROWS];
    for (int64_t first = n0 / INT4_ROWS * INT4_ROWS; first < n1; first += INT4_ROWS) {
        const int R = int(std::min<int64_t>(INT4_ROWS, w.n - first));
        const uint8_t *bytes = weight + first * (kp / 2);
        const int8_t *scales = w.groups + first * G;
        for (int64_t i = 0; i < r.m; i += INT4_PASS_ROWS) {
            const int M = int(std::min<int64_t>(INT4_PASS_ROWS, r.m - i));
            const int8_t *xb = r.xb + i * kp;
            const int32_t *offsets = r.xb_offsets + i * G;
#if ZHIYIN_INT4_BLOCKS
            if (R == INT4_ROWS) {
                switch (M) {
                case 1: int4_block<1>(xb, offsets, kp, bytes, scales, sums); break;
                case 2: int4_block<2>(xb, offsets, kp, bytes, scales, sums); break;
                case 3: int4_block<3>(xb, offsets, kp, bytes, scales, sums); break;
                case 4: int4_block<4>(xb, offsets, kp, bytes, scales, sums); break;
                case 5: int4_block<5>(xb, offsets, kp, bytes, scales, sums); break;
                case 6: int4_block<6>(xb, offsets, kp, bytes, scales, sums); break;
                case 7: int4_block<7>(xb, offsets, kp, bytes, scales, sums); break;
                default: int4_block<8>(xb, offsets, kp, bytes, scales, sums);
                }
            } else
#endif
                int4_block_plain(xb, offsets, kp, bytes, scales, R, M, sums);
            for (int m = 0; m < M; m++)
                finish_int4_block(sums + m * INT4_ROWS, w.scale, r.xscale[i + m], first, std::max(n0, first),
                                  std::min(n1, first + R), y + (i + m) * ldy, add);
        }
    }
}

// Integer weight rows as the int16 products read them: dots<NB, M>(xq, n, sums) -> the exact sums of weight rows
// n..n+NB-1 against M rows of xq
#if ZHIYIN_INT16
struct Int8Weights {
    const int8_t *w;
    int64_t K;
    template <int NB, int M>
    void dots(const int16_t *xq, int64_t n, int64_t *sums) const {
        int16_dots<NB, M>(xq, w + n * K, K, sums);
    }
};
#endif

// Block sizes of integer products (BENCHMARKS.md, "Kernel block sizes"). Up to STREAMED_ROWS activation rows the
// product is bandwidth-bound: one weight row at a time against all of them. More rows are compute-bound: the
// weights go by in chunks of 32 rows, read from memory once, and the activation rows pass over each chunk (still in
// cache) PASS_ROWS at a time, PASS_WEIGHT_ROWS weight rows at a time (registers: NB x M accumulators). On Zen 4
// too the AVX-512 blocking is the faster (BENCHMARKS.md, "Huge pages and prefetching into L2").
constexpr int STREAMED_ROWS = 5;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr int PASS_ROWS = 8, PASS_WEIGHT_ROWS = 2;
#else
constexpr int PASS_ROWS = 4, PASS_WEIGHT_ROWS = 1;
#endif

// Weight rows [n0, n1) against M rows of x, NB weight rows at a time: exact integer sums, scaled
template <int NB, int M, typename W>
void int16_range(const W &w, const int16_t *xq, const float *xscale, const float *scale, float *y, int64_t ldy,
                 bool add, int64_t n0, int64_t n1) {
    int64_t n = n0, sums[NB * M];
    for (; n + NB <= n1; n += NB) {
        w.template dots<NB, M>(xq, n, sums);
        for (int b = 0; b < NB; b++)
            for (int m = 0; m < M; m++) {
                float *out = y + m * ldy + n + b;
                const float value = rounded(float(sums[b * M + m]) * (scale[n + b] * xscale[m]));
                *out = add ? *out + value : value;
            }
    }
    if (NB > 1 && n < n1) int16_range<1, M>(w, xq, xscale, scale, y, ldy, add, n, n1);
}

// m <= 8 activation rows against weight rows [n0, n1), NB weight rows at a time
template <int NB, typename W>
void int16_rows(const W &w, const int16_t *x, const float *xs, int64_t m, const float *scale, float *y, int64_t ldy,
                bool add, int64_t n0, int64_t n1) {
    switch (m) {
    case 1: return int16_range<NB, 1>(w, x, xs, scale, y, ldy, add, n0, n1);
    case 2: return int16_range<NB, 2>(w, x, xs, scale, y, ldy, add, n0, n1);
    case 3: return int16_range<NB, 3>(w, x, xs, scale, y, ldy, add, n0, n1);
    case 4: return int16_range<NB, 4>(w, x, xs, scale, y, ldy, add, n0, n1);
    case 5: return int16_range<NB, 5>(w, x, xs, scale, y, ldy, add, n0, n1);
    case 6: return int16_range<NB, 6>(w, x, xs, scale, y, ldy, add, n0, n1);
    case 7: return int16_range<NB, 7>(w, x, xs, scale, y, ldy, add, n0, n1);
    default: return int16_range<NB, 8>(w, x, xs, scale, y, ldy, add, n0, n1);
    }
}

// Any number of activation rows. Every output is the same exact sum, scaled the same way, whatever the blocking:
// a row's numbers do not depend on how many rows are beside it.
template <typename W>
void int16_matvec(const W &w, const Rows &r, const float *scale, int64_t K, float *y, int64_t ldy, bool add,
                  int64_t n0, int64_t n1) {
    if (r.m <= STREAMED_ROWS) return int16_rows<1>(w, r.xq, r.xscale, r.m, scale, y, ldy, add, n0, n1);
    for (int64_t c0 = n0; c0 < n1; c0 += 32) {
        const int64_t c1 = std::min(n1, c0 + 32);
        for (int64_t i = 0; i < r.m; i += PASS_ROWS)
            int16_rows<PASS_WEIGHT_ROWS>(w, r.xq + i * K, r.xscale + i, std::min<int64_t>(PASS_ROWS, r.m - i), scale,
                                         y + i * ldy, ldy, add, c0, c1);
    }
}

// Intel AMX (Sapphire Rapids and later: -march with amx-tile and amx-int8, and Linux's permission, which
// zhiyin_amx_rows() asks for): int8 products of many rows on the tile unit, where the vector units are compute-bound.
// A tile multiplies int8 by int8 into exact int32 sums, so each int16 activation is taken as high * 256 + low (high
// its signed top byte, low its unsigned bottom one): two tile products, high . W and low . W, whose sums put
// together are the exact int64 sums int16_dots makes, scaled the same way: the same numbers, bit for bit.
// The weights as tiles (kernels.py makes them): for each 16 output rows and 64 columns, 1 KiB, row q holding
// columns 4q..4q+3 of each of the 16 output rows in turn (the pairs' layout that the tile product reads).
#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && ZHIYIN_INT16
#define ZHIYIN_AMX 1
constexpr int AMX_TILE_ROWS = 16, AMX_TILE_COLUMNS = 64, AMX_TILE_BYTES = AMX_TILE_ROWS * AMX_TILE_COLUMNS;

struct TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
};

// Tiles 0, 1: 16 activation rows' high and low bytes (64 columns); 2, 3: two weight tiles; 4..7: the 16 x 16 sums
// of high and low against each weight tile
inline void configure_tiles() {
    TileConfig c{};
    c.palette = 1;
    for (int t = 0; t < 8; t++) c.rows[t] = AMX_TILE_ROWS, c.bytes_per_row[t] = AMX_TILE_COLUMNS;
    _tile_loadconfig(&c);
}

// Weight rows [n0, n1) (multiples of 16; w.k a multiple of 64) against all rows of r: 32 weight rows at a time,
// each against the activation rows 16 at a time (a tile product costs the same for fewer: the last 16 are padded
// with zeros)
inline void amx_int8_range(const Linear &w, const Rows &r, float *y, int64_t ldy, bool add, int64_t n0, int64_t n1) {
    const int64_t K = w.k, blocks = K / AMX_TILE_COLUMNS, M = (r.m + AMX_TILE_ROWS - 1) / AMX_TILE_ROWS * AMX_TILE_ROWS;
    thread_local std::vector<int8_t> high_bytes;
    thread_local std::vector<uint8_t> low_bytes;
    high_bytes.resize(M * K), low_bytes.resize(M * K);
    int8_t *high = high_bytes.data();
    uint8_t *low = low_bytes.data();
    for (int64_t i = 0; i < M; i++)  // as tiles too: 16 rows x 64 columns, 1 KiB each (rows K apart share a cache set)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t at = (i / AMX_TILE_ROWS * blocks + b) * AMX_TILE_BYTES + i % AMX_TILE_ROWS * AMX_TILE_COLUMNS;
            if (i >= r.m) {  // the padding rows
                std::memset(high + at, 0, AMX_TILE_COLUMNS), std::memset(low + at, 0, AMX_TILE_COLUMNS);
                continue;
            }
            const int16_t *x = r.xq + i * K + b * AMX_TILE_COLUMNS;
            for (int c = 0; c < AMX_TILE_COLUMNS; c++)
                high[at + c] = int8_t(x[c] >> 8), low[at + c] = uint8_t(x[c] & 255);
        }
    alignas(64) int32_t sums[4][AMX_TILE_ROWS * 16];
    configure_tiles();
    for (int64_t n = n0; n < n1; n += 2 * AMX_TILE_ROWS) {
        const bool two = n + 2 * AMX_TILE_ROWS <= n1;
        const int8_t *first = w.tiles + n / AMX_TILE_ROWS * blocks * AMX_TILE_BYTES;
        const int8_t *second = first + blocks * AMX_TILE_BYTES;
        for (int64_t i = 0; i < M; i += AMX_TILE_ROWS) {
            _tile_zero(4);
            _tile_zero(5);
            _tile_zero(6);
            _tile_zero(7);
            for (int64_t b = 0; b < blocks; b++) {
                _tile_loadd(0, high + (i / AMX_TILE_ROWS * blocks + b) * AMX_TILE_BYTES, AMX_TILE_COLUMNS);
                _tile_loadd(1, low + (i / AMX_TILE_ROWS * blocks + b) * AMX_TILE_BYTES, AMX_TILE_COLUMNS);
                for (int line = 0; line < AMX_TILE_BYTES; line += 64) {  // the next weight tiles on their way
                    _mm_prefetch((const char *)first + (b + 1) * AMX_TILE_BYTES + line, _MM_HINT_T0);
                    if (two) _mm_prefetch((const char *)second + (b + 1) * AMX_TILE_BYTES + line, _MM_HINT_T0);
                }
                _tile_loadd(2, first + b * AMX_TILE_BYTES, AMX_TILE_COLUMNS);
                _tile_dpbssd(4, 0, 2);
                _tile_dpbusd(5, 1, 2);
                if (two) {
                    _tile_loadd(3, second + b * AMX_TILE_BYTES, AMX_TILE_COLUMNS);
                    _tile_dpbssd(6, 0, 3);
                    _tile_dpbusd(7, 1, 3);
                }
            }
            _tile_stored(4, sums[0], 64);
            _tile_stored(5, sums[1], 64);
            if (two) {
                _tile_stored(6, sums[2], 64);
                _tile_stored(7, sums[3], 64);
            }
            const int rows = int(std::min<int64_t>(AMX_TILE_ROWS, r.m - i));
            for (int t = 0; t < (two ? 2 : 1); t++)
                for (int m = 0; m < rows; m++)
                    for (int c = 0; c < AMX_TILE_ROWS; c++) {
                        const int64_t column = n + t * AMX_TILE_ROWS + c;
                        const int64_t sum = 256 * int64_t(sums[2 * t][m * 16 + c]) + sums[2 * t + 1][m * 16 + c];
                        float *out = y + (i + m) * ldy + column;
                        const float value = rounded(float(sum) * (w.scale[column] * r.xscale[i + m]));
                        *out = add ? *out + value : value;
                    }
        }
    }
    _tile_release();
}
#endif

// y[m * ldy + n] (+)= rows . W[n] for n in [n0, n1), any number of rows (float weights MAX_ROWS at a time)
inline void matvec(const Linear &w, const Rows &r, float *y, int64_t ldy, bool add, int64_t n0, int64_t n1) {
    if (w.type == I4) return int4_range(w, r, y, ldy, add, n0, n1);
#if ZHIYIN_INT16
    if (w.type == I8) {
        const Int8Weights rows{(const int8_t *)w.weight, w.k};
#if ZHIYIN_AMX
        // more rows than the streamed ones on the tile unit, whole tiles of output rows only
        const int64_t a = std::min(n1, (n0 + AMX_TILE_ROWS - 1) / AMX_TILE_ROWS * AMX_TILE_ROWS);
        const int64_t b = std::max(a, n1 / AMX_TILE_ROWS * AMX_TILE_ROWS);
        if (w.tiles && r.m > STREAMED_ROWS && a < b) {
            int16_matvec(rows, r, w.scale, w.k, y, ldy, add, n0, a);
            amx_int8_range(w, r, y, ldy, add, a, b);
            return int16_matvec(rows, r, w.scale, w.k, y, ldy, add, b, n1);
        }
#endif
        return int16_matvec(rows, r, w.scale, w.k, y, ldy, add, n0, n1);
    }
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

// This thread's share [n0, n1) of n output rows, in blocks of 16 so that the kernels' row blocks (8 rows of float
// and int8 weights, int4's blocks and AMX's tiles of 16) stay whole
inline void share(int64_t n, int thread, int threads, int64_t &n0, int64_t &n1) {
    const int64_t blocks = (n + INT4_ROWS - 1) / INT4_ROWS;
    n0 = std::min(n, blocks * thread / threads * INT4_ROWS);
    n1 = std::min(n, blocks * (thread + 1) / threads * INT4_ROWS);
}

}  // namespace zhiyin
