// Weight-streaming products for decoding: y[m, n] = x[m, :] . W[n, :] (* scale[n]) for the few rows m of a decoder
// step and a range of output rows n, so that threads can split one product by n inside a parallel region.
//
// A decoder step multiplies a few activation rows (batch x 2 with guidance) by every weight matrix, so its speed is
// how fast the weights stream from memory: each weight element is loaded once and used for all M rows. W is float32,
// bfloat16 (raw uint16), int8 with a float32 scale per output row, or int4 with a float32 scale per output row and
// an int8 scale per group of 32 columns. Int8 and int4 weights on x86 CPUs with AVX2 or AVX512-VNNI and on 64-bit
// ARM multiply int16 activations (x quantized per row, `quantize_rows`) with vpmaddwd / vpdpwssd / smlal: exact
// integer sums, so all give the same numbers. Elsewhere (SSE) int8 converts to float, and int4 sums exactly in
// plain C++ (the same numbers again, slowly).
#pragma once
#include <algorithm>
#include <vector>
#include "vector_math.h"

namespace zhiyin {

enum WeightType : int32_t { F32 = 0, BF16 = 1, I8 = 2, I4 = 3 };

// A bias-free linear layer: weight [n, k] row-major (float32, bfloat16 or int8); scale [n] for int8 and int4, else
// null. int4 (modules/quantization.py's quantize_int4): weight is [n, kp / 2] bytes, kp = k rounded up to 64 (the
// padding holds zeros); in each 64 columns c..c+63 of a row, byte b holds column c + b in its low nibble and
// c + 32 + b in its high one, each as value + 8 (value -8..7); groups [n, kp / 32] is each 32 columns' scale in
// units of the row's (-63..63). Weight (row, j) = scale[row] * groups[row, j / 32] * value.
// tiles: int8 weights also as AMX tiles (amx_int8_range), or null.
struct Linear {
    const void *weight;
    const float *scale;
    const int8_t *groups;
    int64_t n, k;
    int32_t type, unused;
    const int8_t *tiles;
};

constexpr int INT4_BLOCK = 64, INT4_GROUP = 32, GROUP_SCALE_MAX = 63;

// The activation rows a product reads: x [m, k] float32, and for int8 weights (with VNNI) the same rows as
// int16 with a scale per row (xq [m, k], xscale [m]).
struct Rows {
    const float *x;
    const int16_t *xq;
    const float *xscale;
    int64_t m;
};

constexpr int MAX_ROWS = 8;

// Weight rows are read from memory as they are multiplied: the loops ask for the bytes PREFETCH_BYTES ahead of the
// ones they read, so that the next ones are on their way while these are multiplied (the hardware's prefetcher alone
// left the integer products a quarter slower: BENCHMARKS.md, "int4, and every mode per CPU level")
constexpr int PREFETCH_BYTES = 4096;
inline void prefetch(const void *p) { __builtin_prefetch(static_cast<const char *>(p) + PREFETCH_BYTES); }
#if (defined(__AVX512VNNI__) && defined(__AVX512BW__)) || defined(__AVX2__) || defined(__aarch64__)
#define ZHIYIN_INT16 1
constexpr bool INT16_ACTIVATIONS = true;
#else
#define ZHIYIN_INT16 0
constexpr bool INT16_ACTIVATIONS = false;
#endif

// int4 weights always take int16 activations (there is no float path for them)
inline bool needs_int16(const Linear &w) { return w.type == I4 || (INT16_ACTIVATIONS && w.type == I8); }

// The largest integer weight of a product: |int8| <= 127, |int4 value x group scale| <= 8 x 63
inline int largest_weight(const Linear &w) { return w.type == I4 ? 8 * GROUP_SCALE_MAX : 127; }

// x [m, k] -> xq [m, k] int16, xscale [m]: x ~= xq * xscale. Each int32 lane of a product's accumulators sums k/16
// products of |w| <= largest and |xq| <= limit, so limit keeps them from overflowing (int8: 32767 up to k = 8256;
// int4: 16644 at k = 4096).
inline void quantize_rows(const float *x, int64_t m, int64_t k, int largest, int16_t *xq, float *xscale) {
    const double lanes_sum = double(largest) * double((k + 15) / 16);
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
            prefetch(w + (n + b) * K + k);
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

// int4 weights: the value at column j of a packed row (value x its group's scale), and the exact sum of columns
// k..K-1 against x, for the columns the vector loops leave
inline int32_t int4_weight(const uint8_t *row, const int8_t *groups, int64_t j) {
    const uint8_t byte = row[j / INT4_BLOCK * (INT4_BLOCK / 2) + j % (INT4_BLOCK / 2)];
    const int value = (j % INT4_BLOCK < INT4_BLOCK / 2 ? byte & 15 : byte >> 4) - 8;
    return value * groups[j / INT4_GROUP];
}

inline int64_t int4_tail(const uint8_t *row, const int8_t *groups, const int16_t *x, int64_t k, int64_t K) {
    int64_t s = 0;
    for (; k < K; k++) s += int64_t(int4_weight(row, groups, k)) * x[k];
    return s;
}

// int4_dots<NB, M>: as int16_dots, for int4 weight rows (bytes `stride` apart, their group scales `group_stride`
// apart). Each 64 columns unpack into two vectors of int16 weights (value x group scale, |w| <= 504), then go the
// int8 way: every int32 lane sums k/16 products on every CPU.
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
template <int NB, int M>
inline void int4_dots(const int16_t *xq, const uint8_t *row, const int8_t *groups, int64_t K, int64_t stride,
                      int64_t group_stride, int64_t *sums) {
    constexpr int C = chains<NB, M>();
    __m512i acc[C][NB][M];
    for (int c = 0; c < C; c++)
        for (int b = 0; b < NB; b++)
            for (int m = 0; m < M; m++) acc[c][b][m] = _mm512_setzero_si512();
    const __m512i nibble = _mm512_set1_epi16(15), eight = _mm512_set1_epi16(8);
    int64_t k = 0;
    for (; k + INT4_BLOCK <= K; k += INT4_BLOCK) {
        __m512i w0[NB], w1[NB];
        for (int b = 0; b < NB; b++) {
            prefetch(row + b * stride + k / 2);
            const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(row + b * stride + k / 2)));
            const int8_t *g = groups + b * group_stride + k / INT4_GROUP;
            w0[b] = _mm512_mullo_epi16(_mm512_sub_epi16(_mm512_and_si512(v, nibble), eight), _mm512_set1_epi16(g[0]));
            w1[b] = _mm512_mullo_epi16(_mm512_sub_epi16(_mm512_srli_epi16(v, 4), eight), _mm512_set1_epi16(g[1]));
        }
        for (int m = 0; m < M; m++) {
            const __m512i x0 = _mm512_loadu_si512(xq + m * K + k), x1 = _mm512_loadu_si512(xq + m * K + k + 32);
            for (int b = 0; b < NB; b++) {
                acc[0][b][m] = _mm512_dpwssd_epi32(acc[0][b][m], w0[b], x0);
                acc[C - 1][b][m] = _mm512_dpwssd_epi32(acc[C - 1][b][m], w1[b], x1);
            }
        }
    }
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++) {
            int64_t sum = int4_tail(row + b * stride, groups + b * group_stride, xq + m * K, k, K);
            for (int c = 0; c < C; c++) sum += reduce_exact(acc[c][b][m]);
            sums[b * M + m] = sum;
        }
}
#elif defined(__AVX2__)
template <int NB, int M>
inline void int4_dots(const int16_t *xq, const uint8_t *row, const int8_t *groups, int64_t K, int64_t stride,
                      int64_t group_stride, int64_t *sums) {
    __m256i even[NB][M], odd[NB][M];
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++) even[b][m] = odd[b][m] = _mm256_setzero_si256();
    const __m256i nibble = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
    int64_t k = 0;
    for (; k + INT4_BLOCK <= K; k += INT4_BLOCK) {
        __m256i w[NB][4];  // columns k.., k+16.., k+32.., k+48..
        for (int b = 0; b < NB; b++) {
            prefetch(row + b * stride + k / 2);
            const __m256i v = _mm256_loadu_si256((const __m256i *)(row + b * stride + k / 2));
            const __m256i low = _mm256_sub_epi8(_mm256_and_si256(v, nibble), eight);
            const __m256i high = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), nibble), eight);
            const int8_t *g = groups + b * group_stride + k / INT4_GROUP;
            const __m256i g0 = _mm256_set1_epi16(g[0]), g1 = _mm256_set1_epi16(g[1]);
            w[b][0] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(low)), g0);
            w[b][1] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(low, 1)), g0);
            w[b][2] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(high)), g1);
            w[b][3] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(high, 1)), g1);
        }
        for (int m = 0; m < M; m++) {
            const int16_t *x = xq + m * K + k;
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)x), x1 = _mm256_loadu_si256((const __m256i *)(x + 16));
            const __m256i x2 = _mm256_loadu_si256((const __m256i *)(x + 32)), x3 = _mm256_loadu_si256((const __m256i *)(x + 48));
            for (int b = 0; b < NB; b++) {
                even[b][m] = _mm256_add_epi32(even[b][m], _mm256_add_epi32(_mm256_madd_epi16(w[b][0], x0),
                                                                           _mm256_madd_epi16(w[b][2], x2)));
                odd[b][m] = _mm256_add_epi32(odd[b][m], _mm256_add_epi32(_mm256_madd_epi16(w[b][1], x1),
                                                                         _mm256_madd_epi16(w[b][3], x3)));
            }
        }
    }
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++)
            sums[b * M + m] = reduce_exact(even[b][m]) + reduce_exact(odd[b][m]) +
                              int4_tail(row + b * stride, groups + b * group_stride, xq + m * K, k, K);
}
#elif defined(__aarch64__)
template <int NB, int M>
inline void int4_dots(const int16_t *xq, const uint8_t *row, const int8_t *groups, int64_t K, int64_t stride,
                      int64_t group_stride, int64_t *sums) {
    int32x4_t acc[NB][4][M];
    for (int b = 0; b < NB; b++)
        for (int a = 0; a < 4; a++)
            for (int m = 0; m < M; m++) acc[b][a][m] = vdupq_n_s32(0);
    const uint8x16_t nibble = vdupq_n_u8(15);
    const int8x16_t eight = vdupq_n_s8(8);
    int64_t k = 0;
    for (; k + INT4_BLOCK <= K; k += INT4_BLOCK) {
        int16x8_t w[NB][8];  // columns k + 8i ..
        for (int b = 0; b < NB; b++) {
            const uint8_t *bytes = row + b * stride + k / 2;
            prefetch(bytes);
            const int8_t *g = groups + b * group_stride + k / INT4_GROUP;
            const int16x8_t g0 = vdupq_n_s16(g[0]), g1 = vdupq_n_s16(g[1]);
            for (int half = 0; half < 2; half++) {
                const uint8x16_t v = vld1q_u8(bytes + 16 * half);
                const int8x16_t low = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, nibble)), eight);
                const int8x16_t high = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), eight);
                w[b][2 * half] = vmulq_s16(vmovl_s8(vget_low_s8(low)), g0);
                w[b][2 * half + 1] = vmulq_s16(vmovl_high_s8(low), g0);
                w[b][4 + 2 * half] = vmulq_s16(vmovl_s8(vget_low_s8(high)), g1);
                w[b][4 + 2 * half + 1] = vmulq_s16(vmovl_high_s8(high), g1);
            }
        }
        for (int m = 0; m < M; m++) {
            for (int i = 0; i < 8; i++) {
                const int16x8_t x = vld1q_s16(xq + m * K + k + 8 * i);
                for (int b = 0; b < NB; b++) {
                    int32x4_t &a = acc[b][i % 4][m];
                    a = vmlal_high_s16(vmlal_s16(a, vget_low_s16(w[b][i]), vget_low_s16(x)), w[b][i], x);
                }
            }
        }
    }
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++) {
            int64_t s = int4_tail(row + b * stride, groups + b * group_stride, xq + m * K, k, K);
            for (int a = 0; a < 4; a++) s += vaddlvq_s32(acc[b][a][m]);
            sums[b * M + m] = s;
        }
}
#else
template <int NB, int M>
inline void int4_dots(const int16_t *xq, const uint8_t *row, const int8_t *groups, int64_t K, int64_t stride,
                      int64_t group_stride, int64_t *sums) {
    for (int b = 0; b < NB; b++)
        for (int m = 0; m < M; m++)
            sums[b * M + m] = int4_tail(row + b * stride, groups + b * group_stride, xq + m * K, 0, K);
}
#endif

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

struct Int4Weights {
    const uint8_t *w;
    const int8_t *groups;
    int64_t K, stride, group_stride;
    explicit Int4Weights(const Linear &l)
        : w((const uint8_t *)l.weight), groups(l.groups), K(l.k),
          stride((l.k + INT4_BLOCK - 1) / INT4_BLOCK * (INT4_BLOCK / 2)), group_stride(2 * stride / INT4_GROUP) {}
    template <int NB, int M>
    void dots(const int16_t *xq, int64_t n, int64_t *sums) const {
        int4_dots<NB, M>(xq, w + n * stride, groups + n * group_stride, K, stride, group_stride, sums);
    }
};

// Block sizes of integer products (BENCHMARKS.md, "Kernel block sizes"). Up to STREAMED_ROWS activation rows the
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
constexpr int TILE_ROWS = 16, TILE_COLUMNS = 64, TILE_BYTES = TILE_ROWS * TILE_COLUMNS;

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
    for (int t = 0; t < 8; t++) c.rows[t] = TILE_ROWS, c.bytes_per_row[t] = TILE_COLUMNS;
    _tile_loadconfig(&c);
}

// Weight rows [n0, n1) (multiples of 16; w.k a multiple of 64) against all rows of r: 32 weight rows at a time,
// each against the activation rows 16 at a time (a tile product costs the same for fewer: the last 16 are padded
// with zeros)
inline void amx_int8_range(const Linear &w, const Rows &r, float *y, int64_t ldy, bool add, int64_t n0, int64_t n1) {
    const int64_t K = w.k, blocks = K / TILE_COLUMNS, M = (r.m + TILE_ROWS - 1) / TILE_ROWS * TILE_ROWS;
    thread_local std::vector<int8_t> high_bytes;
    thread_local std::vector<uint8_t> low_bytes;
    high_bytes.resize(M * K), low_bytes.resize(M * K);
    int8_t *high = high_bytes.data();
    uint8_t *low = low_bytes.data();
    for (int64_t i = 0; i < M; i++)  // as tiles too: 16 rows x 64 columns, 1 KiB each (rows K apart share a cache set)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t at = (i / TILE_ROWS * blocks + b) * TILE_BYTES + i % TILE_ROWS * TILE_COLUMNS;
            if (i >= r.m) {  // the padding rows
                std::memset(high + at, 0, TILE_COLUMNS), std::memset(low + at, 0, TILE_COLUMNS);
                continue;
            }
            const int16_t *x = r.xq + i * K + b * TILE_COLUMNS;
            for (int c = 0; c < TILE_COLUMNS; c++) high[at + c] = int8_t(x[c] >> 8), low[at + c] = uint8_t(x[c] & 255);
        }
    alignas(64) int32_t sums[4][TILE_ROWS * 16];
    configure_tiles();
    for (int64_t n = n0; n < n1; n += 2 * TILE_ROWS) {
        const bool two = n + 2 * TILE_ROWS <= n1;
        const int8_t *first = w.tiles + n / TILE_ROWS * blocks * TILE_BYTES, *second = first + blocks * TILE_BYTES;
        for (int64_t i = 0; i < M; i += TILE_ROWS) {
            _tile_zero(4);
            _tile_zero(5);
            _tile_zero(6);
            _tile_zero(7);
            for (int64_t b = 0; b < blocks; b++) {
                _tile_loadd(0, high + (i / TILE_ROWS * blocks + b) * TILE_BYTES, TILE_COLUMNS);
                _tile_loadd(1, low + (i / TILE_ROWS * blocks + b) * TILE_BYTES, TILE_COLUMNS);
                for (int line = 0; line < TILE_BYTES; line += 64) {  // the next weight tiles on their way
                    _mm_prefetch((const char *)first + (b + 1) * TILE_BYTES + line, _MM_HINT_T0);
                    if (two) _mm_prefetch((const char *)second + (b + 1) * TILE_BYTES + line, _MM_HINT_T0);
                }
                _tile_loadd(2, first + b * TILE_BYTES, TILE_COLUMNS);
                _tile_dpbssd(4, 0, 2);
                _tile_dpbusd(5, 1, 2);
                if (two) {
                    _tile_loadd(3, second + b * TILE_BYTES, TILE_COLUMNS);
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
            const int rows = int(std::min<int64_t>(TILE_ROWS, r.m - i));
            for (int t = 0; t < (two ? 2 : 1); t++)
                for (int m = 0; m < rows; m++)
                    for (int c = 0; c < TILE_ROWS; c++) {
                        const int64_t column = n + t * TILE_ROWS + c;
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
    if (w.type == I4) return int16_matvec(Int4Weights(w), r, w.scale, w.k, y, ldy, add, n0, n1);
#if ZHIYIN_INT16
    if (w.type == I8) {
        const Int8Weights rows{(const int8_t *)w.weight, w.k};
#if ZHIYIN_AMX
        // more rows than the streamed ones on the tile unit, whole tiles of output rows only
        const int64_t a = std::min(n1, (n0 + TILE_ROWS - 1) / TILE_ROWS * TILE_ROWS), b = std::max(a, n1 / TILE_ROWS * TILE_ROWS);
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

// This thread's share [n0, n1) of n output rows, in blocks of 8 so that the kernels' row blocks stay whole
inline void share(int64_t n, int thread, int threads, int64_t &n0, int64_t &n1) {
    const int64_t blocks = (n + 7) / 8;
    n0 = std::min(n, blocks * thread / threads * 8);
    n1 = std::min(n, blocks * (thread + 1) / threads * 8);
}

}  // namespace zhiyin
