// EnCodec's convolutions over time, for one item x [C_in, T]: as matrix products in panels of output columns
// (convolution_share: any kernel k; kernels.py gives it the upsampling's transposed ones, kernel 2s and stride s),
// and vectorized over time (direct_share, below: the stride-1 ones).
//
// Laid out time by time (xt [T', C_in], optionally padded by rows of zeros either side), the inputs of output time t
// are the k C_in consecutive numbers from xt[t]: a product of rows A[t] = xt[t .. t + k - 1] (K = k C_in) with a
// weight matrix B [K, N], no copy of the rows. A convolution's B[j C_in + i, c] = W[c, i, j] (N = C_out); the
// transposed convolution's output t s + r of channel c is sum_i W[i, c, s + r] x[i, t - 1] + W[i, c, r] x[i, t],
// so with one row of zeros either side (k = 2) B[i, c s + r] = W[i, c, s + r], B[C_in + i, c s + r] = W[i, c, r]
// and N = C_out s: s phases per channel. B is packed once in panels of PANEL columns, each [K, PANEL]; tiles of
// TILE_ROWS rows x PANEL columns are summed in registers over the whole K and written straight into their places in
// the output [C_out, rows x phases], the bias added last. An ELU on the input (the SEANet blocks' ELU before a
// convolution) is applied while x is laid out. Every output is one thread's sum in the order k = 0..K-1, with fused
// multiply-adds: the same number at any thread count and chunk length, and with any vector width where the CPU
// fuses multiply-adds (AVX2 and AVX-512 builds agree to the bit).
#pragma once
#include <algorithm>
#include <vector>

#include "vector_math.h"

namespace zhiyin {

constexpr int PANEL_VECTORS = LANES >= 16 ? 4 : 2;  // a panel's vectors: 24 or 12 sums in registers
constexpr int64_t PANEL = PANEL_VECTORS * LANES;
constexpr int TILE_ROWS = 6;

inline int64_t panels(int64_t n) { return (n + PANEL - 1) / PANEL; }

// A matrix b [K, n] (element (k, j) at b[k * k_step + j * j_step]) -> packed [ceil(n / WIDTH), K, WIDTH]: its
// columns in groups of WIDTH, each group row by row (zeros past n)
template <int64_t WIDTH>
inline void pack_columns(const float *b, int64_t K, int64_t n, int64_t k_step, int64_t j_step, float *packed) {
    for (int64_t p = 0; p < (n + WIDTH - 1) / WIDTH; p++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t lane = 0; lane < WIDTH; lane++) {
                const int64_t j = p * WIDTH + lane;
                packed[(p * K + k) * WIDTH + lane] = j < n ? b[k * k_step + j * j_step] : 0.f;
            }
}

// b [K, N] row-major -> packed [panels, K, PANEL]
inline void pack_panels(const float *b, int64_t K, int64_t n, float *packed) {
    pack_columns<PANEL>(b, K, n, n, 1, packed);
}

// ELU (alpha 1): x, or e^x - 1 where x < 0
inline vf32 elu(vf32 x) { return select(x > splat(0.f), x, zhiyin::exp(x) - 1.f); }

// x [C_in, T] -> xt [pad + T + pad, C_in] for times t0..t1 of xt (ELU applied where elu), zeros in the padding
inline void lay_out(const float *x, int64_t c_in, int64_t T, int64_t pad, bool elu_input, float *xt, int64_t t0,
                    int64_t t1) {
    for (int64_t t = t0; t < t1; t++)
        if (t < pad || t >= pad + T) std::fill(xt + t * c_in, xt + (t + 1) * c_in, 0.f);
    const int64_t first = std::max(t0, pad), last = std::min(t1, pad + T);  // the times that hold x
    for (int64_t i = 0; i < c_in; i++) {
        const float *row = x + i * T - pad;  // row[t] = x[i, t - pad]
        int64_t t = first;
        for (; t + LANES <= last; t += LANES) {
            vf32 v = load(row + t);
            if (elu_input) v = elu(v);
            for (int lane = 0; lane < LANES; lane++) xt[(t + lane) * c_in + i] = v[lane];
        }
        for (; t < last; t++) xt[t * c_in + i] = elu_input ? elu(splat(row[t]))[0] : row[t];
    }
}

// rows a[m * lda + k] (m < M) times one panel [K, PANEL] -> sums[m][v]
template <int M>
inline void panel_tile(const float *a, int64_t lda, const float *panel, int64_t K, vf32 (*sums)[PANEL_VECTORS]) {
    vf32 acc[M][PANEL_VECTORS] = {};
    for (int64_t k = 0; k < K; k++) {
        vf32 b[PANEL_VECTORS];
        for (int v = 0; v < PANEL_VECTORS; v++) b[v] = load(panel + k * PANEL + v * LANES);
        for (int m = 0; m < M; m++) {
            const vf32 x = splat(a[m * lda + k]);
            for (int v = 0; v < PANEL_VECTORS; v++) acc[m][v] = multiply_add(x, b[v], acc[m][v]);
        }
    }
    for (int m = 0; m < M; m++)
        for (int v = 0; v < PANEL_VECTORS; v++) sums[m][v] = acc[m][v];
}

constexpr int64_t BLOCK_ROWS = 8 * TILE_ROWS;   // the rows of A a task keeps in cache
constexpr int64_t GROUP_BYTES = 512 * 1024;     // the panels of B it keeps there beside them

// This thread's share of the product (inside a parallel region, after xt is laid out): output rows 0..rows-1 of
// N = C_out x phases columns, in tasks of a block of rows x a group of panels, split among the threads
inline void convolution_share(const float *xt, int64_t c_in, int64_t taps, int64_t rows, const float *packed,
                              const float *bias, int64_t c_out, int64_t phases, float *out, int thread, int threads) {
    const int64_t K = taps * c_in, n = c_out * phases, length = rows * phases, count = panels(n);
    const int64_t group = std::max<int64_t>(1, GROUP_BYTES / int64_t(sizeof(float) * K * PANEL));
    const int64_t groups = (count + group - 1) / group, blocks = (rows + BLOCK_ROWS - 1) / BLOCK_ROWS;
    const int64_t tasks = blocks * groups;
    vf32 sums[TILE_ROWS][PANEL_VECTORS];
    int64_t offset[PANEL];
    float added[PANEL];
    for (int64_t task = tasks * thread / threads; task < tasks * (thread + 1) / threads; task++) {
        const int64_t block = task / groups, g = task % groups;
        const int64_t first = block * BLOCK_ROWS, last = std::min(rows, first + BLOCK_ROWS);
        for (int64_t p = g * group; p < std::min(count, (g + 1) * group); p++) {
            for (int64_t lane = 0; lane < PANEL; lane++) {  // where column j = c phases + r goes, and its bias
                const int64_t j = p * PANEL + lane;
                offset[lane] = j < n ? j / phases * length + j % phases : -1;
                added[lane] = j < n && bias ? bias[j / phases] : 0.f;
            }
            const float *panel = packed + p * K * PANEL;
            for (int64_t r = first; r < last; r += TILE_ROWS) {
                const int64_t m_rows = std::min<int64_t>(TILE_ROWS, last - r);
                const float *a = xt + r * c_in;
                switch (m_rows) {
                case 6: panel_tile<6>(a, c_in, panel, K, sums); break;
                case 5: panel_tile<5>(a, c_in, panel, K, sums); break;
                case 4: panel_tile<4>(a, c_in, panel, K, sums); break;
                case 3: panel_tile<3>(a, c_in, panel, K, sums); break;
                case 2: panel_tile<2>(a, c_in, panel, K, sums); break;
                default: panel_tile<1>(a, c_in, panel, K, sums);
                }
                for (int64_t m = 0; m < m_rows; m++)
                    for (int v = 0; v < PANEL_VECTORS; v++)
                        for (int lane = 0; lane < LANES; lane++) {
                            const int64_t at = offset[v * LANES + lane];
                            if (at >= 0) out[at + (r + m) * phases] = sums[m][v][lane] + added[v * LANES + lane];
                        }
            }
        }
    }
}

// Stride-1 convolutions vectorized over time (few output channels would leave panels of PANEL columns mostly empty;
// at the decoder's wide ones this was as fast or faster, with the ELU applied once per input):
// out[c, t] = bias[c] + sum over i, j of W[c, i, j] x[i, t + j], summed in the order (i, j) = (0, 0), (0, 1), ...
// with fused multiply-adds, each weight broadcast against DIRECT_VECTORS vectors of consecutive times, for
// DIRECT_ROWS output channels at once. The weights are packed in blocks of DIRECT_ROWS channels [blocks, C_in k,
// DIRECT_ROWS] (zeros past C_out). Each tile of DIRECT_TIMES times first copies its inputs (and the k - 1 after them)
// into a window that stays in L1, ELU applied there where asked. Every output is one thread's sum in one order, as
// the panels' are: the same bits at any thread count, chunk length and vector width.
constexpr int DIRECT_ROWS = LANES >= 16 ? 8 : 3;  // 24 sums in 32 registers; 12 in 16 (AVX2: 3 x 4 was 5-15 %
constexpr int DIRECT_VECTORS = LANES >= 16 ? 3 : 4;  // faster than 4 x 3 at EnCodec's kernel-3 convolutions)
constexpr int64_t DIRECT_TIMES = DIRECT_VECTORS * LANES;

inline int64_t direct_blocks(int64_t c_out) { return (c_out + DIRECT_ROWS - 1) / DIRECT_ROWS; }

// w [C_out, K] row-major (K = C_in k: a weight [C_out, C_in, k]) -> packed [blocks, K, DIRECT_ROWS]
inline void pack_direct(const float *w, int64_t c_out, int64_t K, float *packed) {
    pack_columns<DIRECT_ROWS>(w, K, c_out, 1, K, packed);
}

// The first R channels of a packed block against a window [C_in, ldw] -> sums[r][v], times v LANES + lane
template <int R>
inline void direct_tile(const float *window, int64_t ldw, int64_t c_in, int64_t taps, const float *block,
                        vf32 (*sums)[DIRECT_VECTORS]) {
    vf32 acc[R][DIRECT_VECTORS] = {};
    for (int64_t i = 0; i < c_in; i++)
        for (int64_t j = 0; j < taps; j++) {
            const float *x = window + i * ldw + j, *w = block + (i * taps + j) * DIRECT_ROWS;
            vf32 xv[DIRECT_VECTORS];
            for (int v = 0; v < DIRECT_VECTORS; v++) xv[v] = load(x + v * LANES);
            for (int r = 0; r < R; r++) {
                const vf32 weight = splat(w[r]);
                for (int v = 0; v < DIRECT_VECTORS; v++) acc[r][v] = multiply_add(weight, xv[v], acc[r][v]);
            }
        }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < DIRECT_VECTORS; v++) sums[r][v] = acc[r][v];
}

template <int R = DIRECT_ROWS>  // direct_tile for the block's `count` channels (fewer in the last block)
inline void direct_rows(int64_t count, const float *window, int64_t ldw, int64_t c_in, int64_t taps,
                        const float *block, vf32 (*sums)[DIRECT_VECTORS]) {
    if constexpr (R > 1) {
        if (count < R) return direct_rows<R - 1>(count, window, ldw, c_in, taps, block, sums);
    }
    direct_tile<R>(window, ldw, c_in, taps, block, sums);
}

// x [C_in, T] padded by `left` and `right` (reflected, as PyTorch's reflect padding, or zeros; reflected needs
// T > left, right): padded times p0 .. p0 + n - 1 -> to [n], ELU applied where elu_input
inline void padded_row(const float *x, int64_t T, int64_t left, bool reflect, bool elu_input, int64_t p0, int64_t n,
                       float *to) {
    const int64_t s0 = p0 - left;  // the first one's time in x
    if (s0 >= 0 && s0 + n <= T) {  // all inside x
        int64_t u = 0;
        for (; u + LANES <= n; u += LANES) store(to + u, elu_input ? elu(load(x + s0 + u)) : load(x + s0 + u));
        for (; u < n; u++) to[u] = elu_input ? elu(splat(x[s0 + u]))[0] : x[s0 + u];
        return;
    }
    for (int64_t u = 0; u < n; u++) {
        int64_t s = s0 + u;
        if (reflect) s = s < 0 ? -s : s >= T ? 2 * (T - 1) - s : s;
        const float v = s >= 0 && s < T ? x[s] : 0.f;
        to[u] = elu_input ? elu(splat(v))[0] : v;
    }
}

// This thread's share of a stride-1 convolution of x [C_in, T] (row i at x + i ldx) padded by `left` and `right`
// (padded_row's) -> out [C_out, rows], rows = left + T + right - k + 1: its share of the tiles of DIRECT_TIMES
// times, or where there are few (a short input) its share of every tile's blocks of channels
inline void direct_share(const float *x, int64_t ldx, int64_t c_in, int64_t T, int64_t left, int64_t right,
                         bool reflect, int64_t taps, bool elu_input, const float *packed, const float *bias,
                         int64_t c_out, float *out, int thread, int threads) {
    const int64_t padded = left + T + right, rows = padded - taps + 1, K = c_in * taps;
    const int64_t tiles = (rows + DIRECT_TIMES - 1) / DIRECT_TIMES, blocks = direct_blocks(c_out);
    const bool by_time = tiles >= 4 * threads || blocks < 4 * threads;
    const int64_t tile0 = by_time ? tiles * thread / threads : 0;
    const int64_t tile1 = by_time ? tiles * (thread + 1) / threads : tiles;
    const int64_t block0 = by_time ? 0 : blocks * thread / threads;
    const int64_t block1 = by_time ? blocks : blocks * (thread + 1) / threads;
    const int64_t ldw = DIRECT_TIMES + (taps - 1 + LANES - 1) / LANES * LANES;  // a tile's inputs, in vectors
    std::vector<float> window(c_in * ldw);
    vf32 sums[DIRECT_ROWS][DIRECT_VECTORS];
    for (int64_t tile = tile0; tile < tile1; tile++) {
        const int64_t t0 = tile * DIRECT_TIMES, span = std::min(ldw, padded - t0);  // inputs there (zeros after)
        for (int64_t i = 0; i < c_in; i++) {
            float *to = window.data() + i * ldw;
            padded_row(x + i * ldx, T, left, reflect, elu_input, t0, span, to);
            std::fill(to + span, to + ldw, 0.f);
        }
        const int64_t valid = std::min(DIRECT_TIMES, rows - t0);
        for (int64_t b = block0; b < block1; b++) {
            const int64_t first = b * DIRECT_ROWS, count = std::min<int64_t>(DIRECT_ROWS, c_out - first);
            direct_rows(count, window.data(), ldw, c_in, taps, packed + b * K * DIRECT_ROWS, sums);
            for (int64_t r = 0; r < count; r++) {
                float *o = out + (first + r) * rows + t0;
                const float added = bias ? bias[first + r] : 0.f;
                if (valid == DIRECT_TIMES) {
                    for (int v = 0; v < DIRECT_VECTORS; v++) store(o + v * LANES, sums[r][v] + added);
                } else {
                    for (int64_t u = 0; u < valid; u++) o[u] = sums[r][u / LANES][u % LANES] + added;
                }
            }
        }
    }
}

}  // namespace zhiyin
