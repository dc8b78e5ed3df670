"""C source of the native kernels (built by `native.py` with the system C compiler on first use).

Each kernel multiplies float32 activations by a matrix kept in its GGUF blocks: no requantization, no repacked
copy, and the fewest bytes read per weight (0.56 for Q4_0, 0.63 Q4_1, 0.56 Q4_K, 0.69 Q5_0, 0.75 Q5_1, 0.82 Q6_K,
1.06 Q8_0). A type is described by one *group function* that decodes 32 consecutive weights of a row as
``w = d * (w0 | w1) + m`` (two vectors of 16 floats, a scale, an offset); the macro turns it into

- ``<type>_matmul``: ``y[t, r] = sum_k x[t, k] w[r, k]`` for T tokens, float32 products and sums, TB tokens per
  pass over a row (``d`` applied per token to a group's sum where ``m = 0``, otherwise to the weights first);
- ``<type>_dequant``: rows -> float32, computed as ``d * w + m`` in the order gguf-py uses (bit-exact).

AVX-512 (F, BW, VL) with F16C. OpenMP over output rows; it shares torch's OpenMP runtime, which is already loaded
under the same soname (libgomp.so.1) when this library loads, so both use one thread pool.
"""
from gguf import GGMLQuantizationType as T

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <immintrin.h>

#define TB 4  /* tokens per pass over a row: their accumulators stay in registers */

static inline float f16(const uint8_t* p) { uint16_t h; memcpy(&h, p, 2); return _cvtsh_ss(h); }
static inline __m512 i8x16(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)); }
static inline __m512 u8x16(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }
static inline __m128i lo_nibbles(__m128i v) { return _mm_and_si128(v, _mm_set1_epi8(15)); }
static inline __m128i hi_nibbles(__m128i v) { return _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(15)); }
/* adds 16 to the bytes whose bit is set in `bits`: the 5th bit of Q5 codes */
static inline __m128i add_bit4(__m128i v, uint32_t bits) {
    return _mm_mask_add_epi8(v, (__mmask16)bits, v, _mm_set1_epi8(16));
}

/* 16 bytes -> their low nibbles (elements 0-15) and high nibbles (16-31) as floats, through a 16-entry table:
   vpermps reads only the low 4 bits of each index, so no masking is needed. */
static inline void nibbles_lut(const uint8_t* p, __m512 lut, __m512* w0, __m512* w1) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
    *w0 = _mm512_permutexvar_ps(b, lut);
    *w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut);
}
/* one nibble (low if !high) of each of 16 bytes, as floats */
static inline __m512 nibble_lut(const uint8_t* p, int high, __m512 lut) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
    return _mm512_permutexvar_ps(high ? _mm512_srli_epi32(b, 4) : b, lut);
}
#define LUT_0_15 _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define LUT_M8_7 _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7)

/* Per super-block scales of the K-quants, decoded once per 256 weights (`prepare`), read by each group:
   Q4_K: s0 = d * sc (scale), s1 = -dmin * mn (offset) of sub-block j; Q6_K: s0, s1 = d * sc of the two
   16-weight halves of group j. */
typedef struct { float s0[8], s1[8]; } scales_t;

#define GROUP_ARGS const uint8_t* b, int j, const scales_t* s, __m512* w0, __m512* w1, float* d, float* m
static inline void no_prepare(const uint8_t* b, scales_t* s) { (void)b; (void)s; }

/* Q8_0: [d: f16][q: 32 x int8] -> d * q */
static inline void q8_0_group(GROUP_ARGS) {
    *w0 = i8x16(_mm_loadu_si128((const __m128i*)(b + 2)));
    *w1 = i8x16(_mm_loadu_si128((const __m128i*)(b + 18)));
    *d = f16(b); *m = 0.0f;
}

/* Q4_0: [d: f16][qs: 16 B], element j < 16 the low nibble of byte j, j + 16 the high one -> d * (q - 8) */
static inline void q4_0_group(GROUP_ARGS) {
    nibbles_lut(b + 2, LUT_M8_7, w0, w1);
    *d = f16(b); *m = 0.0f;
}

/* Q4_1: [d: f16][m: f16][qs: 16 B] -> d * q + m */
static inline void q4_1_group(GROUP_ARGS) {
    nibbles_lut(b + 4, LUT_0_15, w0, w1);
    *d = f16(b); *m = f16(b + 2);
}

/* Q5_0: [d: f16][qh: 4 B][qs: 16 B]; bit i of qh is bit 4 of element i -> d * (q - 16) */
static inline void q5_0_group(GROUP_ARGS) {
    uint32_t qh; memcpy(&qh, b + 2, 4);
    const __m128i qs = _mm_loadu_si128((const __m128i*)(b + 6)), sixteen = _mm_set1_epi8(16);
    *w0 = i8x16(_mm_sub_epi8(add_bit4(lo_nibbles(qs), qh & 0xFFFF), sixteen));
    *w1 = i8x16(_mm_sub_epi8(add_bit4(hi_nibbles(qs), qh >> 16), sixteen));
    *d = f16(b); *m = 0.0f;
}

/* Q5_1: [d: f16][m: f16][qh: 4 B][qs: 16 B] -> d * q + m */
static inline void q5_1_group(GROUP_ARGS) {
    uint32_t qh; memcpy(&qh, b + 4, 4);
    const __m128i qs = _mm_loadu_si128((const __m128i*)(b + 8));
    *w0 = u8x16(add_bit4(lo_nibbles(qs), qh & 0xFFFF));
    *w1 = u8x16(add_bit4(hi_nibbles(qs), qh >> 16));
    *d = f16(b); *m = f16(b + 2);
}

/* Q4_K: [d: f16][dmin: f16][scales: 12 B][qs: 128 B], 8 sub-blocks of 32 with 6-bit scale sc and min mn ->
   (d sc) * q - (dmin mn); sub-block j's codes are the low (j even) or high nibbles of qs[32 (j / 2) ...]. */
static inline void q4_k_prepare(const uint8_t* b, scales_t* s) {
    const float d = f16(b), dmin = f16(b + 2);
    const uint8_t* q = b + 4;
    for (int j = 0; j < 8; ++j) {
        int sc, mn;
        if (j < 4) { sc = q[j] & 63; mn = q[j + 4] & 63; }
        else { sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4); mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
        s->s0[j] = d * (float)sc; s->s1[j] = -(dmin * (float)mn);
    }
}
static inline void q4_k_group(GROUP_ARGS) {
    const uint8_t* qs = b + 16 + 32 * (j / 2);
    *w0 = nibble_lut(qs, j % 2, LUT_0_15);
    *w1 = nibble_lut(qs + 16, j % 2, LUT_0_15);
    *d = s->s0[j]; *m = s->s1[j];
}

/* Q6_K: [ql: 128 B][qh: 64 B][scales: 16 x int8][d: f16], 16 sub-blocks of 16 -> (d sc) * (q - 32).
   Group j = half h = j / 4, quarter u = j % 4: codes from the low (u < 2) or high nibbles of
   ql[64 h + 32 (u % 2) ...] and bits 2u, 2u + 1 of qh[32 h ...]; scales sc[2 j], sc[2 j + 1] for its halves.
   Returns final weights (d = 1). */
static inline void q6_k_prepare(const uint8_t* b, scales_t* s) {
    const float d = f16(b + 208);
    const int8_t* sc = (const int8_t*)(b + 192);
    for (int j = 0; j < 8; ++j) { s->s0[j] = d * (float)sc[2 * j]; s->s1[j] = d * (float)sc[2 * j + 1]; }
}
static inline void q6_k_group(GROUP_ARGS) {
    const int h = j / 4, u = j % 4;
    const __m256i ql = _mm256_loadu_si256((const __m256i*)(b + 64 * h + 32 * (u % 2)));
    const __m256i qh = _mm256_loadu_si256((const __m256i*)(b + 128 + 32 * h));
    const __m256i lo = _mm256_and_si256(u < 2 ? ql : _mm256_srli_epi16(ql, 4), _mm256_set1_epi8(15));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * u), _mm256_set1_epi8(3));
    const __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
    *w0 = _mm512_mul_ps(_mm512_set1_ps(s->s0[j]), i8x16(_mm256_castsi256_si128(q)));
    *w1 = _mm512_mul_ps(_mm512_set1_ps(s->s1[j]), i8x16(_mm256_extracti128_si256(q, 1)));
    *d = 1.0f; *m = 0.0f;
}

/* MODE 0: w = d * code, d applied per token to the group's sum (fewest operations for one token);
   MODE 1: w = d * code + m, applied once per group, then plain FMAs per token;
   MODE 2: the group function returns final weights. */
#define DEFINE_KERNELS(NAME, PREPARE, BLOCK_BYTES, GROUPS, MODE)                                           \
void NAME##_matmul(const uint8_t* w, int64_t row_bytes, int64_t n, const float* x, int64_t k, int64_t t,    \
                   float* y, int64_t nthreads) {                                                            \
    const int64_t nb = k / (32 * GROUPS);                                                                   \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                                     \
    for (int64_t r = 0; r < n; ++r) {                                                                       \
        const uint8_t* row = w + r * row_bytes;                                                             \
        _mm_prefetch((const char*)(row + 2 * row_bytes), _MM_HINT_T0);                                      \
        for (int64_t t0 = 0; t0 < t; t0 += TB) {                                                            \
            const int64_t tn = t - t0 < TB ? t - t0 : TB;                                                   \
            __m512 acc[TB];                                                                                 \
            for (int i = 0; i < TB; ++i) acc[i] = _mm512_setzero_ps();                                      \
            for (int64_t bi = 0; bi < nb; ++bi) {                                                           \
                const uint8_t* b = row + bi * BLOCK_BYTES;                                                  \
                scales_t s;                                                                                 \
                PREPARE(b, &s);                                                                             \
                for (int j = 0; j < GROUPS; ++j) {                                                          \
                    __m512 w0, w1; float d, m;                                                              \
                    NAME##_group(b, j, &s, &w0, &w1, &d, &m);                                               \
                    const __m512 dv = _mm512_set1_ps(d);                                                    \
                    if (MODE == 1) {                                                                        \
                        w0 = _mm512_add_ps(_mm512_mul_ps(dv, w0), _mm512_set1_ps(m));                       \
                        w1 = _mm512_add_ps(_mm512_mul_ps(dv, w1), _mm512_set1_ps(m));                       \
                    }                                                                                       \
                    for (int64_t i = 0; i < tn; ++i) {                                                      \
                        const float* xi = x + (t0 + i) * k + (bi * GROUPS + j) * 32;                        \
                        const __m512 x0 = _mm512_loadu_ps(xi), x1 = _mm512_loadu_ps(xi + 16);               \
                        if (MODE == 0)                                                                      \
                            acc[i] = _mm512_fmadd_ps(_mm512_fmadd_ps(w1, x1, _mm512_mul_ps(w0, x0)), dv, acc[i]); \
                        else                                                                                \
                            acc[i] = _mm512_fmadd_ps(w1, x1, _mm512_fmadd_ps(w0, x0, acc[i]));              \
                    }                                                                                       \
                }                                                                                           \
            }                                                                                               \
            for (int64_t i = 0; i < tn; ++i) y[(t0 + i) * n + r] = _mm512_reduce_add_ps(acc[i]);            \
        }                                                                                                   \
    }                                                                                                       \
}                                                                                                           \
void NAME##_dequant(const uint8_t* w, int64_t row_bytes, int64_t n, int64_t k, float* out,                 \
                    int64_t nthreads) {                                                                     \
    const int64_t nb = k / (32 * GROUPS);                                                                   \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                                     \
    for (int64_t r = 0; r < n; ++r) {                                                                       \
        for (int64_t bi = 0; bi < nb; ++bi) {                                                               \
            const uint8_t* b = w + r * row_bytes + bi * BLOCK_BYTES;                                        \
            scales_t s;                                                                                     \
            PREPARE(b, &s);                                                                                 \
            for (int j = 0; j < GROUPS; ++j) {                                                              \
                __m512 w0, w1; float d, m;                                                                  \
                NAME##_group(b, j, &s, &w0, &w1, &d, &m);                                                   \
                float* o = out + r * k + (bi * GROUPS + j) * 32;                                            \
                if (MODE != 2) {  /* d * q + m, in gguf-py's order: bit-exact */                            \
                    w0 = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(d), w0), _mm512_set1_ps(m));            \
                    w1 = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(d), w1), _mm512_set1_ps(m));            \
                }                                                                                           \
                _mm512_storeu_ps(o, w0);                                                                    \
                _mm512_storeu_ps(o + 16, w1);                                                               \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
}

DEFINE_KERNELS(q8_0, no_prepare, 34, 1, 0)
DEFINE_KERNELS(q4_0, no_prepare, 18, 1, 0)
DEFINE_KERNELS(q4_1, no_prepare, 20, 1, 1)
DEFINE_KERNELS(q5_0, no_prepare, 22, 1, 0)
DEFINE_KERNELS(q5_1, no_prepare, 24, 1, 1)
DEFINE_KERNELS(q4_k, q4_k_prepare, 144, 8, 1)
DEFINE_KERNELS(q6_k, q6_k_prepare, 210, 8, 2)

/* out[r] = the first index of row r's largest value, a NaN counting as larger than anything (torch.argmax's
   rule): one vector pass for the maximum, one for its first position. */
void argmax_rows(const float* x, int64_t rows, int64_t n, int64_t* out, int64_t nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float* v = x + r * n;
        __m512 m = _mm512_set1_ps(-INFINITY);
        __mmask16 nan = 0;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            const __m512 a = _mm512_loadu_ps(v + i);
            nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
            m = _mm512_max_ps(m, a);
        }
        float best = _mm512_reduce_max_ps(m);
        for (; i < n; i++) {
            if (v[i] != v[i]) nan = 1;
            else if (v[i] > best) best = v[i];
        }
        int64_t at = 0;
        if (nan) {
            while (v[at] == v[at]) at++;
        } else {
            const __m512 b = _mm512_set1_ps(best);
            for (i = 0; i + 16 <= n; i += 16) {
                const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(v + i), b, _CMP_EQ_OQ);
                if (hit) break;
            }
            at = i;
            while (v[at] != best) at++;
        }
        out[r] = at;
    }
}
"""

# ggml type -> (kernel name prefix in SOURCE, byte offsets of the fp16 scale fields in a block, for self-tests)
KERNELS: dict[int, tuple[str, tuple[int, ...]]] = {
    T.Q8_0: ("q8_0", (0,)),
    T.Q4_0: ("q4_0", (0,)),
    T.Q4_1: ("q4_1", (0, 2)),
    T.Q5_0: ("q5_0", (0,)),
    T.Q5_1: ("q5_1", (0, 2)),
    T.Q4_K: ("q4_k", (0, 2)),
    T.Q6_K: ("q6_k", (208,)),
}
