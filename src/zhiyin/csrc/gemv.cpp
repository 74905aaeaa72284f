// Weight-streaming matrix-vector products for decoding: y[M, N] = x[M, K] . W[N, K]^T (* scale[N]).
//
// One decoder step multiplies a few activation rows (M <= 8: batch x 2 for guidance) by every weight matrix,
// so its speed is how fast the weights stream from memory. Each weight element is loaded once and used for all
// M rows, and each activation load serves NB weight rows; threads split the output rows. W is float32,
// bfloat16 (raw uint16) or int8 with a float32 scale per output row; x and y are float32. Built at first use
// with the system C++ compiler (-O3 -march=native -fopenmp) by kernels.py; called through ctypes.
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int LANES = 16;
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

inline f32x16 load(const float *p) { f32x16 v; std::memcpy(&v, p, sizeof v); return v; }
#if defined(__AVX512F__)
inline f32x16 load(const uint16_t *p) {  // bfloat16: the top half of a float32
    __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
    return (f32x16)_mm512_castsi512_ps(w);
}
inline f32x16 load(const int8_t *p) {
    return (f32x16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
#else
inline f32x16 load(const uint16_t *p) {  // bfloat16: the top half of a float32
    u16x16 h; std::memcpy(&h, p, sizeof h);
    u32x16 w = __builtin_convertvector(h, u32x16) << 16;
    f32x16 v; std::memcpy(&v, &w, sizeof v); return v;
}
inline f32x16 load(const int8_t *p) {
    i8x16 q; std::memcpy(&q, p, sizeof q);
    return __builtin_convertvector(__builtin_convertvector(q, i32x16), f32x16);
}
#endif
inline float one(const float *p) { return *p; }
inline float one(const uint16_t *p) { uint32_t b = uint32_t(*p) << 16; float f; std::memcpy(&f, &b, 4); return f; }
inline float one(const int8_t *p) { return float(*p); }

inline float hsum(f32x16 v) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#else
    float s = 0.f;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
#endif
}

// Weight rows n0 .. n0+NB-1 against all M rows of x; the NB x M accumulators stay in registers.
template <int M, int NB, typename W>
inline void block(const float *x, const W *w, const float *scale, float *y, int64_t N, int64_t K, int64_t n0) {
    f32x16 acc[NB][M] = {};
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) {
        f32x16 xv[M];
        for (int m = 0; m < M; m++) xv[m] = load(x + m * K + k);
        for (int b = 0; b < NB; b++) {
            f32x16 wv = load(w + (n0 + b) * K + k);
            for (int m = 0; m < M; m++) acc[b][m] += wv * xv[m];
        }
    }
    for (int b = 0; b < NB; b++) {
        const W *row = w + (n0 + b) * K;
        float s_n = scale ? scale[n0 + b] : 1.0f;
        for (int m = 0; m < M; m++) {
            float s = hsum(acc[b][m]);
            for (int64_t j = k; j < K; j++) s += one(row + j) * x[m * K + j];
            y[m * N + n0 + b] = s * s_n;
        }
    }
}

template <int M, int NB, typename W>
void run(const float *x, const W *w, const float *scale, float *y, int64_t N, int64_t K, int threads) {
    const int64_t blocks = N / NB;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < blocks; i++) block<M, NB>(x, w, scale, y, N, K, i * NB);
    for (int64_t n = blocks * NB; n < N; n++) block<M, 1>(x, w, scale, y, N, K, n);
}

// Block sizes measured on a Zen 4 (2 cores, AVX-512): for one or two activation rows, short weight rows (K <= 1024)
// stream best one at a time and long ones eight at a time; more activation rows are compute-bound and share
// each activation load among a few weight rows.
template <typename W>
void dispatch(const float *x, const W *w, const float *scale, float *y, int64_t M, int64_t N, int64_t K, int threads) {
    const bool long_rows = K >= 2048;
    switch (M) {
    case 1: return long_rows ? run<1, 8>(x, w, scale, y, N, K, threads) : run<1, 1>(x, w, scale, y, N, K, threads);
    case 2: return long_rows ? run<2, 8>(x, w, scale, y, N, K, threads) : run<2, 1>(x, w, scale, y, N, K, threads);
    case 3: return run<3, 4>(x, w, scale, y, N, K, threads);
    case 4: return run<4, 4>(x, w, scale, y, N, K, threads);
    case 5: return run<5, 3>(x, w, scale, y, N, K, threads);
    case 6: return run<6, 3>(x, w, scale, y, N, K, threads);
    case 7: return run<7, 3>(x, w, scale, y, N, K, threads);
    default: return run<8, 3>(x, w, scale, y, N, K, threads);
    }
}

}  // namespace

extern "C" {
int zhiyin_max_rows() { return 8; }
void zhiyin_gemv_f32(const float *x, const float *w, float *y, int64_t M, int64_t N, int64_t K, int threads) {
    dispatch(x, w, nullptr, y, M, N, K, threads);
}
void zhiyin_gemv_bf16(const float *x, const uint16_t *w, float *y, int64_t M, int64_t N, int64_t K, int threads) {
    dispatch(x, w, nullptr, y, M, N, K, threads);
}
void zhiyin_gemv_i8(const float *x, const int8_t *w, const float *scale, float *y, int64_t M, int64_t N, int64_t K,
                    int threads) {
    dispatch(x, w, scale, y, M, N, K, threads);
}
}
