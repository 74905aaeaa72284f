// zhiyin's CPU kernels, built at first use by kernels.py with the system C++ compiler (-O3 -march=native -fopenmp)
// and called through ctypes. Its entry points:
//   zhiyin_linear        y = x W^T (a KernelLinear layer on its own: a few rows, or a prefill's many; EnCodec's LSTM
//                        input products)
//   zhiyin_lstm          an EnCodec LSTM layer's recurrence over every frame, in one call and one parallel region
//   zhiyin_decoder_step  one whole decoder step for one new position per row (each row at its own position, with
//                        its own text length), in one call and one parallel region: embeddings, every layer (norms,
//                        attention over the KV cache and the text, FFN), final norm, LM heads. It computes what
//                        modules/decoder.py's MusicgenDecoder.forward computes for T = 1.
//   zhiyin_choose        a request's next tokens from its logits (generation/sampling.py's PyTorch ops in one call),
//                        drawing PyTorch's random numbers itself (zhiyin_exponential: the same numbers alone)
//   zhiyin_convolution   one of EnCodec's decoder convolutions over time in panels of output columns (convolution.h),
//                        its weights packed once by zhiyin_pack_panels; zhiyin_direct_convolution a stride-1 one
//                        vectorized over time (zhiyin_pack_direct)
#ifdef _OPENMP
#include <omp.h>
#else  // a compiler without OpenMP (Apple's clang, clang without libomp): one thread, the pragmas ignored
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
#endif

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "matvec.h"
#include "convolution.h"

using namespace zhiyin;

namespace {

constexpr int64_t CHUNK_ROWS = 64;  // weight rows that stay in cache while many activation rows use them
// The fused step's products leave the last 1/POOL_PART of each thread's share of weight rows to a pool that the threads
// take from in blocks of POOL_BLOCK rows (whole int4 blocks and AMX tiles) once their own part is done
constexpr int64_t POOL_PART = 16, POOL_BLOCK = 32;
// At most this many bytes of a thread's share of the next product asked for while it waits at a barrier
constexpr int64_t AHEAD_BYTES = 256 << 10;

// The bytes of one row of w's weights (as matvec reads them; int4's group scales, int8's row scales aside)
inline int64_t weight_row_bytes(const Linear &w) {
    return w.type == I4 ? int4_columns(w.k) / 2 : w.type == I8 ? w.k : w.type == BF16 ? 2 * w.k : 4 * w.k;
}

// The fused step's barrier. A thread that arrives first spins a little (the others are microseconds behind when the
// machine is ours), then yields its CPU until they arrive: with another busy process on the machine a teammate may
// be waiting for a CPU, and a spinning thread would keep it waiting for a whole scheduler slice, at every barrier.
class Team {
  public:
    explicit Team(int threads) : threads_(threads) {}
    // ahead: bytes this thread reads next, asked for into the L2 cache while it waits, a few lines a turn, from
    // ahead.next on (which moves on past them) to ahead.end
    struct Ahead {
        const char *next = nullptr, *end = nullptr;
    };
    void wait(Ahead *ahead = nullptr) {
        if (threads_ == 1) return;
        const int generation = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_ - 1) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.store(generation + 1, std::memory_order_release);
            return;
        }
        for (int spin = 0; generation_.load(std::memory_order_acquire) == generation; spin++) {
            if (ahead && ahead->next < ahead->end) {
                for (int line = 0; line < AHEAD_LINES && ahead->next < ahead->end; line++, ahead->next += 64)
                    __builtin_prefetch(ahead->next, 0, 2);
            } else if (spin < SPINS) {
                relax();
            } else {
                sched_yield();
            }
        }
    }

  private:
    static constexpr int SPINS = 2000;  // tens of microseconds
    static constexpr int AHEAD_LINES = 8;
    static void relax() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        asm volatile("yield");
#endif
    }
    const int threads_;
    std::atomic<int> arrived_{0}, generation_{0};
};

// Activation rows ready for a product with w: the int16 or int8 copy only where w takes it.
struct Activations {
    std::vector<int16_t> q;
    std::vector<int8_t> bytes;
    std::vector<int32_t> offsets;
    std::vector<float> scale;
    // room for m rows of k columns as w takes them (only ever grows; the threads then write rows in parallel)
    void reserve(int64_t m, int64_t k, const Linear &w) {
        const int64_t kp = int4_columns(k);
        const auto grow = [](auto &v, int64_t size) { if (int64_t(v.size()) < size) v.resize(size); };
        const ActivationType type = activations(w);
        if (type == INT16_ROWS) grow(q, m * k);
        if (type == INT8_ROWS) grow(bytes, m * kp), grow(offsets, m * kp / INT4_GROUP);
        if (type != FLOAT_ROWS) grow(scale, m);
    }
    // row r of x [m, k] into the copy w takes (rows split among threads write their own)
    void quantize(const float *x, int64_t r, int64_t k, const Linear &w) {
        const int64_t kp = int4_columns(k);
        const ActivationType type = activations(w);
        if (type == INT16_ROWS) quantize_rows(x + r * k, 1, k, q.data() + r * k, scale.data() + r);
        if (type == INT8_ROWS)
            quantize_bytes(x + r * k, 1, k, bytes.data() + r * kp, offsets.data() + r * kp / INT4_GROUP,
                           scale.data() + r);
    }
    Rows rows(const float *x, int64_t m, const Linear &w) const {  // x as w takes it (after quantize)
        switch (activations(w)) {
        case INT16_ROWS: return Rows{x, q.data(), scale.data(), m};
        case INT8_ROWS: return Rows{x, nullptr, scale.data(), m, bytes.data(), offsets.data()};
        default: return Rows{x, nullptr, nullptr, m};
        }
    }
};

void layer_norm(const float *x, const float *weight, const float *bias, float eps, int64_t d, float *y) {  // one row
    vf32 acc = {};
    int64_t j = 0;
    for (; j + LANES <= d; j += LANES) acc += load(x + j);
    float mean = hsum(acc);
    for (; j < d; j++) mean += x[j];
    mean /= float(d);
    acc = vf32{};
    for (j = 0; j + LANES <= d; j += LANES) {
        vf32 c = load(x + j) - mean;
        acc += c * c;
    }
    float var = hsum(acc);
    for (; j < d; j++) var += (x[j] - mean) * (x[j] - mean);
    const float inverse = 1.f / std::sqrt(var / float(d) + eps);
    for (j = 0; j + LANES <= d; j += LANES)
        store(y + j, (load(x + j) - mean) * inverse * load(weight + j) + load(bias + j));
    for (; j < d; j++) y[j] = (x[j] - mean) * inverse * weight[j] + bias[j];
}

template <typename T>
float dot(const float *q, const T *k, int64_t n) {
    vf32 acc = {};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES) acc = multiply_add(load(q + j), load(k + j), acc);
    float s = hsum(acc);
    for (; j < n; j++) s = multiply_add(q[j], one(k + j), s);
    return s;
}

// A key or value vector x [n] into a KV cache of float32, bfloat16 or int8 (with its scale: x ~= q * scale, the
// numbers of modules/quantization.py's quantize_int8)
void store_vector(const float *x, int64_t n, float *to, float *) { std::copy(x, x + n, to); }
void store_vector(const float *x, int64_t n, uint16_t *to, float *) {
    for (int64_t j = 0; j < n; j++) to[j] = to_bf16(x[j]);
}
void store_vector(const float *x, int64_t n, int8_t *to, float *scale) {
    const float top = largest_magnitude(x, n);
    const float s = std::max(top / 127.f, 1e-12f);
    for (int64_t j = 0; j < n; j++) to[j] = int8_t(std::min(127.f, std::max(-127.f, std::nearbyint(x[j] / s))));
    *scale = s;
}

// Attention reads a KV cache that the step's weights pushed out of the CPU's caches, a short run of rows per query:
// it asks for them ahead, into the L2 cache (as the products do: into L1, the requests in flight capped a core's
// stream, BENCHMARKS.md, "Attention's reads"). While it reads a query's keys it asks for those KV_AHEAD positions
// on and for the values, which it reads next; while it reads the values, for the keys of the query that comes next
// (NextKeys), so that the memory is busy in both passes.
constexpr int64_t KV_AHEAD = 32;  // positions

template <typename T>
inline void ask_for(const T *row, int64_t n) {  // n elements into the cache, a line at a time (a hint: never faults)
    for (int64_t b = 0; b < n * int64_t(sizeof(T)); b += 64) __builtin_prefetch((const char *)row + b, 0, 2);
}

// The keys [length, dh] of the query a thread attends with next (none: null)
template <typename T>
struct NextKeys {
    const T *keys = nullptr;
    int64_t length = 0;
};

// out [V * LANES] = sum over t of p_t * values[t] (p_t = scores[t] x the value's scale), the sums held in registers
// (in memory, each position's adds waited for the last one's stores), added in the same order: the same numbers;
// meanwhile next's keys asked for, a row a position
template <int V, typename T>
inline void weighted_values(const float *scores, const T *values, const float *value_scales, int64_t length,
                            const NextKeys<T> &next, float *out) {
    vf32 acc[V] = {};
    for (int64_t t = 0; t < length; t++) {
        if (t < next.length) ask_for(next.keys + t * V * LANES, V * LANES);
        const float p = value_scales ? scores[t] * value_scales[t] : scores[t];
        for (int i = 0; i < V; i++) acc[i] += p * load(values + t * V * LANES + i * LANES);
    }
    for (int64_t t = length; t < next.length; t++) ask_for(next.keys + t * V * LANES, V * LANES);
    for (int i = 0; i < V; i++) store(out + i * LANES, acc[i]);
}

// q . keys[l] for l in [0, length) -> scores[l], scaled (by `scale`, and int8's scale per position) and masked,
// keys [length, dh], asking for the values [length, dh] as it goes; returns the largest. V: dh as V whole vectors,
// known when compiled (a key's products added as `dot` adds them: the same numbers); 0: any dh.
template <int V, typename T>
float key_scores(const float *q, const T *keys, const float *key_scales, const T *values, int64_t length, int64_t dh,
                 float scale, const float *mask, float *scores) {
    const int64_t row = V > 0 ? V * LANES : dh;  // (a constant where it can be: a request a line, no loop)
    for (int64_t l = 0; l < std::min(length, KV_AHEAD); l++) ask_for(keys + l * dh, row);
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t l = 0; l < length; l++) {
        ask_for(keys + (l + KV_AHEAD) * dh, row);
        ask_for(values + l * dh, row);
        float sum;
        if constexpr (V > 0) {
            vf32 acc = {};
            for (int j = 0; j < V; j++) acc = multiply_add(load(q + j * LANES), load(keys + l * dh + j * LANES), acc);
            sum = hsum(acc);
        } else {
            sum = dot(q, keys + l * dh, dh);
        }
        const float s = multiply_add(sum, key_scales ? key_scales[l] * scale : scale, mask ? mask[l] : 0.f);
        scores[l] = s;
        top = std::max(top, s);
    }
    return top;
}

// One query q [dh] against keys/values [length, dh] (float32, bfloat16, or int8 with a scale per position):
// softmax(q k^T / sqrt(dh) + mask) v -> out [dh]; length 0: zeros (a text whose values are all zeros); next: the
// keys this thread reads after these, asked for meanwhile. V: dh as V whole vectors, known when compiled (the
// published models' 64); 0: any dh.
template <int V, typename T>
void attend_width(const float *q, const T *keys, const float *key_scales, const T *values, const float *value_scales,
                  int64_t length, int64_t dh, const float *mask, const NextKeys<T> &next, float *scores, float *out) {
    const float top = key_scores<V>(q, keys, key_scales, values, length, dh, 1.f / std::sqrt(float(dh)), mask, scores);
    vf32 total = {};
    int64_t l = 0;
    for (; l + LANES <= length; l += LANES) {
        vf32 e = zhiyin::exp(load(scores + l) - top);
        store(scores + l, e);
        total += e;
    }
    float sum = hsum(total);
    for (; l < length; l++) {
        vf32 e = zhiyin::exp(splat(scores[l] - top));
        scores[l] = e[0];
        sum += e[0];
    }
    if constexpr (V > 0) {
        weighted_values<V>(scores, values, value_scales, length, next, out);
    } else {
        for (int64_t t = 0; t < next.length; t++) ask_for(next.keys + t * dh, dh);
        std::fill(out, out + dh, 0.f);
        for (int64_t t = 0; t < length; t++) {
            const float p = value_scales ? scores[t] * value_scales[t] : scores[t];
            const T *v = values + t * dh;
            int64_t j = 0;
            for (; j + LANES <= dh; j += LANES) store(out + j, load(out + j) + p * load(v + j));
            for (; j < dh; j++) out[j] += p * one(v + j);
        }
    }
    const float inverse = 1.f / sum;
    for (int64_t j = 0; j < dh; j++) out[j] *= inverse;
}

template <typename T>
void attend(const float *q, const T *keys, const float *key_scales, const T *values, const float *value_scales,
            int64_t length, int64_t dh, const float *mask, const NextKeys<T> &next, float *scores, float *out) {
    if (length == 0) return std::fill(out, out + dh, 0.f);
    switch (dh == 4 * LANES ? 4 : dh == 8 * LANES ? 8 : 0) {
    case 4: return attend_width<4>(q, keys, key_scales, values, value_scales, length, dh, mask, next, scores, out);
    case 8: return attend_width<8>(q, keys, key_scales, values, value_scales, length, dh, mask, next, scores, out);
    default: return attend_width<0>(q, keys, key_scales, values, value_scales, length, dh, mask, next, scores, out);
    }
}

// Guided scores of one codebook's row: uncond + (cond - uncond) * guidance, rounded as PyTorch's three float ops are
// (no fused multiply-add: greedy decoding takes exact ties as the reference does), or cond itself (uncond null).
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void guide(const float *cond, const float *uncond, float guidance, int64_t V, float *out) {
#ifdef __clang__
#pragma clang fp contract(off)
#endif
    if (!uncond) {
        std::copy(cond, cond + V, out);
        return;
    }
    for (int64_t j = 0; j < V; j++) out[j] = uncond[j] + (cond[j] - uncond[j]) * guidance;
}

// the largest of x [n] (no NaN in it) and the first index holding it (torch.argmax's)
int64_t first_largest(const float *x, int64_t n) {
    vf32 most = splat(-std::numeric_limits<float>::infinity());
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES) most = select(load(x + j) > most, load(x + j), most);
    float top = most[0];
    for (int i = 1; i < LANES; i++) top = std::max(top, most[i]);
    for (; j < n; j++) top = std::max(top, x[j]);
    return std::find(x, x + n, top) - x;
}

bool has_nan(const float *x, int64_t n) {
    vi32 nan = {};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES) nan |= load(x + j) != load(x + j);
    bool any = false;
    for (int i = 0; i < LANES; i++) any |= nan[i] != 0;
    for (; j < n; j++) any |= std::isnan(x[j]);
    return any;
}

// An LSTM cell's state c and output h after a frame, from its gates' values (i, f, g, o: inputs + products)
inline void lstm_cell(vf32 i, vf32 f, vf32 g, vf32 o, vf32 &c, vf32 &h) {
    c = sigmoid(f) * c + sigmoid(i) * zhiyin::tanh(g);
    h = sigmoid(o) * zhiyin::tanh(c);
}

// The k-th largest of x [n] (no NaN; 1 <= k <= n), found bit by bit as the largest t with at least k of x >= t, over
// integer keys that order as the floats do (keys [n] is room for them): counting is branch-free, where a sort's
// comparisons mispredict on scores it has not seen before
float kth_largest(const float *x, int64_t n, int64_t k, int32_t *keys) {
    int64_t lo = std::numeric_limits<int32_t>::max(), hi = std::numeric_limits<int32_t>::min();
    for (int64_t j = 0; j < n; j++) {
        int32_t b;
        std::memcpy(&b, x + j, 4);
        keys[j] = b ^ ((b >> 31) & 0x7fffffff);  // negative floats' bits count down: flipped, they count up
        lo = std::min<int64_t>(lo, keys[j]);
        hi = std::max<int64_t>(hi, keys[j]);
    }
    hi += 1;  // at least k keys >= lo, fewer than k >= hi
    while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        const int32_t t = int32_t(mid);
        vi32 count = {};
        int64_t j = 0, at_least = 0;
        for (; j + LANES <= n; j += LANES) {
            vi32 v;
            std::memcpy(&v, keys + j, sizeof v);
            count -= v >= (vi32{} + t);  // true lanes are -1
        }
        for (int i = 0; i < LANES; i++) at_least += count[i];
        for (; j < n; j++) at_least += keys[j] >= t;
        (at_least >= k ? lo : hi) = mid;
    }
    const int32_t key = int32_t(lo), b = key ^ ((key >> 31) & 0x7fffffff);
    float kth;
    std::memcpy(&kth, &b, 4);
    return kth;
}

// PyTorch's CPU random generator (CPUGeneratorImpl) from the bytes its get_state() returns, drawing as it draws: its
// Mersenne Twister (ATen's mt19937) and uniform_real_distribution<double>. save() writes the advanced state back.
class TorchGenerator {
  public:
    static constexpr int64_t N = 624, M = 397;  // the twister's state words, its offset (get_state: 5056 bytes)
    explicit TorchGenerator(uint8_t *bytes) : bytes_(bytes) {
        uint64_t next, word;
        std::memcpy(&left_, bytes + LEFT, 4);
        std::memcpy(&next, bytes + NEXT, 8);
        next_ = int32_t(next);
        for (int64_t i = 0; i < N; i++) {
            std::memcpy(&word, bytes + STATE + 8 * i, 8);
            state_[i] = uint32_t(word);
        }
        temper();
    }
    void save() const {
        const uint64_t next = uint64_t(next_);
        std::memcpy(bytes_ + LEFT, &left_, 4);
        std::memcpy(bytes_ + NEXT, &next, 8);
        for (int64_t i = 0; i < N; i++) {
            const uint64_t word = state_[i];
            std::memcpy(bytes_ + STATE + 8 * i, &word, 8);
        }
    }
    uint32_t next() {
        if (--left_ == 0) {
            twist();
            temper();
        }
        return tempered_[next_++];
    }
    double uniform() {  // 53 bits of random64(), which is two draws, the first the high half
        const uint64_t high = next(), low = next();
        return double(((high << 32) | low) & ((uint64_t(1) << 53) - 1)) * 0x1p-53;
    }

  private:
    // get_state's layout (THGeneratorState): the initial seed, left, seeded, next, the state words as uint64
    static constexpr int64_t LEFT = 8, NEXT = 16, STATE = 24;
    static uint32_t mix(uint32_t u, uint32_t v) {
        return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ (v & 1 ? 0x9908b0dfu : 0u);
    }
    void twist() {
        for (int64_t i = 0; i < N - M; i++) state_[i] = state_[i + M] ^ mix(state_[i], state_[i + 1]);
        for (int64_t i = N - M; i < N - 1; i++) state_[i] = state_[i + M - N] ^ mix(state_[i], state_[i + 1]);
        state_[N - 1] = state_[M - 1] ^ mix(state_[N - 1], state_[0]);
        left_ = N;
        next_ = 0;
    }
    void temper() {  // every word's output, computed at once (the draws then only read them)
        for (int64_t i = 0; i < N; i++) {
            uint32_t y = state_[i];
            y ^= y >> 11;
            y ^= (y << 7) & 0x9d2c5680u;
            y ^= (y << 15) & 0xefc60000u;
            tempered_[i] = y ^ (y >> 18);
        }
    }
    uint8_t *bytes_;
    int32_t left_, next_;
    uint32_t state_[N], tempered_[N];
};

// An Exp(1) number from a uniform one, as PyTorch's CPU exponential_ computes it (in double, then rounded to float)
inline float exponential(double u) { return float(-1.0 * std::log1p(-u)); }

}  // namespace

// The weights and state of one decoder step; fused_step.py mirrors the layout in ctypes (checked at load by size).
struct Layer {
    const float *self_norm_weight, *self_norm_bias;
    Linear qkv, self_out;
    const float *cross_norm_weight, *cross_norm_bias;  // null: no cross-attention (melody models)
    Linear cross_q, cross_out;
    const float *ffn_norm_weight, *ffn_norm_bias;
    Linear fc1, fc2;
    void *cache_k, *cache_v;         // [rows, heads, max_len, head_dim], float32, bfloat16 or int8 (cache_type)
    float *cache_k_scale, *cache_v_scale;  // int8: [rows, heads, max_len]
    const float *text_k, *text_v;    // [rows, heads, text_len, head_dim]
};

struct Step {
    int64_t rows, dim, heads, ffn_dim, codebooks, vocab, max_len, text_len, layers;
    int32_t cache_type, gelu, threads, first_row;  // cache_type: a WeightType; the rows stepped: first_row..+rows
    float eps, embed_scale;
    const Layer *layer;
    const float *const *embeddings;  // codebooks tables [vocab + 1, dim]
    const float *position_table;     // [max_len, dim] sinusoidal
    const float *text_mask;          // [rows, text_len], additive
    const int64_t *text_lengths;     // [rows]: each row attends to its text positions 0..text_lengths[row]-1 (0: none)
    const float *norm_weight, *norm_bias;
    const Linear *lm_heads;          // codebooks x [vocab, dim]
};

// One row and head of self-attention at `position`: its key k and value v [dh] into the layer's cache at `slot`
// (row * heads + head: keys/values [max_len, dh], for int8 their scales [max_len]), then its query q over the
// positions 0..position of that slot; next_slot, next_length: the slot and length this thread attends over next (-1:
// none).
template <typename T>
void cache_and_attend(const Layer &L, int64_t max_len, int64_t slot, int64_t position, int64_t dh, const float *q,
                      const float *k, const float *v, int64_t next_slot, int64_t next_length, float *scores,
                      float *out) {
    T *keys = static_cast<T *>(L.cache_k) + slot * max_len * dh, *values = static_cast<T *>(L.cache_v) + slot * max_len * dh;
    float *k_scales = L.cache_k_scale ? L.cache_k_scale + slot * max_len : nullptr;
    float *v_scales = L.cache_v_scale ? L.cache_v_scale + slot * max_len : nullptr;
    store_vector(k, dh, keys + position * dh, k_scales ? k_scales + position : nullptr);
    store_vector(v, dh, values + position * dh, v_scales ? v_scales + position : nullptr);
    NextKeys<T> next;
    if (next_slot >= 0) next = {static_cast<const T *>(L.cache_k) + next_slot * max_len * dh, next_length};
    attend(q, keys, k_scales, values, v_scales, position + 1, dh, nullptr, next, scores, out);
}

extern "C" {

// The size of a structure that Python mirrors in ctypes: 0 Linear, 1 Layer, 2 Step
int64_t zhiyin_struct_size(int which) {
    return which == 0 ? sizeof(Linear) : which == 1 ? sizeof(Layer) : which == 2 ? sizeof(Step) : -1;
}

int zhiyin_int16() { return INT16_ACTIVATIONS; }  // 1: int8 products take the activations as int16 (int4 ones as int8)

// The fewest rows whose int8 products run on AMX tiles (given the weights as tiles), or 0: built for a CPU without
// them, or Linux does not let this process use them (the permission is asked for once, for every thread)
int zhiyin_amx_rows() {
#if ZHIYIN_AMX && defined(__linux__)
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    static const bool allowed = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return allowed ? STREAMED_ROWS + 1 : 0;
#else
    return 0;
#endif
}

#ifdef _OPENMP
int zhiyin_openmp() { return 1; }
#else
int zhiyin_openmp() { return 0; }
#endif

// y [m, n] = x [m, k] . W^T. Up to MAX_ROWS rows, or on AMX tiles, the threads split W's rows; more rows (a
// prefill) go over W in chunks of CHUNK_ROWS rows, each kept in cache while every activation row passes over it.
void zhiyin_linear(const Linear *w, const float *x, float *y, int64_t m, int threads) {
    Activations input;
    input.reserve(m, w->k, *w);
    for (int64_t r = 0; r < m; r++) input.quantize(x, r, w->k, *w);
    const Rows all = input.rows(x, m, *w);
    #pragma omp parallel num_threads(threads)
    {
        if (m <= MAX_ROWS || w->tiles) {
            int64_t n0, n1;
            share(w->n, omp_get_thread_num(), omp_get_num_threads(), n0, n1);
            matvec(*w, all, y, w->n, false, n0, n1);
        } else {
            const int64_t chunks = (w->n + CHUNK_ROWS - 1) / CHUNK_ROWS;
            #pragma omp for schedule(static)
            for (int64_t c = 0; c < chunks; c++)
                matvec(*w, all, y, w->n, false, c * CHUNK_ROWS, std::min(w->n, (c + 1) * CHUNK_ROWS));
        }
    }
}

// One EnCodec LSTM layer's recurrence over T frames (modules/encodec.py's LSTMArithmetic.frames): at frame t the
// gates [B, 4C] (blocks i, f, g, o) = inputs[t] + h W^T, then c = sigmoid(f) c + sigmoid(i) tanh(g) and
// h = y[t] = sigmoid(o) tanh(c). h, c [B, C] hold the state before frame 0 and are left with the one after frame
// T - 1; inputs [T, B, 4C], y [T, B, C]; W [4C, C] float32 or bfloat16. Each thread owns a share of the channels:
// the four gate rows of each of its channels, their products (zhiyin_linear's sums: the same bits at any thread
// count), their c and h. One barrier a frame: the next frame's products read all of h.
void zhiyin_lstm(const Linear *w, const float *inputs, float *h, float *c, float *y, int64_t T, int64_t B, int64_t C,
                 int threads) {
    std::vector<float> gates(B * 4 * C);
    std::unique_ptr<Team> team;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp single
        team = std::make_unique<Team>(omp_get_num_threads());
        int64_t c0, c1;
        share(C, omp_get_thread_num(), omp_get_num_threads(), c0, c1);
        for (int64_t t = 0; t < T; t++) {
            const Rows state{t == 0 ? h : y + (t - 1) * B * C, nullptr, nullptr, B};
            for (int64_t g = 0; g < 4; g++) matvec(*w, state, gates.data(), 4 * C, false, g * C + c0, g * C + c1);
            for (int64_t b = 0; b < B; b++) {
                const float *in = inputs + (t * B + b) * 4 * C, *gate = gates.data() + b * 4 * C;
                float *cell = c + b * C, *out = y + (t * B + b) * C;
                int64_t j = c0;
                for (; j + LANES <= c1; j += LANES) {
                    const auto at = [&](int64_t k) { return load(gate + k) + load(in + k); };
                    vf32 cell_j = load(cell + j), h_j;
                    lstm_cell(at(j), at(C + j), at(2 * C + j), at(3 * C + j), cell_j, h_j);
                    store(cell + j, cell_j);
                    store(out + j, h_j);
                }
                for (; j < c1; j++) {  // one channel in the first lane: the same numbers
                    const auto at = [&](int64_t k) { return splat(gate[k] + in[k]); };
                    vf32 cell_j = splat(cell[j]), h_j;
                    lstm_cell(at(j), at(C + j), at(2 * C + j), at(3 * C + j), cell_j, h_j);
                    cell[j] = cell_j[0];
                    out[j] = h_j[0];
                }
            }
            team->wait();
        }
    }
    if (T > 0) std::copy(y + (T - 1) * B * C, y + T * B * C, h);
}

// tokens [rows, codebooks], row m at positions[m] (0-based; its KV cache holds the positions before it) -> logits
// [rows, codebooks, vocab]; writes each row's keys/values at its position into the cache. Row m is the cache's (and
// the text's) row first_row + m. Returns 0, or with nothing computed 1 for a token outside 0..vocab (the pad token),
// 2 for a position outside the cache.
int zhiyin_decoder_step(const Step *s, const int64_t *tokens, const int64_t *positions, float *logits) {
    const int64_t M = s->rows, D = s->dim, H = s->heads, dh = D / H, F = s->ffn_dim, V = s->vocab;
    if (std::any_of(tokens, tokens + M * s->codebooks, [&](int64_t t) { return t < 0 || t > V; })) return 1;
    if (std::any_of(positions, positions + M, [&](int64_t p) { return p < 0 || p >= s->max_len; })) return 2;
    const int64_t longest = std::max(s->max_len, s->text_len);
    std::vector<float> x(M * D), h(M * D), qkv(M * 3 * D), attention(M * D), q(M * D), hidden(M * F);
    std::vector<float> scores(size_t(s->threads) * longest);
    Activations input;  // the integer rows, shared by the threads
    for (int64_t i = 0; i < s->layers; i++) {
        const Layer &L = s->layer[i];
        for (const Linear *w : {&L.qkv, &L.self_out, &L.cross_q, &L.cross_out, &L.fc1}) input.reserve(M, D, *w);
        input.reserve(M, F, L.fc2);
    }
    input.reserve(M, D, s->lm_heads[0]);
    std::unique_ptr<Team> team;  // made inside the parallel region, which knows how many threads it got
    // the products in the order the step runs them (at a barrier each thread asks for the start of its share of the
    // next one's weights: Team::wait's ahead), and each one's count of the blocks taken from its pool (product, below)
    std::vector<const Linear *> order;
    for (int64_t i = 0; i < s->layers; i++) {
        const Layer &L = s->layer[i];
        order.insert(order.end(), {&L.qkv, &L.self_out});
        if (L.cross_norm_weight) order.insert(order.end(), {&L.cross_q, &L.cross_out});
        order.insert(order.end(), {&L.fc1, &L.fc2});
    }
    for (int64_t c = 0; c < s->codebooks; c++) order.push_back(&s->lm_heads[c]);
    std::unique_ptr<std::atomic<int64_t>[]> taken(new std::atomic<int64_t>[order.size()]);
    for (size_t i = 0; i < order.size(); i++) taken[i].store(0, std::memory_order_relaxed);
    const auto self_attend = s->cache_type == BF16 ? cache_and_attend<uint16_t>
                             : s->cache_type == I8 ? cache_and_attend<int8_t> : cache_and_attend<float>;

    #pragma omp parallel num_threads(s->threads)
    {
        const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
        #pragma omp single
        team = std::make_unique<Team>(threads);  // single ends in a barrier: every thread sees the team
        float *my_scores = scores.data() + thread * longest;
        Rows rows{};
        int64_t calls = 0;  // the products this thread has started
        Team::Ahead ahead;
        int64_t ahead_of = -1;  // the product whose weights `ahead` holds
        auto wait = [&] {
            if (ahead_of != calls && calls < int64_t(order.size())) {
                ahead_of = calls;
                const Linear &w = *order[calls];
                int64_t n0, n1;
                share(w.n, thread, threads, n0, n1);
                const int64_t row = weight_row_bytes(w);
                ahead.next = w.tiles ? nullptr : static_cast<const char *>(w.weight) + n0 * row;
                ahead.end = w.tiles ? nullptr : ahead.next + std::min((n1 - n0) * row, AHEAD_BYTES);
            }
            team->wait(&ahead);
        };
        // rows of src [M, k] -> (layer-normed into dst if norm_weight) ready for w; split by rows, ends in a barrier
        auto prepare = [&](const float *src, int64_t k, const Linear &w, const float *norm_weight,
                           const float *norm_bias, float *dst) {
            #pragma omp for schedule(static) nowait
            for (int64_t m = 0; m < M; m++) {
                if (norm_weight) layer_norm(src + m * k, norm_weight, norm_bias, s->eps, k, dst + m * k);
                input.quantize(dst, m, k, w);
            }
            wait();
            rows = input.rows(dst, M, w);
        };
        // y (+)= rows . W^T over W's rows: this thread's share but its tail, then blocks from the pool of every
        // share's tail, whichever thread is free first: a thread that runs late at this product leaves some of its
        // rows to the other (each row's numbers do not depend on who computes it or the rows beside it); then(n0, n1)
        // after each range this thread computed. Each product of the step has its pool (taken, counted by calls).
        auto product = [&](const Linear &w, float *y, int64_t ldy, bool add, auto &&then) {
            std::atomic<int64_t> &pool = taken[calls++];
            const auto tail = [&](int t, int64_t &n0, int64_t &n1) {  // thread t's share and the start of its tail
                share(w.n, t, threads, n0, n1);
                return threads > 1 ? n1 - (n1 - n0) / POOL_PART / POOL_BLOCK * POOL_BLOCK : n1;
            };
            int64_t n0, n1;
            const int64_t own = tail(thread, n0, n1);
            matvec(w, rows, y, ldy, add, n0, own);
            then(n0, own);
            for (;;) {
                int64_t b = pool.fetch_add(1, std::memory_order_relaxed), start = 0, a0, a1;
                int t = 0;
                for (; t < threads; t++) {  // block b of the tails, in thread order
                    start = tail(t, a0, a1);
                    const int64_t blocks = (a1 - start + POOL_BLOCK - 1) / POOL_BLOCK;
                    if (b < blocks) break;
                    b -= blocks;
                }
                if (t == threads) break;
                const int64_t m0 = start + b * POOL_BLOCK, m1 = std::min(a1, m0 + POOL_BLOCK);
                matvec(w, rows, y, ldy, add, m0, m1);
                then(m0, m1);
            }
        };
        const auto nothing = [](int64_t, int64_t) {};

        #pragma omp for schedule(static) nowait
        for (int64_t m = 0; m < M; m++) {  // token embeddings, summed over codebooks, scaled, plus the position's
            float *row = x.data() + m * D;
            for (int64_t c = 0; c < s->codebooks; c++) {
                const float *e = s->embeddings[c] + tokens[m * s->codebooks + c] * D;
                for (int64_t j = 0; j < D; j++) row[j] = c == 0 ? e[j] : row[j] + e[j];
            }
            const float *p = s->position_table + positions[m] * D;
            for (int64_t j = 0; j < D; j++) row[j] = row[j] * s->embed_scale + p[j];
        }
        wait();
        // a (row, head) query's slot: its row's place among all the cache's rows, times the heads, plus its head
        const auto slot = [&](int64_t task) { return (s->first_row + task / H) * H + task % H; };
        for (int64_t i = 0; i < s->layers; i++) {
            const Layer &L = s->layer[i];
            // self-attention: this position's keys/values into the cache, then one query per row and head
            prepare(x.data(), D, L.qkv, L.self_norm_weight, L.self_norm_bias, h.data());
            product(L.qkv, qkv.data(), 3 * D, false, nothing);
            wait();
            {  // this thread's run of the (row, head) queries, each asking for the next one's keys as it ends
                const int64_t first = M * H * thread / threads, end = M * H * (thread + 1) / threads;
                for (int64_t task = first; task < end; task++) {
                    const int64_t m = task / H, head = task % H, next = task + 1;
                    const float *qh = qkv.data() + m * 3 * D + head * dh, *kh = qh + D, *vh = qh + 2 * D;
                    self_attend(L, s->max_len, slot(task), positions[m], dh, qh, kh, vh, next < end ? slot(next) : -1,
                                next < end ? positions[next / H] + 1 : 0, my_scores,
                                attention.data() + m * D + head * dh);
                }
            }
            wait();
            prepare(attention.data(), D, L.self_out, nullptr, nullptr, attention.data());
            product(L.self_out, x.data(), D, true, nothing);  // + residual
            wait();
            if (L.cross_norm_weight) {  // cross-attention over the text (its keys/values were computed once)
                prepare(x.data(), D, L.cross_q, L.cross_norm_weight, L.cross_norm_bias, h.data());
                product(L.cross_q, q.data(), D, false, nothing);
                wait();
                // heads dealt in turn: a row without text (guidance's null one, length 0) leaves every thread an
                // equal share of the rows with text
                // where a (row, head) query's text keys/values start
                const auto text_at = [&](int64_t task) { return slot(task) * s->text_len * dh; };
                for (int64_t task = thread; task < M * H; task += threads) {
                    const int64_t m = task / H, head = task % H, row = s->first_row + m, next = task + threads;
                    NextKeys<float> next_keys;  // (none after the last query)
                    if (next < M * H) next_keys = {L.text_k + text_at(next), s->text_lengths[s->first_row + next / H]};
                    attend(q.data() + m * D + head * dh, L.text_k + text_at(task), nullptr, L.text_v + text_at(task),
                           nullptr, s->text_lengths[row], dh, s->text_mask + row * s->text_len, next_keys, my_scores,
                           attention.data() + m * D + head * dh);
                }
                wait();
                prepare(attention.data(), D, L.cross_out, nullptr, nullptr, attention.data());
                product(L.cross_out, x.data(), D, true, nothing);
                wait();
            }
            // feed-forward: each thread applies the activation to the fc1 outputs it computed itself (the ranges
            // `product` hands to `then`), so no barrier is needed between the two
            prepare(x.data(), D, L.fc1, L.ffn_norm_weight, L.ffn_norm_bias, h.data());
            product(L.fc1, hidden.data(), F, false, [&](int64_t f0, int64_t f1) {
                for (int64_t m = 0; m < M; m++) {
                    float *row = hidden.data() + m * F;
                    int64_t j = f0;
                    if (s->gelu) {
                        for (; j + LANES <= f1; j += LANES) store(row + j, gelu(load(row + j)));
                        for (; j < f1; j++) row[j] = gelu(splat(row[j]))[0];
                    } else {
                        for (; j < f1; j++) row[j] = std::max(row[j], 0.f);
                    }
                }
            });
            wait();
            prepare(hidden.data(), F, L.fc2, nullptr, nullptr, hidden.data());
            product(L.fc2, x.data(), D, true, nothing);
            wait();
        }
        prepare(x.data(), D, s->lm_heads[0], s->norm_weight, s->norm_bias, h.data());
        for (int64_t c = 0; c < s->codebooks; c++)
            product(s->lm_heads[c], logits + c * V, s->codebooks * V, false, nothing);
    }
    return 0;
}


// EnCodec's convolutions over time (csrc/convolution.h): the floats of a packed weight matrix, its packing (b [K, N]
// row-major), and x [C_in, T] -> out [C_out, rows x phases], rows = T + 2 pad - taps + 1, for a weight matrix of
// K = taps x C_in rows and N = C_out x phases columns; bias [C_out] or null; ELU on x first where elu
int64_t zhiyin_panel_floats(int64_t K, int64_t n) { return panels(n) * K * PANEL; }
void zhiyin_pack_panels(const float *b, int64_t K, int64_t n, float *packed) { pack_panels(b, K, n, packed); }
void zhiyin_convolution(const float *x, int64_t c_in, int64_t T, int64_t pad, int64_t taps, int elu, const float *packed,
                        const float *bias, int64_t c_out, int64_t phases, float *out, int threads) {
    const int64_t times = T + 2 * pad, rows = times - taps + 1;
    std::unique_ptr<float[]> xt(new float[times * c_in]);  // every element written by lay_out
    #pragma omp parallel num_threads(threads)
    {
        const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
        constexpr int64_t TIMES = 64;  // a block of times, laid out through the cache
        const int64_t blocks = (times + TIMES - 1) / TIMES;
        for (int64_t b = blocks * thread / threads; b < blocks * (thread + 1) / threads; b++)
            lay_out(x, c_in, T, pad, elu, xt.get(), b * TIMES, std::min(times, (b + 1) * TIMES));
        #pragma omp barrier
        if (rows > 0) convolution_share(xt.get(), c_in, taps, rows, packed, bias, c_out, phases, out, thread, threads);
    }
}

// A stride-1 convolution (convolution.h's direct_share): the floats of its packed weights, their packing
// (w [C_out, C_in k] row-major), and x [C_in, T] (row i at x + i ldx) padded by left and right (reflected where
// reflect, else zeros) -> out [C_out, left + T + right - k + 1]; bias [C_out] or null; ELU on x first where elu
int64_t zhiyin_direct_floats(int64_t c_out, int64_t K) { return direct_blocks(c_out) * K * DIRECT_ROWS; }
void zhiyin_pack_direct(const float *w, int64_t c_out, int64_t K, float *packed) { pack_direct(w, c_out, K, packed); }
void zhiyin_direct_convolution(const float *x, int64_t ldx, int64_t c_in, int64_t T, int64_t left, int64_t right,
                               int reflect, int64_t taps, int elu, const float *packed, const float *bias,
                               int64_t c_out, float *out, int threads) {
    if (left + T + right < taps) return;
    #pragma omp parallel num_threads(threads)
    direct_share(x, ldx, c_in, T, left, right, reflect, taps, elu, packed, bias, c_out, out, omp_get_thread_num(),
                 omp_get_num_threads());
}

// One request's next tokens, as generation/sampling.py's PyTorch path chooses them: logits [R, K, V], with guidance
// R = 2 * items rows, the conditional ones first (guidance 0: R = items, unguided); the scores divided by
// temperature, the top_k largest of each row kept (ties with the k-th kept; 0: all), their softmax, and the token
// that maximizes probability / noise, the noise being the Exp(1) numbers [items * K, V] that PyTorch's generator
// would draw next (torch.multinomial's algorithm), drawn here from its state (`generator`, get_state's bytes, advanced
// in place as PyTorch's draw would advance it); no generator: the largest guided score (greedy). tokens
// [copies, items * K]: each copy the same tokens (a guided request's decoder rows take its items' tokens twice).
// Returns 1 with nothing drawn and no token written where a score is NaN (the PyTorch path then decides, as the
// reference does), else 0.
int zhiyin_choose(const float *logits, int64_t items, int64_t K, int64_t V, float guidance, float temperature,
                  int64_t top_k, uint8_t *generator, int64_t *tokens, int64_t copies) {
    const int64_t rows = items * K;
    std::vector<float> scores(rows * V), kept(V);
    std::vector<int32_t> keys(V);
    for (int64_t row = 0; row < rows; row++) {
        const float *uncond = guidance > 0 ? logits + (rows + row) * V : nullptr;
        guide(logits + row * V, uncond, guidance, V, scores.data() + row * V);
        if (has_nan(scores.data() + row * V, V)) return 1;
    }
    std::unique_ptr<TorchGenerator> draw(generator ? new TorchGenerator(generator) : nullptr);
    for (int64_t row = 0; row < rows; row++) {
        float *x = scores.data() + row * V;
        if (!draw) {
            tokens[row] = first_largest(x, V);
            continue;
        }
        if (temperature != 1.f)
            for (int64_t j = 0; j < V; j++) x[j] /= temperature;
        const float kth = top_k > 0 && top_k < V ? kth_largest(x, V, top_k, keys.data())
                                                 : -std::numeric_limits<float>::infinity();
        // the kept scores' exponentials (0 for the rest), their sum, then the probabilities over the noise
        const float top = x[first_largest(x, V)];
        vf32 total = {};
        int64_t j = 0;
        for (; j + LANES <= V; j += LANES) {
            const vf32 e = select(load(x + j) >= splat(kth), zhiyin::exp(load(x + j) - top), vf32{});
            store(kept.data() + j, e);
            total += e;
        }
        float sum = hsum(total);
        for (; j < V; j++) {
            kept[j] = x[j] >= kth ? zhiyin::exp(splat(x[j] - top))[0] : 0.f;
            sum += kept[j];
        }
        // every number is drawn, in order; the logarithm only where it decides something: a kept token's, or
        // a draw of exactly 0, whose noise 0 makes a dropped token's 0 / 0 the NaN that PyTorch's argmax takes
        for (j = 0; j < V; j++) {
            const double u = draw->uniform();
            if (kept[j] != 0.f || u == 0.0) kept[j] = kept[j] / sum / exponential(u);
        }
        const auto is_nan = [](float v) { return std::isnan(v); };  // (has_nan: a vector pass, almost always false)
        tokens[row] = has_nan(kept.data(), V) ? std::find_if(kept.begin(), kept.end(), is_nan) - kept.begin()
                                              : first_largest(kept.data(), V);
    }
    if (draw) draw->save();
    for (int64_t copy = 1; copy < copies; copy++) std::copy(tokens, tokens + rows, tokens + copy * rows);
    return 0;
}

// n of the Exp(1) numbers PyTorch's CPU generator (get_state's bytes, advanced in place) would draw next into out:
// what Tensor.exponential_ gives (kernels.py checks that it does before zhiyin_choose draws)
void zhiyin_exponential(uint8_t *generator, int64_t n, float *out) {
    TorchGenerator draw(generator);
    for (int64_t j = 0; j < n; j++) out[j] = exponential(draw.uniform());
    draw.save();
}

}  // extern "C"
