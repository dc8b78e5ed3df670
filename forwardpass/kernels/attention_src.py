"""C source of the paged attention used by the native step and by the PyTorch layers' CPU path (built with the
kernels of `native_src.py` by `native.py`).
"""
# Attention of single query rows over the paged KV cache (bf16), one row at a time in a fixed order: a row's
# result depends only on its own query and context, never on the other rows or the batch's padding, which is
# what deterministic batching needs (torch's batched matmuls pick kernels by shape, so their rounding varies).
ATTENTION_SOURCE = r"""
#include <math.h>
#include <stdlib.h>

static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
/* 16 bf16 values -> 16 floats */
static inline __m512 bf16x16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

/* dot(q, k) over dim features, in a fixed order (16 lanes, then a fixed tree) */
static inline float dot_bf16(const float* q, const uint16_t* k, int64_t dim) {
    if (dim % 16 == 0) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < dim; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), bf16x16(k + d), acc);
        return _mm512_reduce_add_ps(acc);
    }
    float acc = 0.f;
    for (int64_t d = 0; d < dim; d++) acc += q[d] * bf16_to_f32(k[d]);
    return acc;
}

/* o += p * v over dim features */
static inline void axpy_bf16(float* o, float p, const uint16_t* v, int64_t dim) {
    if (dim % 16 == 0) {
        const __m512 pv = _mm512_set1_ps(p);
        for (int64_t d = 0; d < dim; d += 16)
            _mm512_storeu_ps(o + d, _mm512_fmadd_ps(pv, bf16x16(v + d), _mm512_loadu_ps(o + d)));
        return;
    }
    for (int64_t d = 0; d < dim; d++) o[d] += p * bf16_to_f32(v[d]);
}

/* e^x (Cephes' expf polynomial; relative error ~2e-7; inf above 88.7, 0 below -87), a pure function of x */
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(89.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* lane j of the result = the sum of the 16 lanes of a[j] (a fixed tree: transposes, no scalar reductions) */
static inline __m512 sum16x16(const __m512* a) {
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

/* One query row of G heads sharing a KV head, over keys start .. len - 1 of its context (`slots`): scores 16
   keys at a time, softmax with a vector exp, then the weighted sum of values. Each key and value is converted
   from bf16 once for the G heads; every head's sums run in exactly the order they would alone, so the result of
   a head never depends on G. qv, out: (G, 16 ND); s: scratch of G * (len + 16) floats. */
static inline __attribute__((always_inline)) void attend_vec(const float* qv, const uint16_t* k, const uint16_t* v,
                                                             const int64_t* slots, int64_t start, int64_t len,
                                                             int64_t kv_heads, int64_t kvh, const int G, const int ND,
                                                             float scale, float* s, float* out) {
    const int64_t dim = 16 * ND, n = len - start, stride = n + 16;
    __m512 q[4][16];
    for (int g = 0; g < G; g++)
        for (int i = 0; i < ND; i++) q[g][i] = _mm512_mul_ps(_mm512_loadu_ps(qv + g * dim + 16 * i), _mm512_set1_ps(scale));
    __m512 mxv[4];
    for (int g = 0; g < G; g++) mxv[g] = _mm512_set1_ps(-INFINITY);
    for (int64_t jb = 0; jb < n; jb += 16) {
        const int cnt = n - jb < 16 ? (int)(n - jb) : 16;
        for (int64_t j = jb + 16; j < jb + 32 && j < n; j++) {  /* the next block's keys: scattered rows */
            const char* kp = (const char*)(k + (slots[start + j] * kv_heads + kvh) * dim);
            for (int64_t b = 0; b < 2 * dim; b += 64) _mm_prefetch(kp + b, _MM_HINT_T0);
        }
        __m512 acc[4][16];
        for (int jj = 0; jj < 16; jj++) {
            __m512 a[4];
            for (int g = 0; g < G; g++) a[g] = _mm512_setzero_ps();
            if (jj < cnt) {
                const uint16_t* kp = k + (slots[start + jb + jj] * kv_heads + kvh) * dim;
                for (int i = 0; i < ND; i++) {
                    const __m512 kv = bf16x16(kp + 16 * i);
                    for (int g = 0; g < G; g++) a[g] = _mm512_fmadd_ps(q[g][i], kv, a[g]);
                }
            }
            for (int g = 0; g < G; g++) acc[g][jj] = a[g];
        }
        const __mmask16 m = (__mmask16)((1u << cnt) - 1u);
        for (int g = 0; g < G; g++) {
            const __m512 sc = sum16x16(acc[g]);
            _mm512_mask_storeu_ps(s + g * stride + jb, m, sc);
            mxv[g] = _mm512_mask_max_ps(mxv[g], m, mxv[g], sc);
        }
    }
    float inv[4];
    for (int g = 0; g < G; g++) {
        float* sg = s + g * stride;
        const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(mxv[g]));
        __m512 sumv = _mm512_setzero_ps();
        for (int64_t jb = 0; jb < n; jb += 16) {
            const int cnt = n - jb < 16 ? (int)(n - jb) : 16;
            const __mmask16 m = (__mmask16)((1u << cnt) - 1u);
            const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sg + jb), mx));
            _mm512_mask_storeu_ps(sg + jb, m, e);
            sumv = _mm512_mask_add_ps(sumv, m, sumv, e);
        }
        inv[g] = 1.0f / _mm512_reduce_add_ps(sumv);
    }
    for (int i0 = 0; i0 < ND; i0 += 4) {  /* 64 features at a time: G x 4 independent sums in registers */
        __m512 o[4][4];
        for (int g = 0; g < G; g++)
            for (int i = 0; i < 4; i++) o[g][i] = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; j++) {
            if (i0 == 0 && j + 8 < n) {
                const char* vn = (const char*)(v + (slots[start + j + 8] * kv_heads + kvh) * dim);
                for (int64_t b = 0; b < 2 * dim; b += 64) _mm_prefetch(vn + b, _MM_HINT_T0);
            }
            const uint16_t* vp = v + (slots[start + j] * kv_heads + kvh) * dim + 16 * i0;
            for (int i = 0; i < 4; i++) {
                const __m512 vv = bf16x16(vp + 16 * i);
                for (int g = 0; g < G; g++) o[g][i] = _mm512_fmadd_ps(_mm512_set1_ps(s[g * stride + j]), vv, o[g][i]);
            }
        }
        for (int g = 0; g < G; g++)
            for (int i = 0; i < 4; i++)
                _mm512_storeu_ps(out + g * dim + 16 * (i0 + i), _mm512_mul_ps(o[g][i], _mm512_set1_ps(inv[g])));
    }
}

/* Any head size: the scalar-reduction version. */
static void attend_generic(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t start,
                           int64_t len, int64_t kv_heads, int64_t kvh, int64_t dim, float scale, float* s, float* o) {
    float mx = -INFINITY;
    for (int64_t j = start; j < len; j++) {
        const float x = dot_bf16(qv, k + (slots[j] * kv_heads + kvh) * dim, dim) * scale;
        s[j - start] = x;
        if (x > mx) mx = x;
    }
    float sum = 0.f;
    for (int64_t j = 0; j < len - start; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
    for (int64_t d = 0; d < dim; d++) o[d] = 0.f;
    for (int64_t j = start; j < len; j++) axpy_bf16(o, s[j - start], v + (slots[j] * kv_heads + kvh) * dim, dim);
    const float inv = 1.f / sum;
    for (int64_t d = 0; d < dim; d++) o[d] *= inv;
}

#define ATTEND_G(G)                                                                                          \
    switch (dim) {                                                                                          \
        case 64: attend_vec(qv, k, v, slots, start, len, kv_heads, kvh, G, 4, scale, s, o); break;          \
        case 128: attend_vec(qv, k, v, slots, start, len, kv_heads, kvh, G, 8, scale, s, o); break;         \
        default: attend_vec(qv, k, v, slots, start, len, kv_heads, kvh, G, 16, scale, s, o); break;         \
    }

/* One query row of `heads` consecutive heads sharing KV head kvh (qv, o: (heads, dim)): each attends the first
   `len` slots of its context, the last `window` of them if window > 0. s: scratch of 4 * (len + 16) floats. */
static void attend_heads(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t len,
                         int64_t kv_heads, int64_t kvh, int64_t heads, int64_t dim, float scale, int64_t window,
                         float* s, float* o) {
    const int64_t start = (window > 0 && len > window) ? len - window : 0;
    if (dim != 64 && dim != 128 && dim != 256) {
        for (int64_t h = 0; h < heads; h++)
            attend_generic(qv + h * dim, k, v, slots, start, len, kv_heads, kvh, dim, scale, s, o + h * dim);
        return;
    }
    while (heads > 0) {  /* at most 4 heads per pass (registers); grouping never changes a head's result */
        const int64_t g = heads >= 4 ? 4 : heads;
        switch (g) {
            case 4: ATTEND_G(4) break;
            case 3: ATTEND_G(3) break;
            case 2: ATTEND_G(2) break;
            default: ATTEND_G(1) break;
        }
        qv += g * dim; o += g * dim; heads -= g;
    }
}

/* Each of R query rows attends over its own context: the first lens[r] slots of row seq[r] of ctx (S, ctx_stride),
   the last `window` of them if window > 0. q: (R, H, D) float32; k, v: (slots, Hkv, D) bf16; out: (R, H, D). */
void paged_attention(const float* q, const uint16_t* k, const uint16_t* v, const int64_t* ctx, int64_t ctx_stride,
                     const int64_t* seq, const int64_t* lens, int64_t rows, int64_t heads, int64_t kv_heads,
                     int64_t dim, float scale, int64_t window, float* out, int64_t n_threads) {
    const int64_t group = heads / kv_heads;
    int64_t lmax = 1;
    for (int64_t r = 0; r < rows; r++) if (lens[r] > lmax) lmax = lens[r];
    #pragma omp parallel num_threads(n_threads)
    {
        float* s = (float*)malloc(sizeof(float) * 4 * (size_t)(lmax + 16));
        #pragma omp for schedule(dynamic, 4)
        for (int64_t rk = 0; rk < rows * kv_heads; rk++) {  /* a row's heads of one KV head together */
            const int64_t r = rk / kv_heads, kvh = rk % kv_heads, at = (r * heads + kvh * group) * dim;
            attend_heads(q + at, k, v, ctx + seq[r] * ctx_stride, lens[r], kv_heads, kvh, group, dim, scale,
                         window, s, out + at);
        }
        free(s);
    }
}
"""
