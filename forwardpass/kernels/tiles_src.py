"""C source of the tile kernels: quantized matrices repacked into 16-row tiles, multiplied with int8 dot products.

Layout (built by `tiles.py`). A matrix of N rows (N % 16 == 0) and K columns is cut into tiles of 16 rows by 32
columns; tile (rt, g) covers rows 16 rt .. 16 rt + 15 and columns 32 g .. 32 g + 31. Its integer codes (0 .. 2^bits
- 1, the GGUF quants made non-negative) are stored as eight *operands* of 64 bytes, operand o holding columns
4 o .. 4 o + 3 of the 16 rows, row-major: exactly the shape of one `vpdpbusd`, which multiplies 4 unsigned bytes
by 4 signed bytes and adds them into each of 16 int32 lanes. So lane r of the accumulator is row r's dot product,
and a tile's scales apply lane by lane: per row, never a horizontal sum inside the loop.

- codes: 4-bit codes packed two operands per 64 bytes (low nibbles: operand 2p, high nibbles: 2p + 1), 256 bytes
  a tile; 8-bit codes stored whole, 512 bytes. 5- and 6-bit codes add *planes*: per operand a 64-bit mask of the
  codes' bit 4 (then bit 5), 64 or 128 bytes a tile.
- scales, by mode:
  D   (Q4_0, Q5_0, Q8_0): fp16 scale d per row and tile; the weight is d * code + c * d (c = -8, -16, -128);
  DM  (Q4_1, Q5_1):       fp16 d and m per row and tile: d * code + m;
  K4  (Q4_K):             6-bit scale and min per row and tile (uint8), float32 d and -dmin per row and 256
                          columns: (d sc) * code + (-dmin mn);
  K6  (Q6_K):             int8 scale per row and 16 columns, float32 d per row and 256 columns:
                          (d sc) * (code - 32).
  Each reproduces the GGUF weight exactly (the dequantizer here is bit-exact with gguf-py's).

Activations are quantized per token and 32 columns to int8 (`quantize_rows`: q = round(x / dx), dx = max|x| / 127,
as llama.cpp's q8_0), keeping dx, sx = dx * sum(q) and the integer sums of each 16 columns. They are stored group
by group: the 32 codes of column group g for tokens 0, 1, 2 ... follow each other (and so do dx, sx, sums), so the
kernel reaches any token of a block at a constant offset from one pointer and keeps its registers for sums. A row's
output is

    y = sum over tiles of  float(dot(code, q)) * (d * dx)  +  m * sx

(K6: d * dx * float(sum of the two halves' sc * (dot - 32 sum(q)))), accumulated over tiles in column order. Each
token's sum is computed alone in that fixed order, so a token's result never depends on the other tokens.
"""

TILE_SOURCE = r"""
#include <omp.h>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")

enum { SM_D = 0, SM_DM = 1, SM_K4 = 2, SM_K6 = 3 };

typedef struct {
    int64_t n, k, bits, smode;
    float mconst;              /* SM_D: m = mconst * d */
    const uint8_t* codes;
    const uint8_t* planes;
    const uint16_t* d16;       /* SM_D, SM_DM: (NT, G, 16) fp16 */
    const uint16_t* m16;       /* SM_DM */
    const uint8_t* sc;         /* SM_K4: (NT, G, 16) uint8; SM_K6: (NT, G, 2, 16) int8 */
    const uint8_t* mn;         /* SM_K4: (NT, G, 16) */
    const float* dsb;          /* SM_K4, SM_K6: (NT, G / 8, 16) */
    const float* msb;          /* SM_K4: (NT, G / 8, 16), -dmin */
} tmat_t;

/* tokens of K columns quantized, group-major with room for `ld` tokens: q (K / 32, ld, 32) int8, dx and sx
   (K / 32, ld), s16 (K / 32, ld, 2) */
typedef struct { int8_t* q; float* dx; float* sx; int32_t* s16; int64_t k, ld; } qact_t;

static inline int32_t load_i32(const int8_t* p) { int32_t v; memcpy(&v, p, 4); return v; }

/* quantize columns 32 g .. 32 g + 31 of token t (xg points at them) into a */
static inline void quantize_group(const float* xg, int64_t t, int64_t g, const qact_t* a) {
    const __m512 x0 = _mm512_loadu_ps(xg), x1 = _mm512_loadu_ps(xg + 16);
    const __m512 ab = _mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1));
    const float amax = _mm512_reduce_max_ps(ab);
    const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, _mm512_set1_ps(id)));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, _mm512_set1_ps(id)));
    const int64_t at = g * a->ld + t;
    int8_t* qg = a->q + at * 32;
    _mm_storeu_si128((__m128i*)qg, _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128((__m128i*)(qg + 16), _mm512_cvtsepi32_epi8(q1));
    const int32_t s0 = _mm512_reduce_add_epi32(q0), s1 = _mm512_reduce_add_epi32(q1);
    a->s16[2 * at] = s0;
    a->s16[2 * at + 1] = s1;
    a->dx[at] = d;
    a->sx[at] = d * (float)(s0 + s1);
}

/* quantize row t of x (its k columns) into a */
static void quantize_row(const float* x, int64_t t, const qact_t* a) {
    for (int64_t g = 0; g < a->k / 32; g++) quantize_group(x + g * 32, t, g, a);
}

void quantize_rows(const float* x, int64_t t, int64_t ldx, int64_t k, int8_t* q, float* dx, float* sx,
                   int32_t* s16) {
    qact_t a = {q, dx, sx, s16, k, t};
    for (int64_t i = 0; i < t; i++) quantize_row(x + i * ldx, i, &a);
}

static inline __attribute__((always_inline)) void tile_ops(const tmat_t* W, int64_t tg, const int BITS,
                                                           __m512i op[8]) {
    if (BITS == 8) {
        const uint8_t* c = W->codes + tg * 512;
        for (int o = 0; o < 8; o++) op[o] = _mm512_loadu_si512((const void*)(c + 64 * o));
        return;
    }
    const uint8_t* c = W->codes + tg * 256;
    const __m512i m4 = _mm512_set1_epi8(15);
    for (int p = 0; p < 4; p++) {
        const __m512i v = _mm512_loadu_si512((const void*)(c + 64 * p));
        op[2 * p] = _mm512_and_si512(v, m4);
        op[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    }
    if (BITS >= 5) {
        const uint8_t* pl = W->planes + tg * 64 * (BITS - 4);
        for (int o = 0; o < 8; o++) {
            uint64_t m; memcpy(&m, pl + 8 * o, 8);
            op[o] = _mm512_mask_add_epi8(op[o], (__mmask64)m, op[o], _mm512_set1_epi8(16));
        }
        if (BITS == 6)
            for (int o = 0; o < 8; o++) {
                uint64_t m; memcpy(&m, pl + 64 + 8 * o, 8);
                op[o] = _mm512_mask_add_epi8(op[o], (__mmask64)m, op[o], _mm512_set1_epi8(32));
            }
    }
}

/* per-row scale (dw) and offset (mw) of tile (rt, g); K6: dw = d, and the two halves' integer scales */
static inline __attribute__((always_inline)) void tile_scales(const tmat_t* W, int64_t rt, int64_t g, int64_t G,
                                                              const int SM, __m512* dw, __m512* mw,
                                                              __m512i* sca, __m512i* scb) {
    const int64_t tg = rt * G + g;
    if (SM == SM_D || SM == SM_DM) {
        *dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(W->d16 + tg * 16)));
        *mw = SM == SM_D ? _mm512_mul_ps(*dw, _mm512_set1_ps(W->mconst))
                         : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(W->m16 + tg * 16)));
    } else if (SM == SM_K4) {
        const int64_t sb = rt * (G / 8) + g / 8;
        const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(W->sc + tg * 16))));
        const __m512 mn = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(W->mn + tg * 16))));
        *dw = _mm512_mul_ps(_mm512_loadu_ps(W->dsb + sb * 16), sc);
        *mw = _mm512_mul_ps(_mm512_loadu_ps(W->msb + sb * 16), mn);
    } else {
        *dw = _mm512_loadu_ps(W->dsb + (rt * (G / 8) + g / 8) * 16);
        *sca = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(W->sc + tg * 32)));
        *scb = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(W->sc + tg * 32 + 16)));
    }
}

/* rows of tile rt for tokens t0 .. t0 + TN - 1: y[t, 16 rt + r]. The tile's codes are decoded once for the TN
   tokens; each token's sums run in the same order whatever TN (the result of a token never depends on TN). */
#define PREFETCH_TILES 4

static inline __attribute__((always_inline)) void tile_block(const tmat_t* W, int64_t rt, const qact_t* X,
                                                             int64_t t0, const int TN, float* y, int64_t ldy,
                                                             const int BITS, const int SM) {
    const int64_t G = W->k / 32, LD = X->ld;
    /* token i of column group g: codes at xq + 32 i, scales at dx[i], sx[i], sums at s16[2 i] (constant offsets) */
    const int8_t* xq = X->q + t0 * 32;
    const float *dx = X->dx + t0, *sx = X->sx + t0;
    const int32_t* s16 = X->s16 + 2 * t0;
    __m512 acc[16];
    #pragma GCC unroll 16
    for (int i = 0; i < TN; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++, xq += 32 * LD, dx += LD, sx += LD, s16 += 2 * LD) {
        if (TN >= 8) {  /* many tokens per tile: too slow a consumer for the hardware prefetcher to stay ahead */
            const int64_t ahead = rt * G + g + PREFETCH_TILES;
            const uint8_t* c = W->codes + ahead * (BITS == 8 ? 512 : 256);
            for (int l = 0; l < (BITS == 8 ? 8 : 4); l++) _mm_prefetch((const char*)(c + 64 * l), _MM_HINT_T0);
        }
        __m512i op[8];
        tile_ops(W, rt * G + g, BITS, op);
        __m512 dw, mw = _mm512_setzero_ps();
        __m512i sca = _mm512_setzero_si512(), scb = _mm512_setzero_si512();
        tile_scales(W, rt, g, G, SM, &dw, &mw, &sca, &scb);
        #pragma GCC unroll 16
        for (int i = 0; i < TN; i++) {
            const int8_t* xi = xq + 32 * i;
            const __m512 dxd = _mm512_mul_ps(dw, _mm512_set1_ps(dx[i]));
            if (SM == SM_K6) {  /* each half of the columns has its own integer scale */
                __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), op[0], _mm512_set1_epi32(load_i32(xi)));
                __m512i b = _mm512_dpbusd_epi32(_mm512_setzero_si512(), op[4], _mm512_set1_epi32(load_i32(xi + 16)));
                for (int o = 1; o < 4; o++) {
                    a = _mm512_dpbusd_epi32(a, op[o], _mm512_set1_epi32(load_i32(xi + 4 * o)));
                    b = _mm512_dpbusd_epi32(b, op[o + 4], _mm512_set1_epi32(load_i32(xi + 16 + 4 * o)));
                }
                a = _mm512_mullo_epi32(_mm512_sub_epi32(a, _mm512_set1_epi32(32 * s16[2 * i])), sca);
                b = _mm512_mullo_epi32(_mm512_sub_epi32(b, _mm512_set1_epi32(32 * s16[2 * i + 1])), scb);
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a, b)), dxd, acc[i]);
            } else {  /* one chain of 8: the TN tokens' chains hide its latency */
                __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), op[0], _mm512_set1_epi32(load_i32(xi)));
                for (int o = 1; o < 8; o++) a = _mm512_dpbusd_epi32(a, op[o], _mm512_set1_epi32(load_i32(xi + 4 * o)));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), dxd, acc[i]);
                acc[i] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx[i]), acc[i]);
            }
        }
    }
    #pragma GCC unroll 16
    for (int i = 0; i < TN; i++) _mm512_storeu_ps(y + (t0 + i) * ldy + rt * 16, acc[i]);
}

#define DEFINE_TILE_ROWS(NAME, BITS, SM)                                                                     \
static void NAME(const tmat_t* W, int64_t rt, const qact_t* X, int64_t T, float* y, int64_t ldy) {         \
    int64_t t0 = 0;                                                                                         \
    for (; t0 + 16 <= T; t0 += 16) tile_block(W, rt, X, t0, 16, y, ldy, BITS, SM);                          \
    if (t0 + 8 <= T) { tile_block(W, rt, X, t0, 8, y, ldy, BITS, SM); t0 += 8; }                            \
    if (t0 + 4 <= T) { tile_block(W, rt, X, t0, 4, y, ldy, BITS, SM); t0 += 4; }                            \
    for (; t0 < T; t0++) tile_block(W, rt, X, t0, 1, y, ldy, BITS, SM);                                     \
}
DEFINE_TILE_ROWS(tile_rows_4d, 4, SM_D)
DEFINE_TILE_ROWS(tile_rows_4dm, 4, SM_DM)
DEFINE_TILE_ROWS(tile_rows_5d, 5, SM_D)
DEFINE_TILE_ROWS(tile_rows_5dm, 5, SM_DM)
DEFINE_TILE_ROWS(tile_rows_8d, 8, SM_D)
DEFINE_TILE_ROWS(tile_rows_4k, 4, SM_K4)
DEFINE_TILE_ROWS(tile_rows_6k, 6, SM_K6)

static void tile_rows(const tmat_t* W, int64_t rt, const qact_t* X, int64_t T, float* y, int64_t ldy) {
    switch (W->bits * 4 + W->smode) {
        case 4 * 4 + SM_D: tile_rows_4d(W, rt, X, T, y, ldy); break;
        case 4 * 4 + SM_DM: tile_rows_4dm(W, rt, X, T, y, ldy); break;
        case 5 * 4 + SM_D: tile_rows_5d(W, rt, X, T, y, ldy); break;
        case 5 * 4 + SM_DM: tile_rows_5dm(W, rt, X, T, y, ldy); break;
        case 8 * 4 + SM_D: tile_rows_8d(W, rt, X, T, y, ldy); break;
        case 4 * 4 + SM_K4: tile_rows_4k(W, rt, X, T, y, ldy); break;
        case 6 * 4 + SM_K6: tile_rows_6k(W, rt, X, T, y, ldy); break;
        default: break;
    }
}

/* global row tile j of matrices stacked one after the other -> its matrix, its row tile there, its first column */
static inline const tmat_t* locate_tile(const tmat_t* const* mats, int64_t j, int64_t* rt, int64_t* col) {
    int m = 0;
    *col = 0;
    while (j >= mats[m]->n / 16) { j -= mats[m]->n / 16; *col += mats[m]->n; m++; }
    *rt = j;
    return mats[m];
}

/* y[:, col_m + ...] = X @ W_m^T for `nm` matrices sharing the input X (fused q|k|v, gate|up); the row tiles of
   all of them are shared out among the threads of the enclosing parallel region (orphaned `omp for`) in
   contiguous halves: one token reads its weights once, as streams the prefetchers follow (on-demand chunks made
   a one-token step 20 % slower here). No barrier at the end: the caller places it. */
static void tile_matmul_multi(const tmat_t* const* mats, int nm, const qact_t* X, int64_t T, float* y,
                              int64_t ldy) {
    int64_t total = 0;
    for (int m = 0; m < nm; m++) total += mats[m]->n / 16;
    #pragma omp for schedule(static) nowait
    for (int64_t j = 0; j < total; j++) {
        int64_t rt, col;
        const tmat_t* W = locate_tile(mats, j, &rt, &col);
        tile_rows(W, rt, X, T, y + col, ldy);
    }
}

/* Python entry: y (T, sum n) = quantize(x (T, K)) @ [W_0 | W_1 ...]^T, with scratch for the quantized x. */
void tile_matmul(const tmat_t* const* mats, int64_t nm, const float* x, int64_t t, int8_t* q, float* dx, float* sx,
                 int32_t* s16, float* y, int64_t ldy, int64_t nthreads) {
    qact_t a = {q, dx, sx, s16, mats[0]->k, t};
    quantize_rows(x, t, mats[0]->k, mats[0]->k, q, dx, sx, s16);
    #pragma omp parallel num_threads(nthreads)
    tile_matmul_multi(mats, (int)nm, &a, t, y, ldy);
}

/* 16 floats -> 16 bf16, rounded to nearest even as torch's .to(bfloat16) (finite values) */
static inline __m256i bf16_round(__m512 w) {
    const __m512i u = _mm512_castps_si512(w);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

/* Rows 16 rt0 .. 16 rt1 - 1 of W: out (rows, K), float32 (exactly the GGUF weights, computed as d * q + m in
   gguf-py's order) or, with bf16 != 0, those values rounded to bf16. */
void tile_dequant(const tmat_t* W, int64_t rt0, int64_t rt1, void* out, int64_t bf16, int64_t nthreads) {
    const int64_t K = W->k, G = K / 32;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t rt = rt0; rt < rt1; rt++) {
        for (int64_t g = 0; g < G; g++) {
            __m512i op[8];
            switch (W->bits) {
                case 4: tile_ops(W, rt * G + g, 4, op); break;
                case 5: tile_ops(W, rt * G + g, 5, op); break;
                case 6: tile_ops(W, rt * G + g, 6, op); break;
                default: tile_ops(W, rt * G + g, 8, op); break;
            }
            __m512 dw, mw = _mm512_setzero_ps();
            __m512i sca = _mm512_setzero_si512(), scb = _mm512_setzero_si512();
            switch (W->smode) {
                case SM_D: tile_scales(W, rt, g, G, SM_D, &dw, &mw, &sca, &scb); break;
                case SM_DM: tile_scales(W, rt, g, G, SM_DM, &dw, &mw, &sca, &scb); break;
                case SM_K4: tile_scales(W, rt, g, G, SM_K4, &dw, &mw, &sca, &scb); break;
                default: tile_scales(W, rt, g, G, SM_K6, &dw, &mw, &sca, &scb); break;
            }
            __m512 dh[2], mh[2];  /* per row: scale and offset of columns 0-15 and 16-31 */
            if (W->smode == SM_K6) {  /* (d sc) * code + (-32 d sc): exact, as d * sc * (code - 32) */
                dh[0] = _mm512_mul_ps(dw, _mm512_cvtepi32_ps(sca));
                dh[1] = _mm512_mul_ps(dw, _mm512_cvtepi32_ps(scb));
                mh[0] = _mm512_mul_ps(dh[0], _mm512_set1_ps(-32.0f));
                mh[1] = _mm512_mul_ps(dh[1], _mm512_set1_ps(-32.0f));
            } else {
                dh[0] = dh[1] = dw;
                mh[0] = mh[1] = mw;
            }
            for (int half = 0; half < 2; half++) {
                for (int qq = 0; qq < 4; qq++) {  /* rows 4 qq .. 4 qq + 3 */
                    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(4 * qq),
                                                         _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2));
                    const __m512 dq = _mm512_permutexvar_ps(idx, dh[half]), mq = _mm512_permutexvar_ps(idx, mh[half]);
                    const int64_t row0 = rt * 16 + 4 * qq - rt0 * 16;
                    for (int o = 4 * half; o < 4 * half + 4; o++) {
                        __m128i q16;
                        switch (qq) {
                            case 0: q16 = _mm512_extracti32x4_epi32(op[o], 0); break;
                            case 1: q16 = _mm512_extracti32x4_epi32(op[o], 1); break;
                            case 2: q16 = _mm512_extracti32x4_epi32(op[o], 2); break;
                            default: q16 = _mm512_extracti32x4_epi32(op[o], 3); break;
                        }
                        /* 4 rows x 4 columns: lane 4 i + j = row 4 qq + i, column 32 g + 4 o + j */
                        const __m512 w = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q16)), dq), mq);
                        const int64_t col = g * 32 + 4 * o;
                        if (bf16) {
                            uint16_t* dst = (uint16_t*)out + row0 * K + col;
                            const __m256i b = bf16_round(w);
                            uint64_t v[4];
                            _mm256_storeu_si256((__m256i*)v, b);
                            for (int i = 0; i < 4; i++) memcpy(dst + i * K, v + i, 8);
                        } else {
                            float* dst = (float*)out + row0 * K + col;
                            float v[16];
                            _mm512_storeu_ps(v, w);
                            for (int i = 0; i < 4; i++) memcpy(dst + i * K, v + 4 * i, 16);
                        }
                    }
                }
            }
        }
    }
}
#pragma GCC pop_options
"""
