/* Quantized matrices in 16-row tiles, multiplied with int8 dot products.

Layout (built by tiles.py). A matrix of N rows (N % 16 == 0) and K columns is cut into tiles of 16 rows by 32
columns; tile (rt, g) covers rows 16 rt .. 16 rt + 15 and columns 32 g .. 32 g + 31. Its integer codes (0 .. 2^bits
- 1, the GGUF quants made non-negative) are stored as eight *operands* of 64 bytes, operand o holding columns
4 o .. 4 o + 3 of the 16 rows, row-major: the shape of one AVX-512 `vpdpbusd` (4 unsigned bytes times 4 signed
bytes added into each of 16 int32 lanes), of two AVX2 `vpmaddubsw` + `vpmaddwd` pairs (rows 0-7, 8-15) and of
four NEON `sdot`s (rows 4 i .. 4 i + 3). So lane r of an accumulator is row r's dot product in every build, and a
tile's scales apply lane by lane: per row, never a horizontal sum inside the loop.

- codes: 4-bit codes packed two operands per 64 bytes (low nibbles: operand 2p, high nibbles: 2p + 1), 256 bytes
  a tile; 8-bit codes stored whole, 512 bytes. 5- and 6-bit codes add *planes* of 64 bytes a tile, one per bit
  above the nibble: bit o of byte j is that bit (4, then 5) of operand o's byte j. One load serves the eight
  operands, each taking its bit by a shift and a mask (AVX2), a byte test (AVX-512, NEON).
- scales, by mode:
  D   (Q4_0, Q5_0, Q8_0): fp16 scale d per row and tile; the weight is d * code + c * d (c = -8, -16, -128);
  DM  (Q4_1, Q5_1):       fp16 d and m per row and tile: d * code + m;
  K4  (Q4_K):             6-bit scale and min per row and tile (uint8), float32 d and -dmin per row and 256
                          columns: (d sc) * code + (-dmin mn);
  K6  (Q6_K):             int8 scale per row and 16 columns, float32 d per row and 256 columns:
                          (d sc) * (code - 32).
  Each reproduces the GGUF weight exactly (the dequantizer here is bit-exact with gguf-py's).

Activations are quantized per token and 32 columns to int8 (`quantize_rows`: q = round(x / dx), dx = max|x| / 127,
as llama.cpp's q8_0), keeping dx, sx = dx * sum(q) and the integer sums of each 16 columns. The codes are stored
group by group (the 32 codes of column group g for tokens 0, 1, 2 ... follow each other), dx, sx and the sums token
by token, so the kernel reaches any token of a block at a constant offset from one pointer each. (The step's threads
quantize whole tokens: one group's scales of every token in one cache line made the threads take that line from
each other at every group, 12% of a 16-token step.) A row's output is

    y = sum over tiles of  float(dot(code, q)) * (d * dx)  +  m * sx

(D: float(dot(code, q) + c sum(q)) * (d * dx), the offset in the exact integer; K6: d * dx * float(sum of the two
halves' sc * (dot - 32 sum(q)))), accumulated over tiles in column order. The integer dot products are exact in
every build, and the float operations per lane are the same, in the same order, in every build; each token's sum
is computed alone in that fixed order, so a token's result never depends on the other tokens. */
#include <omp.h>

#include "internal.h"

static inline int32_t load_i32(const int8_t* p) { int32_t v; memcpy(&v, p, 4); return v; }

/* ---- activations ---- */

/* quantize columns 32 g .. 32 g + 31 of token t (xg points at them) into a */
static inline void quantize_group(const float* xg, int64_t t, int64_t g, const qact_t* a) {
    const V x0 = v_load(xg), x1 = v_load(xg + 16);
    const float amax = v_hmax(v_max(v_abs(x0), v_abs(x1)));
    const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const VI q0 = v_to_vi(v_mul(x0, v_set1(id))), q1 = v_to_vi(v_mul(x1, v_set1(id)));
    int8_t* qg = a->q + (g * a->ld + t) * 32;
    vi_store_i8(qg, q0);
    vi_store_i8(qg + 16, q1);
    const int32_t s0 = vi_hsum(q0), s1 = vi_hsum(q1);
    const int64_t at = t * (a->k / 32) + g;
    a->s16[2 * at] = s0;
    a->s16[2 * at + 1] = s1;
    a->dx[at] = d;
    a->sx[at] = d * (float)(s0 + s1);
}

/* quantize row t of x (its k columns) into a */
void quantize_row(const float* x, int64_t t, const qact_t* a) {
    for (int64_t g = 0; g < a->k / 32; g++) quantize_group(x + g * 32, t, g, a);
}

void quantize_rows(const float* x, int64_t t, int64_t ldx, int64_t k, int8_t* q, float* dx, float* sx,
                   int32_t* s16) {
    qact_t a = {q, dx, sx, s16, k, t};
    for (int64_t i = 0; i < t; i++) quantize_row(x + i * ldx, i, &a);
}

/* ---- a tile's eight operands, per instruction set ---- */

#if defined(FP_AVX512)
typedef __m512i TOP;
#elif defined(FP_AVX2)
typedef struct { __m256i a, b; } TOP;   /* rows 0-7, rows 8-15 */
#else
typedef struct { int8x16_t v[4]; } TOP; /* rows 4 i .. 4 i + 3 */
#endif

/* Without a 4 x (unsigned, signed) byte dot product that cannot saturate (plain AVX2's vpmaddubsw saturates at
   255 * 127 * 2) or without an unsigned one at all (NEON's sdot is signed x signed), 8-bit codes are held as
   signed q = code - 128 and the dot product adds 128 * sum(x) back: the same integer, exactly. */
#if defined(FP_NEON) || (defined(FP_AVX2) && !defined(FP_AVXVNNI))
#define SIGNED_8BIT 1
#else
#define SIGNED_8BIT 0
#endif

#if defined(FP_AVX2)
/* `add` (16 << plane) in the bytes of the 32 plane bytes p whose bit o is set: bit o shifted to add's place and
   masked (a 16-bit shift; the bit the mask keeps comes from the same byte, both places being 0 .. 7) */
FP_INLINE __m256i plane_bits(__m256i p, const int o, const int add) {
    const int at = add == 16 ? 4 : 5;
    const __m256i b = at > o ? _mm256_slli_epi16(p, at - o) : at < o ? _mm256_srli_epi16(p, o - at) : p;
    return _mm256_and_si256(b, _mm256_set1_epi8((char)add));
}
#endif

/* adds `add` (16, then 32) to the codes whose bit is set in plane pl: bit o of its byte j is that bit of operand o's
   byte j, so one load serves the eight operands */
FP_INLINE void add_planes(TOP op[8], const uint8_t* pl, const int add) {
#if defined(FP_AVX512)
    const __m512i p = _mm512_loadu_si512((const void*)pl), a = _mm512_set1_epi8((char)add);
    for (int o = 0; o < 8; o++)
        op[o] = _mm512_mask_add_epi8(op[o], _mm512_test_epi8_mask(p, _mm512_set1_epi8((char)(1 << o))), op[o], a);
#elif defined(FP_AVX2)
    const __m256i pa = _mm256_loadu_si256((const __m256i*)pl), pb = _mm256_loadu_si256((const __m256i*)(pl + 32));
    for (int o = 0; o < 8; o++) {
        op[o].a = _mm256_add_epi8(op[o].a, plane_bits(pa, o, add));
        op[o].b = _mm256_add_epi8(op[o].b, plane_bits(pb, o, add));
    }
#else
    for (int i = 0; i < 4; i++) {
        const uint8x16_t p = vld1q_u8(pl + 16 * i), a = vdupq_n_u8((uint8_t)add);
        for (int o = 0; o < 8; o++)
            op[o].v[i] = vaddq_s8(op[o].v[i],
                                  vreinterpretq_s8_u8(vandq_u8(vtstq_u8(p, vdupq_n_u8((uint8_t)(1 << o))), a)));
    }
#endif
}

/* the eight operands of tile tg (codes >= 0; 8-bit codes minus 128 where SIGNED_8BIT) */
FP_INLINE void tile_ops(const tmat_t* W, int64_t tg, const int BITS, TOP op[8]) {
    if (BITS == 8) {
        const uint8_t* c = W->codes + tg * 512;
        for (int o = 0; o < 8; o++) {
#if defined(FP_AVX512)
            op[o] = _mm512_loadu_si512((const void*)(c + 64 * o));
#elif defined(FP_AVX2)
            op[o].a = _mm256_loadu_si256((const __m256i*)(c + 64 * o));
            op[o].b = _mm256_loadu_si256((const __m256i*)(c + 64 * o + 32));
#if SIGNED_8BIT
            op[o].a = _mm256_xor_si256(op[o].a, _mm256_set1_epi8((char)0x80));
            op[o].b = _mm256_xor_si256(op[o].b, _mm256_set1_epi8((char)0x80));
#endif
#else
            for (int i = 0; i < 4; i++)
                op[o].v[i] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(c + 64 * o + 16 * i), vdupq_n_u8(0x80)));
#endif
        }
        return;
    }
    const uint8_t* c = W->codes + tg * 256;
    for (int p = 0; p < 4; p++) {
#if defined(FP_AVX512)
        const __m512i m4 = _mm512_set1_epi8(15), v = _mm512_loadu_si512((const void*)(c + 64 * p));
        op[2 * p] = _mm512_and_si512(v, m4);
        op[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
#elif defined(FP_AVX2)
        const __m256i m4 = _mm256_set1_epi8(15);
        const __m256i va = _mm256_loadu_si256((const __m256i*)(c + 64 * p));
        const __m256i vb = _mm256_loadu_si256((const __m256i*)(c + 64 * p + 32));
        op[2 * p].a = _mm256_and_si256(va, m4);
        op[2 * p].b = _mm256_and_si256(vb, m4);
        op[2 * p + 1].a = _mm256_and_si256(_mm256_srli_epi16(va, 4), m4);
        op[2 * p + 1].b = _mm256_and_si256(_mm256_srli_epi16(vb, 4), m4);
#else
        for (int i = 0; i < 4; i++) {
            const uint8x16_t v = vld1q_u8(c + 64 * p + 16 * i);
            op[2 * p].v[i] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(15)));
            op[2 * p + 1].v[i] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
        }
#endif
    }
    if (BITS >= 5) {
        const uint8_t* pl = W->planes + tg * 64 * (BITS - 4);
        add_planes(op, pl, 16);
        if (BITS == 6) add_planes(op, pl + 64, 32);
    }
}

/* the operands' codes back in their 64-byte layout, as unsigned codes */
FP_INLINE void top_store(uint8_t* p, TOP op, const int BITS) {
#if defined(FP_AVX512)
    (void)BITS;
    _mm512_storeu_si512((void*)p, op);
#elif defined(FP_AVX2)
    if (SIGNED_8BIT && BITS == 8) {
        op.a = _mm256_xor_si256(op.a, _mm256_set1_epi8((char)0x80));
        op.b = _mm256_xor_si256(op.b, _mm256_set1_epi8((char)0x80));
    }
    _mm256_storeu_si256((__m256i*)p, op.a);
    _mm256_storeu_si256((__m256i*)(p + 32), op.b);
#else
    for (int i = 0; i < 4; i++) {
        uint8x16_t v = vreinterpretq_u8_s8(op.v[i]);
        if (BITS == 8) v = veorq_u8(v, vdupq_n_u8(0x80));
        vst1q_u8(p + 16 * i, v);
    }
#endif
}

/* Per row: start + the integer dot product of operands o0 .. o1 - 1 (columns 4 o0 .. 4 o1 - 1) with token xi's
   codes (the 8-bit codes' offset not yet added back where SIGNED_8BIT). Exact: int32 sums of bounded products. */
FP_INLINE VI tile_dot(const TOP* op, const int8_t* xi, const int o0, const int o1, const int BITS,
                        const int32_t start) {
#if defined(FP_AVX512)
    (void)BITS;
    /* two chains (even and odd operands) summed at the end: a token's sum waits on half as many vpdpbusd
       latencies, and the integer is the same (16-token step 0.89x) */
    __m512i a = _mm512_set1_epi32(start), b = _mm512_setzero_si512();
    int o = o0;
    for (; o + 1 < o1; o += 2) {
        a = _mm512_dpbusd_epi32(a, op[o], _mm512_set1_epi32(load_i32(xi + 4 * o)));
        b = _mm512_dpbusd_epi32(b, op[o + 1], _mm512_set1_epi32(load_i32(xi + 4 * o + 4)));
    }
    if (o < o1) a = _mm512_dpbusd_epi32(a, op[o], _mm512_set1_epi32(load_i32(xi + 4 * o)));
    return _mm512_add_epi32(a, b);
#elif defined(FP_AVX2) && defined(FP_AVXVNNI)
    (void)BITS;
    __m256i ra = _mm256_set1_epi32(start), rb = ra;
    for (int o = o0; o < o1; o++) {
        const __m256i xb = _mm256_set1_epi32(load_i32(xi + 4 * o));
        ra = _mm256_dpbusd_avx_epi32(ra, op[o].a, xb);
        rb = _mm256_dpbusd_avx_epi32(rb, op[o].b, xb);
    }
    return (VI){ra, rb};
#elif defined(FP_AVX2)
    /* vpmaddubsw: pairs of (unsigned code x signed x) summed into int16; summed over `per` operands in int16,
       which cannot overflow: 2 * per * (2^BITS - 1) * 127 <= 32767 (4 bits: 8 operands, 5: 4, 6: 2); then
       vpmaddwd with ones widens pairs to int32. 8-bit codes are signed here: |q| x (x with q's sign). */
    const int per = BITS == 4 ? 8 : BITS == 5 ? 4 : BITS == 6 ? 2 : 1;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i ra = _mm256_set1_epi32(start), rb = ra;
    for (int o = o0; o < o1; o += per) {
        __m256i sa = _mm256_setzero_si256(), sb = _mm256_setzero_si256();
        for (int j = o; j < o + per && j < o1; j++) {
            const __m256i xb = _mm256_set1_epi32(load_i32(xi + 4 * j));
            if (BITS == 8) {
                sa = _mm256_maddubs_epi16(_mm256_sign_epi8(op[j].a, op[j].a), _mm256_sign_epi8(xb, op[j].a));
                sb = _mm256_maddubs_epi16(_mm256_sign_epi8(op[j].b, op[j].b), _mm256_sign_epi8(xb, op[j].b));
            } else {
                sa = _mm256_add_epi16(sa, _mm256_maddubs_epi16(op[j].a, xb));
                sb = _mm256_add_epi16(sb, _mm256_maddubs_epi16(op[j].b, xb));
            }
        }
        ra = _mm256_add_epi32(ra, _mm256_madd_epi16(sa, ones));
        rb = _mm256_add_epi32(rb, _mm256_madd_epi16(sb, ones));
    }
    return (VI){ra, rb};
#else
    (void)BITS;
    const int8x16_t xa = vld1q_s8(xi), xb = vld1q_s8(xi + 16);
    VI r = vi_set1(start);
#define DOT_OP(o, x, lane)                                                                  \
    if (o0 <= (o) && (o) < o1)                                                              \
        for (int i = 0; i < 4; i++) r.v[i] = vdotq_laneq_s32(r.v[i], op[o].v[i], x, lane);
    DOT_OP(0, xa, 0) DOT_OP(1, xa, 1) DOT_OP(2, xa, 2) DOT_OP(3, xa, 3)
    DOT_OP(4, xb, 0) DOT_OP(5, xb, 1) DOT_OP(6, xb, 2) DOT_OP(7, xb, 3)
#undef DOT_OP
    return r;
#endif
}

/* A tile's dot products (start DOT_START) as floats. AVX-VNNI: vcvtdq2ps issues on the two ports that vpdpbusd and
   the FMAs share, a float subtraction also on a third (Golden Cove's adders on port 5). So there the sums start
   from the bits of 1.5 * 2^23 and one subtraction makes them floats: those bits + I, read as a float, are exactly
   12582912 + I for |I| < 2^22 (a tile's sums stay under 1.6e6: 32 x 255 x 127 with 8-bit codes, plus the offset
   128 x 32 x 127), and subtracting 12582912 leaves exactly I, the value vcvtdq2ps gives: bit-identical in every
   build. `int8_peak`: 0.86x the time of the Q4_1 line with vcvtdq2ps. Plain AVX2 and AVX-512 keep the conversion
   (its add costs them an operation more, or the ports are not the bound). */
#if defined(FP_AVX2) && defined(FP_AVXVNNI)
#define DOT_START 0x4B400000
FP_INLINE V dot_to_v(VI a) {
    const __m256 c = _mm256_set1_ps(12582912.0f);
    return (V){_mm256_sub_ps(_mm256_castsi256_ps(a.a), c), _mm256_sub_ps(_mm256_castsi256_ps(a.b), c)};
}
#else
#define DOT_START 0
FP_INLINE V dot_to_v(VI a) { return vi_to_v(a); }
#endif

/* ---- scales ---- */

/* per-row scale (dw) and offset (mw) of tile (rt, g); K6: dw = d, and the two halves' integer scales */
FP_INLINE void tile_scales(const tmat_t* W, int64_t rt, int64_t g, int64_t G, const int SM, V* dw, V* mw, VI* sca,
                           VI* scb) {
    const int64_t tg = rt * G + g;
    if (SM == SM_D || SM == SM_DM) {
        *dw = v_load_f16(W->d16 + tg * 16);
        *mw = SM == SM_D ? v_mul(*dw, v_set1(W->mconst)) : v_load_f16(W->m16 + tg * 16);
    } else if (SM == SM_K4) {
        const int64_t sb = rt * (G / 8) + g / 8;
        *dw = v_mul(v_load(W->dsb + sb * 16), v_load_u8(W->sc + tg * 16));
        *mw = v_mul(v_load(W->msb + sb * 16), v_load_u8(W->mn + tg * 16));
    } else {
        *dw = v_load(W->dsb + (rt * (G / 8) + g / 8) * 16);
        *sca = vi_load_i8((const int8_t*)(W->sc + tg * 32));
        *scb = vi_load_i8((const int8_t*)(W->sc + tg * 32 + 16));
    }
}

/* ---- the kernel ---- */

#define PREFETCH_TILES 8

/* the codes of the tile PREFETCH_TILES ahead of tile tg (many tokens per tile make too slow a consumer for the
   hardware prefetcher to stay ahead) */
FP_INLINE void prefetch_ahead(const tmat_t* W, int64_t tg, const int BITS) {
    const uint8_t* c = W->codes + (tg + PREFETCH_TILES) * (BITS == 8 ? 512 : 256);
    for (int l = 0; l < (BITS == 8 ? 8 : 4); l++) PREFETCH(c + 64 * l);
}

/* acc + the tile's share of token i (Q6_K aside): its integer sums a (started at DOT_START) scaled. D: the codes'
   offset added in the integer (one float product fewer, and exact); DM, K4: the offsets' product m * sx. */
FP_INLINE V tile_acc(V acc, VI a, V dw, V mw, const float* dx, const float* sx, const int32_t* s16, int64_t i,
                     int64_t G, int32_t moff, const int BITS, const int SM) {
    const V dxd = v_mul(dw, v_set1(dx[i * G]));
    if (SM == SM_D) {
        if (!(SIGNED_8BIT && BITS == 8)) a = vi_add(a, vi_set1(moff * (s16[2 * i * G] + s16[2 * i * G + 1])));
        return v_fma(dot_to_v(a), dxd, acc);
    }
    return v_fma(mw, v_set1(sx[i * G]), v_fma(dot_to_v(a), dxd, acc));
}

/* rows of tile rt for tokens t0 .. t0 + TN - 1: y[t, 16 rt + r]. The tile's codes are decoded once for the TN
   tokens; each token's sums run in the same order whatever TN (the result of a token never depends on TN). */
FP_INLINE void tile_block(const tmat_t* W, int64_t rt, const qact_t* X, int64_t t0, const int TN, float* y,
                          int64_t ldy, const int BITS, const int SM) {
    const int64_t G = W->k / 32, LD = X->ld;
    const int32_t moff = (int32_t)W->mconst;  /* SM_D: the weight is d * (code + moff) */
    /* token i of column group g: codes at xq + 32 i, scales at dx[i G], sx[i G], sums at s16[2 i G] */
    const int8_t* xq = X->q + t0 * 32;
    const float *dx = X->dx + t0 * G, *sx = X->sx + t0 * G;
    const int32_t* s16 = X->s16 + 2 * t0 * G;
    V acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < TN; i++) acc[i] = v_zero();
    for (int64_t g = 0; g < G; g++, xq += 32 * LD, dx++, sx++, s16 += 2) {
        if (TN >= 8) prefetch_ahead(W, rt * G + g, BITS);
        TOP op[8];
        tile_ops(W, rt * G + g, BITS, op);
        V dw, mw = v_zero();
        VI sca = vi_zero(), scb = vi_zero();
        tile_scales(W, rt, g, G, SM, &dw, &mw, &sca, &scb);
#pragma GCC unroll 16
        for (int i = 0; i < TN; i++) {
            const int8_t* xi = xq + 32 * i;
            if (SM == SM_K6) {  /* each half of the columns has its own integer scale */
                const V dxd = v_mul(dw, v_set1(dx[i * G]));
                VI a = tile_dot(op, xi, 0, 4, BITS, 0), b = tile_dot(op, xi, 4, 8, BITS, 0);
                a = vi_mullo(vi_sub(a, vi_set1(32 * s16[2 * i * G])), sca);
                b = vi_mullo(vi_sub(b, vi_set1(32 * s16[2 * i * G + 1])), scb);
                acc[i] = v_fma(vi_to_v(vi_add(a, b)), dxd, acc[i]);
            } else {
                acc[i] = tile_acc(acc[i], tile_dot(op, xi, 0, 8, BITS, DOT_START), dw, mw, dx, sx, s16, i, G, moff,
                                  BITS, SM);
            }
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < TN; i++) v_store(y + (t0 + i) * ldy + rt * 16, acc[i]);
}

#if defined(FP_AVX2) && !defined(FP_AVXVNNI)
/* Plain AVX2 has 16 registers of 8 lanes: a whole tile's operands (16 registers) and two accumulators per token do not
   fit, and the spills cost more than the arithmetic. So a block of tokens runs each half of the tile (rows 0-7,
   then 8-15) over every column group: per half, 8 operand registers that stay in L1 and one accumulator per token.
   The integer dot products are the same exact sums and the float operations per lane the same, in the same order,
   so the results are bit-identical with tile_block's. (With AVX-VNNI, one vpdpbusd per operand leaves room enough
   for tile_block, which measured faster there.) */

/* the eight operands of rows 8 h .. 8 h + 7 of tile tg; 8-bit codes as q = code - 128 in op and |q| in mag */
FP_INLINE void half_ops(const tmat_t* W, int64_t tg, const int BITS, const int h, __m256i op[8], __m256i mag[8]) {
    if (BITS == 8) {
        const uint8_t* c = W->codes + tg * 512 + 32 * h;
        for (int o = 0; o < 8; o++) {
            op[o] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(c + 64 * o)), _mm256_set1_epi8((char)0x80));
            mag[o] = _mm256_sign_epi8(op[o], op[o]);
        }
        return;
    }
    const uint8_t* c = W->codes + tg * 256 + 32 * h;
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int p = 0; p < 4; p++) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(c + 64 * p));
        op[2 * p] = _mm256_and_si256(v, m4);
        op[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    }
    if (BITS >= 5) {
        const uint8_t* pl = W->planes + tg * 64 * (BITS - 4) + 32 * h;
        for (int plane = 0; plane < BITS - 4; plane++) {
            const __m256i p = _mm256_loadu_si256((const __m256i*)(pl + 64 * plane));
            for (int o = 0; o < 8; o++) op[o] = _mm256_add_epi8(op[o], plane_bits(p, o, 16 << plane));
        }
    }
}

/* An empty asm that "changes" v: the sum stays one chain in source order. Otherwise GCC's reassociation turns a
   token's eight products into a tree and, with the block's tokens unrolled, hoists the broadcasts and products of
   several tokens at once; with the eight operands already in registers the partial sums spill (two stores and two
   reloads a token). As one chain each token needs three registers. The integer is the same either way (exact int16 /
   int32 sums); 16-token tiles, one thread: Q4_1 1.14x, Q8_0 1.14x faster. */
#define SUM_IN_ORDER(v) __asm__("" : "+x"(v))

/* one half's integer dot products of operands o0 .. o1 - 1 with token xi's codes (as tile_dot's lanes) */
FP_INLINE __m256i half_dot(const __m256i* op, const __m256i* mag, const int8_t* xi, const int o0, const int o1,
                           const int BITS) {
    const int per = BITS == 4 ? 8 : BITS == 5 ? 4 : BITS == 6 ? 2 : 1;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i r = _mm256_setzero_si256();
    for (int o = o0; o < o1; o += per) {
        __m256i s = _mm256_setzero_si256();
        for (int j = o; j < o + per && j < o1; j++) {
            const __m256i xb = _mm256_set1_epi32(load_i32(xi + 4 * j));
            if (BITS == 8)
                s = _mm256_maddubs_epi16(mag[j], _mm256_sign_epi8(xb, op[j]));
            else
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(op[j], xb));
            if (BITS != 8) SUM_IN_ORDER(s);
        }
        r = _mm256_add_epi32(r, _mm256_madd_epi16(s, ones));
        if (BITS == 8) SUM_IN_ORDER(r);
    }
    return r;
}

FP_INLINE void tile_block_halves(const tmat_t* W, int64_t rt, const qact_t* X, int64_t t0, const int TN, float* y,
                                 int64_t ldy, const int BITS, const int SM) {
    const int64_t G = W->k / 32, LD = X->ld;
    const int32_t moff = (int32_t)W->mconst;
    for (int h = 0; h < 2; h++) {
        const int8_t* xq = X->q + t0 * 32;
        const float *dx = X->dx + t0 * G, *sx = X->sx + t0 * G;
        const int32_t* s16 = X->s16 + 2 * t0 * G;
        __m256 acc[16];
#pragma GCC unroll 16
        for (int i = 0; i < TN; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t g = 0; g < G; g++, xq += 32 * LD, dx++, sx++, s16 += 2) {
            if (h == 0) prefetch_ahead(W, rt * G + g, BITS);
            __m256i op[8], mag[8];
            half_ops(W, rt * G + g, BITS, h, op, mag);
            V dw2, mw2 = v_zero();
            VI sca2 = vi_zero(), scb2 = vi_zero();
            tile_scales(W, rt, g, G, SM, &dw2, &mw2, &sca2, &scb2);
            const __m256 dw = h ? dw2.b : dw2.a, mw = h ? mw2.b : mw2.a;
            const __m256i sca = h ? sca2.b : sca2.a, scb = h ? scb2.b : scb2.a;
#pragma GCC unroll 8
            for (int i = 0; i < TN; i++) {
                const int8_t* xi = xq + 32 * i;
                const __m256 dxd = _mm256_mul_ps(dw, _mm256_set1_ps(dx[i * G]));
                if (SM == SM_K6) {
                    __m256i a = half_dot(op, mag, xi, 0, 4, BITS), b = half_dot(op, mag, xi, 4, 8, BITS);
                    a = _mm256_mullo_epi32(_mm256_sub_epi32(a, _mm256_set1_epi32(32 * s16[2 * i * G])), sca);
                    b = _mm256_mullo_epi32(_mm256_sub_epi32(b, _mm256_set1_epi32(32 * s16[2 * i * G + 1])), scb);
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a, b)), dxd, acc[i]);
                } else if (SM == SM_D) {
                    __m256i a = half_dot(op, mag, xi, 0, 8, BITS);
                    if (BITS != 8)
                        a = _mm256_add_epi32(a, _mm256_set1_epi32(moff * (s16[2 * i * G] + s16[2 * i * G + 1])));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), dxd, acc[i]);
                } else {
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(half_dot(op, mag, xi, 0, 8, BITS)), dxd, acc[i]);
                    acc[i] = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx[i * G]), acc[i]);
                }
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < TN; i++) _mm256_storeu_ps(y + (t0 + i) * ldy + rt * 16 + 8 * h, acc[i]);
    }
}
#define TILE_BLOCK_MANY tile_block_halves
#elif defined(FP_AVX512) || defined(FP_AVXVNNI)
/* vpdpbusd builds, several tokens: tile_block's loop runs a token's vpdpbusd as one or two chains (AVX-VNNI: two of
   8, 40 cycles of latency each), so keeping the ports busy takes more tokens in flight than the scheduler holds.
   Here each operand meets DOT_TOKENS tokens in turn: that many independent chains (AVX-VNNI: twice as many), the
   operands held in registers or reloaded from L1 once per DOT_TOKENS tokens. The same integers, the same float
   operations per lane in the same order: bit-identical with tile_block. (Q6_K's two integer scales per tile keep
   tile_block. Both orders in one function measured 1.17x slower with AVX-VNNI: GCC spilled the sums.) */
#if defined(FP_AVX512)
#define DOT_TOKENS 8
#else
#define DOT_TOKENS 4
#endif

/* r + operand op's products with a token's 4 codes x, per row */
FP_INLINE VI dot_op(VI r, TOP op, int32_t x) {
#if defined(FP_AVX512)
    return _mm512_dpbusd_epi32(r, op, _mm512_set1_epi32(x));
#else
    const __m256i xb = _mm256_set1_epi32(x);
    return (VI){_mm256_dpbusd_avx_epi32(r.a, op.a, xb), _mm256_dpbusd_avx_epi32(r.b, op.b, xb)};
#endif
}

FP_INLINE void tile_block_tokens(const tmat_t* W, int64_t rt, const qact_t* X, int64_t t0, const int TN, float* y,
                                 int64_t ldy, const int BITS, const int SM) {
    if (SM == SM_K6 || TN < DOT_TOKENS) {
        tile_block(W, rt, X, t0, TN, y, ldy, BITS, SM);
        return;
    }
    const int64_t G = W->k / 32, LD = X->ld;
    const int32_t moff = (int32_t)W->mconst;
    const int8_t* xq = X->q + t0 * 32;
    const float *dx = X->dx + t0 * G, *sx = X->sx + t0 * G;
    const int32_t* s16 = X->s16 + 2 * t0 * G;
    V acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < TN; i++) acc[i] = v_zero();
    for (int64_t g = 0; g < G; g++, xq += 32 * LD, dx++, sx++, s16 += 2) {
        prefetch_ahead(W, rt * G + g, BITS);
        TOP op[8];
        tile_ops(W, rt * G + g, BITS, op);
        V dw, mw = v_zero();
        VI sca, scb;
        tile_scales(W, rt, g, G, SM, &dw, &mw, &sca, &scb);
#pragma GCC unroll 4
        for (int i0 = 0; i0 < TN; i0 += DOT_TOKENS) {
            VI r[DOT_TOKENS];
#pragma GCC unroll 8
            for (int i = 0; i < DOT_TOKENS; i++) r[i] = vi_set1(DOT_START);
#pragma GCC unroll 8
            for (int o = 0; o < 8; o++)
#pragma GCC unroll 8
                for (int i = 0; i < DOT_TOKENS; i++) r[i] = dot_op(r[i], op[o], load_i32(xq + 32 * (i0 + i) + 4 * o));
#pragma GCC unroll 8
            for (int j = 0; j < DOT_TOKENS; j++)
                acc[i0 + j] = tile_acc(acc[i0 + j], r[j], dw, mw, dx, sx, s16, i0 + j, G, moff, BITS, SM);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < TN; i++) v_store(y + (t0 + i) * ldy + rt * 16, acc[i]);
}
#define TILE_BLOCK_MANY tile_block_tokens
#else
#define TILE_BLOCK_MANY tile_block
#endif

/* Tokens per pass over a tile: as many as the registers hold (AVX-512: 32 of 16 lanes; AVX-VNNI and NEON: 16 of 8
   and 32 of 4 lanes, so fewer accumulators before they spill). Plain AVX2's halves keep their accumulators in L1
   (one load and one store a token and column group, beside its 20 vector operations), so there 16 tokens share
   each decoding of a tile's codes: a 16-token step 0.85x (SmolLM2) to 0.82x (Gemma 3) with the chains above. */
#if defined(FP_AVX512) || (defined(FP_AVX2) && !defined(FP_AVXVNNI))
#define TN_MAX 16
#else
#define TN_MAX 8
#endif

/* A last 2 or 3 tokens run as one block too (plain AVX2: of halves; the vpdpbusd and NEON builds: tile_block), not
   token by token, which decoded each tile once a token (one thread, 16-row tiles of 576 to 1536 columns: 2 tokens
   0.71-0.93x the time, 3 tokens 0.64-0.90x, by build and type). One token keeps tile_block, whose single pass over
   the codes is the memory-bound path (plain AVX2's halves there: 1.1-1.2x slower). */
#define DEFINE_TILE_ROWS(NAME, BITS, SM)                                                                     \
    static void NAME(const tmat_t* W, int64_t rt, const qact_t* X, int64_t T, float* y, int64_t ldy) {      \
        int64_t t0 = 0;                                                                                     \
        if (TN_MAX == 16)                                                                                   \
            for (; t0 + 16 <= T; t0 += 16) TILE_BLOCK_MANY(W, rt, X, t0, 16, y, ldy, BITS, SM);             \
        for (; t0 + 8 <= T; t0 += 8) TILE_BLOCK_MANY(W, rt, X, t0, 8, y, ldy, BITS, SM);                    \
        if (t0 + 4 <= T) { TILE_BLOCK_MANY(W, rt, X, t0, 4, y, ldy, BITS, SM); t0 += 4; }                   \
        if (T - t0 == 3) TILE_BLOCK_MANY(W, rt, X, t0, 3, y, ldy, BITS, SM);                                \
        if (T - t0 == 2) TILE_BLOCK_MANY(W, rt, X, t0, 2, y, ldy, BITS, SM);                                \
        if (T - t0 == 1) tile_block(W, rt, X, t0, 1, y, ldy, BITS, SM);                                     \
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

/* ---- sharing the row tiles out (internal.h) ---- */

#define SLOT(phase, next, end) (((uint64_t)(phase) << 48) | ((uint64_t)(next) << 24) | (uint64_t)(end))
#define SLOT_PHASE(w) ((uint32_t)((w) >> 48))
#define SLOT_NEXT(w) ((int64_t)(((w) >> 24) & 0xffffff))
#define SLOT_END(w) ((int64_t)((w) & 0xffffff))

/* make slot s hold [lo, hi) for `phase` unless some thread already did */
static void slot_open(work_slot_t* s, uint32_t phase, int64_t lo, int64_t hi) {
    uint64_t old = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
    while (SLOT_PHASE(old) != phase)
        if (__atomic_compare_exchange_n(&s->word, &old, SLOT(phase, lo, hi), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return;
}

/* claim up to c tiles from the front (the owner) or the back (another thread) of slot s: [*a, *b), or 0 */
static int slot_claim(work_slot_t* s, uint32_t phase, int64_t c, int front, int64_t* a, int64_t* b) {
    uint64_t old = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
    for (;;) {
        const int64_t next = SLOT_NEXT(old), end = SLOT_END(old);
        if (SLOT_PHASE(old) != phase || next >= end) return 0;
        const int64_t from = front ? next : (end - c > next ? end - c : next);
        const int64_t upto = front ? (next + c < end ? next + c : end) : end;
        const uint64_t claimed = front ? SLOT(phase, upto, end) : SLOT(phase, next, from);
        if (__atomic_compare_exchange_n(&s->word, &old, claimed, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *a = from;
            *b = upto;
            return 1;
        }
    }
}

static void tile_range(const tmat_t* const* mats, const qact_t* X, int64_t T, float* y, int64_t ldy, int64_t a,
                       int64_t b) {
    for (int64_t j = a; j < b; j++) {
        int64_t rt, col;
        const tmat_t* W = locate_tile(mats, j, &rt, &col);
        tile_rows(W, rt, X, T, y + col, ldy);
    }
}

/* y[:, col_m + ...] = X @ W_m^T for `nm` matrices sharing the input X (fused q|k|v, gate|up); called by every
   thread of the enclosing parallel region, which share out the row tiles of all of them (see internal.h). A
   token's result does not depend on which thread computes its rows. No barrier at the end: the caller places it. */
void tile_matmul_multi(const tmat_t* const* mats, int nm, const qact_t* X, int64_t T, float* y, int64_t ldy,
                       team_t* team) {
    int64_t total = 0;
    for (int m = 0; m < nm; m++) total += mats[m]->n / 16;
    const int n = omp_get_num_threads(), me = omp_get_thread_num();
    if (n > FP_MAX_THREADS || total >= (1 << 24)) {  /* beyond the slots: contiguous parts, no stealing */
        tile_range(mats, X, T, y, ldy, total * me / n, total * (me + 1) / n);
        return;
    }
    const uint32_t phase = (team->calls++ % 0xffff) + 1;  /* 1 .. 65535: 0 is a zeroed slot's */
    work_slot_t* slots = team->work->slot;
    for (int t = 0; t < n; t++) slot_open(&slots[t], phase, total * t / n, total * (t + 1) / n);
    const int64_t chunk = (total / n + 15) / 16 > 0 ? (total / n + 15) / 16 : 1;
    int64_t a, b;
    while (slot_claim(&slots[me], phase, chunk, 1, &a, &b)) tile_range(mats, X, T, y, ldy, a, b);
    for (int k = 1; k < n; k++) {
        const int other = (me + k) % n;
        while (slot_claim(&slots[other], phase, chunk, 0, &a, &b)) tile_range(mats, X, T, y, ldy, a, b);
    }
}

/* Python entry: y (T, sum n) = quantize(x (T, K)) @ [W_0 | W_1 ...]^T, with scratch for the quantized x. */
void tile_matmul(const tmat_t* const* mats, int64_t nm, const float* x, int64_t t, int8_t* q, float* dx, float* sx,
                 int32_t* s16, float* y, int64_t ldy, int64_t nthreads) {
    qact_t a = {q, dx, sx, s16, mats[0]->k, t};
    quantize_rows(x, t, mats[0]->k, mats[0]->k, q, dx, sx, s16);
    work_t work;
    memset(&work, 0, sizeof(work));
#pragma omp parallel num_threads((int)nthreads)
    {
        team_t team = {&work, 0};
        tile_matmul_multi(mats, (int)nm, &a, t, y, ldy, &team);
    }
}

/* ---- dequantization ---- */

/* tile (rt, g) as 16 rows x 32 columns of float32 weights, exactly d * code + m in gguf-py's order */
FP_INLINE void tile_weights(const tmat_t* W, int64_t rt, int64_t g, int64_t G, const int BITS, const int SM,
                            float w[16][32]) {
    TOP op[8];
    tile_ops(W, rt * G + g, BITS, op);
    uint8_t ops[8][64], codes[16][32];
    for (int o = 0; o < 8; o++) top_store(ops[o], op[o], BITS);
    for (int o = 0; o < 8; o++)
        for (int r = 0; r < 16; r++) memcpy(&codes[r][4 * o], &ops[o][4 * r], 4);
    V dw, mw = v_zero();
    VI sca = vi_zero(), scb = vi_zero();
    tile_scales(W, rt, g, G, SM, &dw, &mw, &sca, &scb);
    float d[2][16], m[2][16];  /* per half of the columns: scale and offset of each row */
    if (SM == SM_K6) {  /* (d sc) * code + (-32 d sc): exact, as d * sc * (code - 32) */
        const V da = v_mul(dw, vi_to_v(sca)), db = v_mul(dw, vi_to_v(scb));
        v_store(d[0], da);
        v_store(d[1], db);
        v_store(m[0], v_mul(da, v_set1(-32.0f)));
        v_store(m[1], v_mul(db, v_set1(-32.0f)));
    } else {
        v_store(d[0], dw);
        v_store(d[1], dw);
        v_store(m[0], mw);
        v_store(m[1], mw);
    }
    for (int r = 0; r < 16; r++)
        for (int h = 0; h < 2; h++)
            v_store(&w[r][16 * h], v_add(v_mul(v_load_u8(&codes[r][16 * h]), v_set1(d[h][r])), v_set1(m[h][r])));
}

#define TILE_WEIGHTS(BITS)                                                                                   \
    switch (W->smode) {                                                                                     \
        case SM_D: tile_weights(W, rt, g, G, BITS, SM_D, w); break;                                         \
        case SM_DM: tile_weights(W, rt, g, G, BITS, SM_DM, w); break;                                       \
        case SM_K4: tile_weights(W, rt, g, G, BITS, SM_K4, w); break;                                       \
        default: tile_weights(W, rt, g, G, BITS, SM_K6, w); break;                                          \
    }

/* Rows 16 rt0 .. 16 rt1 - 1 of W: out (rows, K), float32 (exactly the GGUF weights, computed as d * q + m in
   gguf-py's order) or, with bf16 != 0, those values rounded to bf16. */
void tile_dequant(const tmat_t* W, int64_t rt0, int64_t rt1, void* out, int64_t bf16, int64_t nthreads) {
    const int64_t K = W->k, G = K / 32;
#pragma omp parallel for num_threads((int)nthreads) schedule(static)
    for (int64_t rt = rt0; rt < rt1; rt++) {
        for (int64_t g = 0; g < G; g++) {
            float w[16][32];
            switch (W->bits) {
                case 4: TILE_WEIGHTS(4) break;
                case 5: TILE_WEIGHTS(5) break;
                case 6: TILE_WEIGHTS(6) break;
                default: TILE_WEIGHTS(8) break;
            }
            for (int r = 0; r < 16; r++) {
                const int64_t at = (rt * 16 + r - rt0 * 16) * K + g * 32;
                for (int h = 0; h < 2; h++) {
                    if (bf16) v_store_bf16((uint16_t*)out + at + 16 * h, v_load(&w[r][16 * h]));
                    else v_store((float*)out + at + 16 * h, v_load(&w[r][16 * h]));
                }
            }
        }
    }
}
