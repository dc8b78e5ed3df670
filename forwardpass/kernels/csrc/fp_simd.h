/* The vector layer every kernel is written against, one definition per instruction set.

   V is 16 float32 lanes and VI 16 int32 lanes: one register on AVX-512, two on AVX2, four on NEON. The kernels
   (tiles.c, attention.c, decoder.c) use only these operations, so each build runs the same arithmetic in the
   same order per lane; only horizontal reductions (v_hsum's tree) differ between instruction sets, and each is a
   fixed tree, so a result never depends on anything but its own inputs.

   Build with exactly one of FP_AVX512 (AVX-512 F/BW/VL/VNNI), FP_AVX2 (AVX2, FMA, F16C; AVX-VNNI's 256-bit
   vpdpbusd where FP_AVXVNNI is also set) or FP_NEON (AArch64 with the dotprod extension). */
#ifndef FP_SIMD_H
#define FP_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(FP_AVX512) + defined(FP_AVX2) + defined(FP_NEON) != 1
#error "define exactly one of FP_AVX512, FP_AVX2, FP_NEON"
#endif

#if defined(FP_AVX512) || defined(FP_AVX2)
#include <immintrin.h>
#else
#include <arm_neon.h>
#endif

#define FP_INLINE static inline __attribute__((always_inline))
#define PREFETCH(p) __builtin_prefetch((const void*)(p), 0, 3)

/* spin-wait hint */
FP_INLINE void cpu_relax(void) {
#if defined(FP_NEON)
    __asm__ __volatile__("yield");
#else
    _mm_pause();
#endif
}

FP_INLINE float f16_to_f32(uint16_t h) {
#if defined(FP_NEON)
    __fp16 f;
    memcpy(&f, &h, 2);
    return (float)f;
#else
    return _cvtsh_ss(h);
#endif
}

FP_INLINE float bf16_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* round to nearest even, as torch's .to(bfloat16); NaN stays NaN */
FP_INLINE uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* ------------------------------------------------------------------------------------------------------------ */
#if defined(FP_AVX512)

typedef __m512 V;
typedef __m512i VI;

FP_INLINE V v_zero(void) { return _mm512_setzero_ps(); }
FP_INLINE V v_set1(float x) { return _mm512_set1_ps(x); }
FP_INLINE V v_load(const float* p) { return _mm512_loadu_ps(p); }
FP_INLINE void v_store(float* p, V v) { _mm512_storeu_ps(p, v); }
FP_INLINE V v_add(V a, V b) { return _mm512_add_ps(a, b); }
FP_INLINE V v_sub(V a, V b) { return _mm512_sub_ps(a, b); }
FP_INLINE V v_mul(V a, V b) { return _mm512_mul_ps(a, b); }
FP_INLINE V v_div(V a, V b) { return _mm512_div_ps(a, b); }
FP_INLINE V v_fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }   /* a * b + c, one rounding */
FP_INLINE V v_fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); } /* c - a * b, one rounding */
FP_INLINE V v_max(V a, V b) { return _mm512_max_ps(a, b); }
FP_INLINE V v_min(V a, V b) { return _mm512_min_ps(a, b); }
FP_INLINE V v_abs(V a) { return _mm512_abs_ps(a); }
FP_INLINE float v_hsum(V v) { return _mm512_reduce_add_ps(v); }
FP_INLINE float v_hmax(V v) { return _mm512_reduce_max_ps(v); }
FP_INLINE V v_round(V v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* bit i: lane i is NaN / equals b / is >= b */
FP_INLINE uint32_t v_nan_mask(V a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
FP_INLINE uint32_t v_eq_mask(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
FP_INLINE uint32_t v_ge_mask(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
/* lane i of a where bit i of m is set, else lane i of b */
FP_INLINE V v_select_bits(uint32_t m, V a, V b) { return _mm512_mask_mov_ps(b, (__mmask16)m, a); }
FP_INLINE V v_load_bf16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
FP_INLINE V v_load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
FP_INLINE V v_load_u8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
/* 16 floats -> 16 bf16 (round to nearest even; finite values) */
FP_INLINE void v_store_bf16(uint16_t* p, V w) {
    const __m512i u = _mm512_castps_si512(w);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
}
/* 2^n * p for integral n in [-127, 127] */
FP_INLINE V v_ldexp(V p, V n) { return _mm512_scalef_ps(p, n); }

FP_INLINE VI vi_zero(void) { return _mm512_setzero_si512(); }
FP_INLINE VI vi_set1(int32_t x) { return _mm512_set1_epi32(x); }
FP_INLINE VI vi_add(VI a, VI b) { return _mm512_add_epi32(a, b); }
FP_INLINE VI vi_sub(VI a, VI b) { return _mm512_sub_epi32(a, b); }
FP_INLINE VI vi_mullo(VI a, VI b) { return _mm512_mullo_epi32(a, b); }
FP_INLINE V vi_to_v(VI a) { return _mm512_cvtepi32_ps(a); }
FP_INLINE VI v_to_vi(V a) { return _mm512_cvtps_epi32(a); } /* round to nearest even */
FP_INLINE int32_t vi_hsum(VI a) { return _mm512_reduce_add_epi32(a); }
FP_INLINE VI vi_load_i8(const int8_t* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)); }
/* 16 int32 in [-128, 127] -> 16 int8 */
FP_INLINE void vi_store_i8(int8_t* p, VI a) { _mm_storeu_si128((__m128i*)p, _mm512_cvtsepi32_epi8(a)); }

/* lane j of the result = the sum of the 16 lanes of a[j] (a fixed tree: transposes, no scalar reductions) */
FP_INLINE V v_sum16x16(const V* a) {
    __m512 c[8], g[4];
    for (int i = 0; i < 8; i++)
        c[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        const __m512d x = _mm512_castps_pd(c[2 * i]), y = _mm512_castps_pd(c[2 * i + 1]);
        g[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    const __m512 h01 = _mm512_add_ps(_mm512_shuffle_f32x4(g[0], g[1], 0x88), _mm512_shuffle_f32x4(g[0], g[1], 0xdd));
    const __m512 h23 = _mm512_add_ps(_mm512_shuffle_f32x4(g[2], g[3], 0x88), _mm512_shuffle_f32x4(g[2], g[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(h01, h23, 0x88), _mm512_shuffle_f32x4(h01, h23, 0xdd));
}

/* ------------------------------------------------------------------------------------------------------------ */
#elif defined(FP_AVX2)

typedef struct { __m256 a, b; } V;    /* lanes 0-7, 8-15 */
typedef struct { __m256i a, b; } VI;

#define V2(op, x, y) ((V){op((x).a, (y).a), op((x).b, (y).b)})
#define VI2(op, x, y) ((VI){op((x).a, (y).a), op((x).b, (y).b)})
FP_INLINE V v_zero(void) { return (V){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
FP_INLINE V v_set1(float x) { return (V){_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
FP_INLINE V v_load(const float* p) { return (V){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
FP_INLINE void v_store(float* p, V v) { _mm256_storeu_ps(p, v.a); _mm256_storeu_ps(p + 8, v.b); }
FP_INLINE V v_add(V x, V y) { return V2(_mm256_add_ps, x, y); }
FP_INLINE V v_sub(V x, V y) { return V2(_mm256_sub_ps, x, y); }
FP_INLINE V v_mul(V x, V y) { return V2(_mm256_mul_ps, x, y); }
FP_INLINE V v_div(V x, V y) { return V2(_mm256_div_ps, x, y); }
FP_INLINE V v_max(V x, V y) { return V2(_mm256_max_ps, x, y); }
FP_INLINE V v_min(V x, V y) { return V2(_mm256_min_ps, x, y); }
FP_INLINE V v_fma(V x, V y, V z) { return (V){_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)}; }
FP_INLINE V v_fnma(V x, V y, V z) { return (V){_mm256_fnmadd_ps(x.a, y.a, z.a), _mm256_fnmadd_ps(x.b, y.b, z.b)}; }
FP_INLINE V v_abs(V x) {
    const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    return (V){_mm256_and_ps(x.a, m), _mm256_and_ps(x.b, m)};
}
FP_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
FP_INLINE float v_hsum(V v) { return hsum8(_mm256_add_ps(v.a, v.b)); }
FP_INLINE float v_hmax(V v) {
    const __m256 m8 = _mm256_max_ps(v.a, v.b);
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
FP_INLINE V v_round(V v) {
    return (V){_mm256_round_ps(v.a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
               _mm256_round_ps(v.b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
FP_INLINE uint32_t v_nan_mask(V x) {
    return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(x.a, x.a, _CMP_UNORD_Q)) |
           (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(x.b, x.b, _CMP_UNORD_Q)) << 8;
}
FP_INLINE uint32_t v_eq_mask(V x, V y) {
    return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(x.a, y.a, _CMP_EQ_OQ)) |
           (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(x.b, y.b, _CMP_EQ_OQ)) << 8;
}
FP_INLINE uint32_t v_ge_mask(V x, V y) {
    return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(x.a, y.a, _CMP_GE_OQ)) |
           (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(x.b, y.b, _CMP_GE_OQ)) << 8;
}
FP_INLINE __m256 select8(uint32_t m, __m256 a, __m256 b) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), bit), bit);
    return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(on));
}
FP_INLINE V v_select_bits(uint32_t m, V x, V y) { return (V){select8(m & 0xff, x.a, y.a), select8(m >> 8, x.b, y.b)}; }
FP_INLINE __m256 bf16x8(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
FP_INLINE V v_load_bf16(const uint16_t* p) { return (V){bf16x8(p), bf16x8(p + 8)}; }
FP_INLINE V v_load_f16(const uint16_t* p) {
    return (V){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 8)))};
}
FP_INLINE V v_load_u8(const uint8_t* p) {
    const __m128i b = _mm_loadu_si128((const __m128i*)p);
    return (V){_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)))};
}
FP_INLINE __m128i bf16_round8(__m256 w) {
    const __m256i u = _mm256_castps_si256(w);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
FP_INLINE void v_store_bf16(uint16_t* p, V w) {
    _mm_storeu_si128((__m128i*)p, bf16_round8(w.a));
    _mm_storeu_si128((__m128i*)(p + 8), bf16_round8(w.b));
}
FP_INLINE __m256 ldexp8(__m256 p, __m256 n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
FP_INLINE V v_ldexp(V p, V n) { return (V){ldexp8(p.a, n.a), ldexp8(p.b, n.b)}; }

FP_INLINE VI vi_zero(void) { return (VI){_mm256_setzero_si256(), _mm256_setzero_si256()}; }
FP_INLINE VI vi_set1(int32_t x) { return (VI){_mm256_set1_epi32(x), _mm256_set1_epi32(x)}; }
FP_INLINE VI vi_add(VI x, VI y) { return VI2(_mm256_add_epi32, x, y); }
FP_INLINE VI vi_sub(VI x, VI y) { return VI2(_mm256_sub_epi32, x, y); }
FP_INLINE VI vi_mullo(VI x, VI y) { return VI2(_mm256_mullo_epi32, x, y); }
FP_INLINE V vi_to_v(VI x) { return (V){_mm256_cvtepi32_ps(x.a), _mm256_cvtepi32_ps(x.b)}; }
FP_INLINE VI v_to_vi(V x) { return (VI){_mm256_cvtps_epi32(x.a), _mm256_cvtps_epi32(x.b)}; }
FP_INLINE int32_t vi_hsum(VI x) {
    __m256i s8 = _mm256_add_epi32(x.a, x.b);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}
FP_INLINE VI vi_load_i8(const int8_t* p) {
    const __m128i b = _mm_loadu_si128((const __m128i*)p);
    return (VI){_mm256_cvtepi8_epi32(b), _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))};
}
FP_INLINE void vi_store_i8(int8_t* p, VI x) {
    const __m256i w = _mm256_packs_epi32(x.a, x.b);             /* per 128-bit lane: a0-3 b0-3 | a4-7 b4-7 */
    const __m128i b = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    /* bytes: a0-3 b0-3 a4-7 b4-7 -> a0-7 b0-7 */
    _mm_storeu_si128((__m128i*)p, _mm_shuffle_epi8(b, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15)));
}

/* lane j of the 8-lane result = the sum of the 8 lanes of a[j] (fixed tree) */
FP_INLINE __m256 sum8x8(const __m256* a) {
    const __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
    /* q0 = [s0 s1 s2 s3 (low halves) | s0 s1 s2 s3 (high halves)], likewise q1 for 4-7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}
FP_INLINE V v_sum16x16(const V* a) {
    __m256 t[16];
    for (int j = 0; j < 16; j++) t[j] = _mm256_add_ps(a[j].a, a[j].b);
    return (V){sum8x8(t), sum8x8(t + 8)};
}

/* ------------------------------------------------------------------------------------------------------------ */
#else /* FP_NEON */

typedef struct { float32x4_t v[4]; } V;
typedef struct { int32x4_t v[4]; } VI;

#define V4(op, x, y) ((V){{op((x).v[0], (y).v[0]), op((x).v[1], (y).v[1]), op((x).v[2], (y).v[2]), op((x).v[3], (y).v[3])}})
#define VI4(op, x, y) ((VI){{op((x).v[0], (y).v[0]), op((x).v[1], (y).v[1]), op((x).v[2], (y).v[2]), op((x).v[3], (y).v[3])}})
FP_INLINE V v_zero(void) { const float32x4_t z = vdupq_n_f32(0.0f); return (V){{z, z, z, z}}; }
FP_INLINE V v_set1(float x) { const float32x4_t z = vdupq_n_f32(x); return (V){{z, z, z, z}}; }
FP_INLINE V v_load(const float* p) { return (V){{vld1q_f32(p), vld1q_f32(p + 4), vld1q_f32(p + 8), vld1q_f32(p + 12)}}; }
FP_INLINE void v_store(float* p, V x) {
    vst1q_f32(p, x.v[0]); vst1q_f32(p + 4, x.v[1]); vst1q_f32(p + 8, x.v[2]); vst1q_f32(p + 12, x.v[3]);
}
FP_INLINE V v_add(V x, V y) { return V4(vaddq_f32, x, y); }
FP_INLINE V v_sub(V x, V y) { return V4(vsubq_f32, x, y); }
FP_INLINE V v_mul(V x, V y) { return V4(vmulq_f32, x, y); }
FP_INLINE V v_div(V x, V y) { return V4(vdivq_f32, x, y); }
FP_INLINE V v_max(V x, V y) { return V4(vmaxq_f32, x, y); }
FP_INLINE V v_min(V x, V y) { return V4(vminq_f32, x, y); }
FP_INLINE V v_fma(V x, V y, V z) {
    V r;
    for (int i = 0; i < 4; i++) r.v[i] = vfmaq_f32(z.v[i], x.v[i], y.v[i]);
    return r;
}
FP_INLINE V v_fnma(V x, V y, V z) {
    V r;
    for (int i = 0; i < 4; i++) r.v[i] = vfmsq_f32(z.v[i], x.v[i], y.v[i]);
    return r;
}
FP_INLINE V v_abs(V x) { V r; for (int i = 0; i < 4; i++) r.v[i] = vabsq_f32(x.v[i]); return r; }
FP_INLINE float v_hsum(V x) { return vaddvq_f32(vaddq_f32(vaddq_f32(x.v[0], x.v[1]), vaddq_f32(x.v[2], x.v[3]))); }
FP_INLINE float v_hmax(V x) { return vmaxvq_f32(vmaxq_f32(vmaxq_f32(x.v[0], x.v[1]), vmaxq_f32(x.v[2], x.v[3]))); }
FP_INLINE V v_round(V x) { V r; for (int i = 0; i < 4; i++) r.v[i] = vrndnq_f32(x.v[i]); return r; }
/* bit 4 i + j: lane j of c[i] is all ones */
FP_INLINE uint32_t lane_bits(const uint32x4_t c[4]) {
    uint32_t m = 0;
    for (int i = 0; i < 4; i++) {
        uint32_t l[4];
        vst1q_u32(l, c[i]);
        for (int j = 0; j < 4; j++) m |= (l[j] & 1u) << (4 * i + j);
    }
    return m;
}
FP_INLINE uint32_t v_nan_mask(V x) {
    uint32x4_t c[4];
    for (int i = 0; i < 4; i++) c[i] = vmvnq_u32(vceqq_f32(x.v[i], x.v[i]));
    return lane_bits(c);
}
FP_INLINE uint32_t v_eq_mask(V x, V y) {
    uint32x4_t c[4];
    for (int i = 0; i < 4; i++) c[i] = vceqq_f32(x.v[i], y.v[i]);
    return lane_bits(c);
}
FP_INLINE uint32_t v_ge_mask(V x, V y) {
    uint32x4_t c[4];
    for (int i = 0; i < 4; i++) c[i] = vcgeq_f32(x.v[i], y.v[i]);
    return lane_bits(c);
}
FP_INLINE V v_select_bits(uint32_t m, V x, V y) {
    static const uint32_t bit[4] = {1, 2, 4, 8};
    V r;
    for (int i = 0; i < 4; i++) {
        const uint32x4_t on = vtstq_u32(vdupq_n_u32((m >> (4 * i)) & 15u), vld1q_u32(bit));
        r.v[i] = vbslq_f32(on, x.v[i], y.v[i]);
    }
    return r;
}
FP_INLINE V v_load_bf16(const uint16_t* p) {
    V r;
    for (int i = 0; i < 4; i++) r.v[i] = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p + 4 * i), 16));
    return r;
}
FP_INLINE V v_load_f16(const uint16_t* p) {
    V r;
    for (int i = 0; i < 4; i++) r.v[i] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p + 4 * i)));
    return r;
}
FP_INLINE V v_load_u8(const uint8_t* p) {
    const uint8x16_t b = vld1q_u8(p);
    const uint16x8_t lo = vmovl_u8(vget_low_u8(b)), hi = vmovl_u8(vget_high_u8(b));
    return (V){{vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))), vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo))),
                vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))), vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)))}};
}
FP_INLINE void v_store_bf16(uint16_t* p, V w) {
    for (int i = 0; i < 4; i++) {
        const uint32x4_t u = vreinterpretq_u32_f32(w.v[i]);
        const uint32x4_t odd = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
        const uint32x4_t r = vaddq_u32(u, vaddq_u32(odd, vdupq_n_u32(0x7fff)));
        vst1_u16(p + 4 * i, vshrn_n_u32(r, 16));
    }
}
FP_INLINE V v_ldexp(V p, V n) {
    V r;
    for (int i = 0; i < 4; i++) {
        const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n.v[i]), vdupq_n_s32(127)), 23);
        r.v[i] = vmulq_f32(p.v[i], vreinterpretq_f32_s32(e));
    }
    return r;
}

FP_INLINE VI vi_zero(void) { const int32x4_t z = vdupq_n_s32(0); return (VI){{z, z, z, z}}; }
FP_INLINE VI vi_set1(int32_t x) { const int32x4_t z = vdupq_n_s32(x); return (VI){{z, z, z, z}}; }
FP_INLINE VI vi_add(VI x, VI y) { return VI4(vaddq_s32, x, y); }
FP_INLINE VI vi_sub(VI x, VI y) { return VI4(vsubq_s32, x, y); }
FP_INLINE VI vi_mullo(VI x, VI y) { return VI4(vmulq_s32, x, y); }
FP_INLINE V vi_to_v(VI x) { V r; for (int i = 0; i < 4; i++) r.v[i] = vcvtq_f32_s32(x.v[i]); return r; }
FP_INLINE VI v_to_vi(V x) { VI r; for (int i = 0; i < 4; i++) r.v[i] = vcvtnq_s32_f32(x.v[i]); return r; }
FP_INLINE int32_t vi_hsum(VI x) { return vaddvq_s32(vaddq_s32(vaddq_s32(x.v[0], x.v[1]), vaddq_s32(x.v[2], x.v[3]))); }
FP_INLINE VI vi_load_i8(const int8_t* p) {
    const int8x16_t b = vld1q_s8(p);
    const int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_s8(vget_high_s8(b));
    return (VI){{vmovl_s16(vget_low_s16(lo)), vmovl_s16(vget_high_s16(lo)), vmovl_s16(vget_low_s16(hi)),
                 vmovl_s16(vget_high_s16(hi))}};
}
FP_INLINE void vi_store_i8(int8_t* p, VI x) {
    const int16x8_t lo = vcombine_s16(vqmovn_s32(x.v[0]), vqmovn_s32(x.v[1]));
    const int16x8_t hi = vcombine_s16(vqmovn_s32(x.v[2]), vqmovn_s32(x.v[3]));
    vst1q_s8(p, vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
}
FP_INLINE V v_sum16x16(const V* a) {
    float32x4_t t[16];
    for (int j = 0; j < 16; j++) t[j] = vaddq_f32(vaddq_f32(a[j].v[0], a[j].v[1]), vaddq_f32(a[j].v[2], a[j].v[3]));
    V r;
    for (int i = 0; i < 4; i++)
        r.v[i] = vpaddq_f32(vpaddq_f32(t[4 * i], t[4 * i + 1]), vpaddq_f32(t[4 * i + 2], t[4 * i + 3]));
    return r;
}

#endif

/* ---- built on the above: the same in every build ---- */

/* the first n < 16 lanes from p, the others `fill` */
FP_INLINE V v_load_n(const float* p, int n, float fill) {
    float t[16];
    for (int i = 0; i < 16; i++) t[i] = i < n ? p[i] : fill;
    return v_load(t);
}
FP_INLINE void v_store_n(float* p, V v, int n) {
    float t[16];
    v_store(t, v);
    for (int i = 0; i < n; i++) p[i] = t[i];
}

/* e^x (Cephes' expf polynomial; relative error ~2e-7; x clamped to [-87, 88], so no inf), a pure function of x */
FP_INLINE V v_exp(V x) {
    x = v_min(v_max(x, v_set1(-87.0f)), v_set1(88.0f));
    const V n = v_round(v_mul(x, v_set1(1.44269504088896341f)));
    V r = v_fnma(n, v_set1(0.693359375f), x);
    r = v_fnma(n, v_set1(-2.12194440e-4f), r);
    V p = v_set1(1.9875691500e-4f);
    p = v_fma(p, r, v_set1(1.3981999507e-3f));
    p = v_fma(p, r, v_set1(8.3334519073e-3f));
    p = v_fma(p, r, v_set1(4.1665795894e-2f));
    p = v_fma(p, r, v_set1(1.6666665459e-1f));
    p = v_fma(p, r, v_set1(5.0000001201e-1f));
    p = v_fma(p, v_mul(r, r), v_add(r, v_set1(1.0f)));
    return v_ldexp(p, n);
}

#endif /* FP_SIMD_H */
