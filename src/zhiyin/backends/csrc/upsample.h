// EnCodec's upsampling: a transposed convolution with kernel 2s and stride s as one matrix product over time.
//
// Output sample t*s + r of channel c is bias[c] + sum_i W[i, c, s + r] x[i, t - 1] + W[i, c, r] x[i, t], for
// t = 0..T (x is 0 outside 0..T-1). With x laid out time by time, padded by a row of zeros either side
// (xt [T + 2, C_in], xt[t + 1] = x[:, t]), the two inputs of time t are the 2 C_in consecutive numbers from xt[t]:
// a product of rows A[t] = xt[t .. t + 1] (K = 2 C_in) with B [K, N = C_out s] (B[i, c s + r] = W[i, c, s + r],
// B[C_in + i, c s + r] = W[i, c, r]), no copy of the rows. B is packed once in panels of PANEL columns, each
// [K, PANEL]; tiles of TILE_ROWS rows x PANEL columns are summed in registers over the whole K and written straight
// into their places in the output [C_out, (T + 1) s], the bias added last. Every output is one thread's sum in the
// order k = 0..K-1, with fused multiply-adds: the same number at any thread count, chunk length or vector width.
#pragma once
#include <algorithm>
#include <vector>

#include "vector_math.h"

namespace zhiyin {

// a * b + c, rounded once where the CPU has fused multiply-adds
inline vf32 multiply_add(vf32 a, vf32 b, vf32 c) {
#if defined(__AVX512F__)
    return (vf32)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
    return (vf32)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(__aarch64__)
    return (vf32)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
#else
    return a * b + c;
#endif
}

constexpr int UPSAMPLE_VECTORS = LANES >= 16 ? 4 : 2;  // a panel's vectors: 24 or 12 sums in registers
constexpr int64_t PANEL = UPSAMPLE_VECTORS * LANES;
constexpr int TILE_ROWS = 6;

inline int64_t upsample_panels(int64_t c_out, int64_t s) { return (c_out * s + PANEL - 1) / PANEL; }

// weight [C_in, C_out, 2s] (nn.ConvTranspose1d's) -> packed [panels, 2 C_in, PANEL] (zeros past N)
inline void pack_upsample(const float *weight, int64_t c_in, int64_t c_out, int64_t s, float *packed) {
    const int64_t n = c_out * s, K = 2 * c_in;
    for (int64_t p = 0; p < upsample_panels(c_out, s); p++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t lane = 0; lane < PANEL; lane++) {
                const int64_t j = p * PANEL + lane, i = k % c_in, c = j / s, r = j % s;
                const int64_t tap = k < c_in ? s + r : r;
                packed[(p * K + k) * PANEL + lane] = j < n ? weight[(i * c_out + c) * 2 * s + tap] : 0.f;
            }
}

// rows a[m * lda + k] (m < M) times one panel [K, PANEL] -> sums[m][v]
template <int M>
inline void upsample_tile(const float *a, int64_t lda, const float *panel, int64_t K, vf32 (*sums)[UPSAMPLE_VECTORS]) {
    vf32 acc[M][UPSAMPLE_VECTORS] = {};
    for (int64_t k = 0; k < K; k++) {
        vf32 b[UPSAMPLE_VECTORS];
        for (int v = 0; v < UPSAMPLE_VECTORS; v++) b[v] = load(panel + k * PANEL + v * LANES);
        for (int m = 0; m < M; m++) {
            const vf32 x = splat(a[m * lda + k]);
            for (int v = 0; v < UPSAMPLE_VECTORS; v++) acc[m][v] = multiply_add(x, b[v], acc[m][v]);
        }
    }
    for (int m = 0; m < M; m++)
        for (int v = 0; v < UPSAMPLE_VECTORS; v++) sums[m][v] = acc[m][v];
}

constexpr int64_t UPSAMPLE_BLOCK_ROWS = 8 * TILE_ROWS;   // the rows of A a task keeps in cache
constexpr int64_t UPSAMPLE_GROUP_BYTES = 512 * 1024;     // the panels of B it keeps there beside them

// This thread's share of the upsampling (inside a parallel region, after xt is written): tasks of a block of rows x
// a group of panels, split among the threads
inline void upsample_share(const float *xt, int64_t c_in, int64_t T, const float *packed, const float *bias,
                           int64_t c_out, int64_t s, float *out, int thread, int threads) {
    const int64_t K = 2 * c_in, rows = T + 1, n = c_out * s, length = rows * s, panels = upsample_panels(c_out, s);
    const int64_t group = std::max<int64_t>(1, UPSAMPLE_GROUP_BYTES / int64_t(sizeof(float) * K * PANEL));
    const int64_t groups = (panels + group - 1) / group, blocks = (rows + UPSAMPLE_BLOCK_ROWS - 1) / UPSAMPLE_BLOCK_ROWS;
    const int64_t tasks = blocks * groups;
    vf32 sums[TILE_ROWS][UPSAMPLE_VECTORS];
    int64_t offset[PANEL];
    float added[PANEL];
    for (int64_t task = tasks * thread / threads; task < tasks * (thread + 1) / threads; task++) {
        const int64_t block = task / groups, g = task % groups;
        const int64_t first = block * UPSAMPLE_BLOCK_ROWS, last = std::min(rows, first + UPSAMPLE_BLOCK_ROWS);
        for (int64_t p = g * group; p < std::min(panels, (g + 1) * group); p++) {
            for (int64_t lane = 0; lane < PANEL; lane++) {  // where column j = c s + r goes, and its bias
                const int64_t j = p * PANEL + lane;
                offset[lane] = j < n ? j / s * length + j % s : -1;
                added[lane] = j < n && bias ? bias[j / s] : 0.f;
            }
            const float *panel = packed + p * K * PANEL;
            for (int64_t r = first; r < last; r += TILE_ROWS) {
                const int64_t m_rows = std::min<int64_t>(TILE_ROWS, last - r);
                const float *a = xt + r * c_in;
                switch (m_rows) {
                case 6: upsample_tile<6>(a, c_in, panel, K, sums); break;
                case 5: upsample_tile<5>(a, c_in, panel, K, sums); break;
                case 4: upsample_tile<4>(a, c_in, panel, K, sums); break;
                case 3: upsample_tile<3>(a, c_in, panel, K, sums); break;
                case 2: upsample_tile<2>(a, c_in, panel, K, sums); break;
                default: upsample_tile<1>(a, c_in, panel, K, sums);
                }
                for (int64_t m = 0; m < m_rows; m++)
                    for (int v = 0; v < UPSAMPLE_VECTORS; v++)
                        for (int lane = 0; lane < LANES; lane++) {
                            const int64_t at = offset[v * LANES + lane];
                            if (at >= 0) out[at + (r + m) * s] = sums[m][v][lane] + added[v * LANES + lane];
                        }
            }
        }
    }
}

}  // namespace zhiyin
