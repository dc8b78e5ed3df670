/* Paged attention over the bf16 KV cache, used by the native step and by the PyTorch layers' CPU path.

   Single query rows, one at a time in a fixed order: a row's result depends only on its own query and context,
   never on the other rows or the batch's padding, which is what deterministic batching needs (torch's batched
   matmuls pick kernels by shape, so their rounding varies). */
#include <stdlib.h>

#include "internal.h"

/* dot(q, k) over dim features, in a fixed order */
static inline float dot_bf16(const float* q, const uint16_t* k, int64_t dim) {
    if (dim % 16 == 0) {
        V acc = v_zero();
        for (int64_t d = 0; d < dim; d += 16) acc = v_fma(v_load(q + d), v_load_bf16(k + d), acc);
        return v_hsum(acc);
    }
    float acc = 0.f;
    for (int64_t d = 0; d < dim; d++) acc += q[d] * bf16_to_f32(k[d]);
    return acc;
}

/* o += p * v over dim features */
static inline void axpy_bf16(float* o, float p, const uint16_t* v, int64_t dim) {
    if (dim % 16 == 0) {
        const V pv = v_set1(p);
        for (int64_t d = 0; d < dim; d += 16) v_store(o + d, v_fma(pv, v_load_bf16(v + d), v_load(o + d)));
        return;
    }
    for (int64_t d = 0; d < dim; d++) o[d] += p * bf16_to_f32(v[d]);
}

/* prefetch the keys and values of keys jb + 16 .. jb + 31 (at jb == 0, of keys 0 .. 31 too): scattered rows; the
   values are read after the softmax, by when they have arrived */
FP_INLINE void prefetch_keys(const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t jb, int64_t n,
                             int64_t kv_heads, int64_t kvh, int64_t dim) {
    for (int64_t j = jb ? jb + 16 : 0; j < jb + 32 && j < n; j++) {
        const int64_t at = (slots[j] * kv_heads + kvh) * dim;
        for (int64_t b = 0; b < 2 * dim; b += 64) {
            PREFETCH((const char*)(k + at) + b);
            PREFETCH((const char*)(v + at) + b);
        }
    }
}

#if defined(FP_AVX2)
/* Plain 8-lane registers, 16 of them: the 16-lane form's queries (G x 2 ND registers) and sums spill. Here a bf16
   row is read as 32-bit pairs: the even features are the pairs shifted up 16 bits, the odd ones the pairs with the
   low half masked (one shift and one AND per 16 features, where widening takes two shuffles and two shifts), so the
   queries are held split the same way and the weighted sums come out split, interleaved once at the end. */
FP_INLINE void bf16_pairs(const uint16_t* p, __m256* even, __m256* odd) {
    const __m256i x = _mm256_loadu_si256((const __m256i*)p);
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u)));
}

/* s[g stride + j] = scaled q_g . k_j for the n keys, 8 at a time (an 8 x 8 transpose sums them); the maxima in
   mx[g]. (v: only prefetched here.) */
FP_INLINE void attend_scores(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t n,
                             int64_t kv_heads, int64_t kvh, const int G, const int ND, float scale, float* s,
                             int64_t stride, float* mx) {
    const int64_t dim = 16 * ND;
    /* queries split: qs[g][2 c] = even features of chunk c (16 features), qs[g][2 c + 1] the odd ones */
    __m256 qs[4][32];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < ND; c++) {
            float e[8], o[8];
            for (int m = 0; m < 8; m++) {
                e[m] = qv[g * dim + 16 * c + 2 * m] * scale;
                o[m] = qv[g * dim + 16 * c + 2 * m + 1] * scale;
            }
            qs[g][2 * c] = _mm256_loadu_ps(e);
            qs[g][2 * c + 1] = _mm256_loadu_ps(o);
        }
    __m256 mxv[4];
    for (int g = 0; g < G; g++) mxv[g] = _mm256_set1_ps(-INFINITY);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t jb = 0; jb < n; jb += 8) {
        if (jb % 16 == 0) prefetch_keys(k, v, slots, jb, n, kv_heads, kvh, dim);
        const int cnt = n - jb < 8 ? (int)(n - jb) : 8;
        __m256 acc[4][8];
        for (int jj = 0; jj < 8; jj++) {
            __m256 a[4];
            for (int g = 0; g < G; g++) a[g] = _mm256_setzero_ps();
            if (jj < cnt) {
                const uint16_t* kp = k + (slots[jb + jj] * kv_heads + kvh) * dim;
                for (int c = 0; c < ND; c++) {
                    __m256 e, o;
                    bf16_pairs(kp + 16 * c, &e, &o);
                    for (int g = 0; g < G; g++)
                        a[g] = _mm256_fmadd_ps(qs[g][2 * c + 1], o, _mm256_fmadd_ps(qs[g][2 * c], e, a[g]));
                }
            }
            for (int g = 0; g < G; g++) acc[g][jj] = a[g];
        }
        /* the lanes past the context stay out of the maximum */
        const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), iota));
        for (int g = 0; g < G; g++) {
            const __m256 sc = sum8x8(acc[g]);
            _mm256_storeu_ps(s + g * stride + jb, sc);
            mxv[g] = _mm256_max_ps(mxv[g], _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), sc, live));
        }
    }
    for (int g = 0; g < G; g++) {
        float m[8];
        _mm256_storeu_ps(m, mxv[g]);
        mx[g] = m[0];
        for (int i = 1; i < 8; i++) mx[g] = m[i] > mx[g] ? m[i] : mx[g];
    }
}

/* out[g] = inv[g] * sum over the n keys of s[g stride + j] v_j. Features in passes of P chunks (16 each), the
   sums of a pass held in registers: G x 2 P of them, beside a value's two halves and G weights (3 heads x 2 chunks
   would spill a sum, whose chain through memory then bounds the loop). */
FP_INLINE void attend_values(const uint16_t* v, const int64_t* slots, int64_t n, int64_t kv_heads, int64_t kvh,
                             const int G, const int ND, const float* s, int64_t stride, const float* inv,
                             float* out) {
    const int64_t dim = 16 * ND;
    const int P = G == 1 ? 4 : G == 2 ? 2 : 1;
    for (int c0 = 0; c0 < ND; c0 += P) {
        __m256 o[4][8];
        for (int g = 0; g < G; g++)
            for (int i = 0; i < 2 * P; i++) o[g][i] = _mm256_setzero_ps();
        for (int64_t j = 0; j < n; j++) {
            const uint16_t* vp = v + (slots[j] * kv_heads + kvh) * dim + 16 * c0;
            __m256 p[4];
            for (int g = 0; g < G; g++) p[g] = _mm256_broadcast_ss(s + g * stride + j);
            for (int c = 0; c < P; c++) {
                __m256 e, od;
                bf16_pairs(vp + 16 * c, &e, &od);
                for (int g = 0; g < G; g++) {
                    o[g][2 * c] = _mm256_fmadd_ps(p[g], e, o[g][2 * c]);
                    o[g][2 * c + 1] = _mm256_fmadd_ps(p[g], od, o[g][2 * c + 1]);
                }
            }
        }
        for (int g = 0; g < G; g++) {
            const __m256 r = _mm256_set1_ps(inv[g]);
            for (int c = 0; c < P; c++) {  /* even and odd features interleaved back */
                const __m256 e = _mm256_mul_ps(o[g][2 * c], r), od = _mm256_mul_ps(o[g][2 * c + 1], r);
                const __m256 lo = _mm256_unpacklo_ps(e, od), hi = _mm256_unpackhi_ps(e, od);
                float* dst = out + g * dim + 16 * (c0 + c);
                _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
                _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
            }
        }
    }
}
#else
/* s[g stride + j] = scaled q_g . k_j for the n keys, 16 at a time (a 16 x 16 transpose sums them); the maxima in
   mx[g] */
FP_INLINE void attend_scores(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t n,
                             int64_t kv_heads, int64_t kvh, const int G, const int ND, float scale, float* s,
                             int64_t stride, float* mx) {
    const int64_t dim = 16 * ND;
    V q[4][16];
    for (int g = 0; g < G; g++)
        for (int i = 0; i < ND; i++) q[g][i] = v_mul(v_load(qv + g * dim + 16 * i), v_set1(scale));
    V mxv[4];
    for (int g = 0; g < G; g++) mxv[g] = v_set1(-INFINITY);
    for (int64_t jb = 0; jb < n; jb += 16) {
        const int cnt = n - jb < 16 ? (int)(n - jb) : 16;
        prefetch_keys(k, v, slots, jb, n, kv_heads, kvh, dim);
        V acc[4][16];
        for (int jj = 0; jj < 16; jj++) {
            V a[4];
            for (int g = 0; g < G; g++) a[g] = v_zero();
            if (jj < cnt) {
                const uint16_t* kp = k + (slots[jb + jj] * kv_heads + kvh) * dim;
                for (int i = 0; i < ND; i++) {
                    const V kv = v_load_bf16(kp + 16 * i);
                    for (int g = 0; g < G; g++) a[g] = v_fma(q[g][i], kv, a[g]);
                }
            }
            for (int g = 0; g < G; g++) acc[g][jj] = a[g];
        }
        for (int g = 0; g < G; g++) {
            const V sc = v_sum16x16(acc[g]);
            if (cnt == 16) {
                v_store(s + g * stride + jb, sc);
                mxv[g] = v_max(mxv[g], sc);
            } else {  /* the lanes past the context stay out of the maximum */
                v_store_n(s + g * stride + jb, sc, cnt);
                mxv[g] = v_max(mxv[g], v_load_n(s + g * stride + jb, cnt, -INFINITY));
            }
        }
    }
    for (int g = 0; g < G; g++) mx[g] = v_hmax(mxv[g]);
}

/* out[g] = inv[g] * sum over the n keys of s[g stride + j] v_j, 64 features at a time: G x 4 independent sums in
   registers */
FP_INLINE void attend_values(const uint16_t* v, const int64_t* slots, int64_t n, int64_t kv_heads, int64_t kvh,
                             const int G, const int ND, const float* s, int64_t stride, const float* inv,
                             float* out) {
    const int64_t dim = 16 * ND;
    for (int i0 = 0; i0 < ND; i0 += 4) {
        V o[4][4];
        for (int g = 0; g < G; g++)
            for (int i = 0; i < 4; i++) o[g][i] = v_zero();
        for (int64_t j = 0; j < n; j++) {
            const uint16_t* vp = v + (slots[j] * kv_heads + kvh) * dim + 16 * i0;
            for (int i = 0; i < 4; i++) {
                const V vv = v_load_bf16(vp + 16 * i);
                for (int g = 0; g < G; g++) o[g][i] = v_fma(v_set1(s[g * stride + j]), vv, o[g][i]);
            }
        }
        for (int g = 0; g < G; g++)
            for (int i = 0; i < 4; i++) v_store(out + g * dim + 16 * (i0 + i), v_mul(o[g][i], v_set1(inv[g])));
    }
}
#endif

/* One query row of G heads sharing a KV head, over the n keys of `slots`, in three passes: the scores
   (`attend_scores`), a softmax with a vector exp, the weighted sum of values (`attend_values`). Each key and value
   is converted from bf16 once for the G heads; every head's sums run in exactly the order they would alone, so the
   result of a head never depends on G. qv, out: (G, 16 ND); s: scratch of G * (n + 16) floats. ml NULL: out is
   the attention; else out is the sum weighted by exp(score - max), unnormalized, and ml[2 g], ml[2 g + 1] head
   g's maximum and sum of weights (a part, for `attend_merge`). */
FP_INLINE void attend_vec(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t n,
                          int64_t kv_heads, int64_t kvh, const int G, const int ND, float scale, float* s,
                          float* out, float* ml) {
    const int64_t stride = n + 16;
    float mx[4], inv[4];
    attend_scores(qv, k, v, slots, n, kv_heads, kvh, G, ND, scale, s, stride, mx);
    for (int g = 0; g < G; g++) {
        float* sg = s + g * stride;
        const V m = v_set1(mx[g]);
        V sumv = v_zero();
        for (int64_t jb = 0; jb < n; jb += 16) {
            const int cnt = n - jb < 16 ? (int)(n - jb) : 16;
            if (cnt == 16) {
                const V e = v_exp(v_sub(v_load(sg + jb), m));
                v_store(sg + jb, e);
                sumv = v_add(sumv, e);
            } else {  /* lanes past the context add exactly 0 */
                const V e = v_exp(v_sub(v_load_n(sg + jb, cnt, 0.0f), m));
                v_store_n(sg + jb, e, cnt);
                sumv = v_add(sumv, v_load_n(sg + jb, cnt, 0.0f));
            }
        }
        const float sum = v_hsum(sumv);
        inv[g] = ml ? 1.0f : 1.0f / sum;
        if (ml) { ml[2 * g] = mx[g]; ml[2 * g + 1] = sum; }
    }
    attend_values(v, slots, n, kv_heads, kvh, G, ND, s, stride, inv, out);
}

/* Any head size: the scalar-reduction version (out and ml as attend_vec's, one head). */
static void attend_generic(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t n,
                           int64_t kv_heads, int64_t kvh, int64_t dim, float scale, float* s, float* o, float* ml) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        const float x = dot_bf16(qv, k + (slots[j] * kv_heads + kvh) * dim, dim) * scale;
        s[j] = x;
        if (x > mx) mx = x;
    }
    float sum = 0.f;
    for (int64_t j = 0; j < n; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
    for (int64_t d = 0; d < dim; d++) o[d] = 0.f;
    for (int64_t j = 0; j < n; j++) axpy_bf16(o, s[j], v + (slots[j] * kv_heads + kvh) * dim, dim);
    if (ml) { ml[0] = mx; ml[1] = sum; return; }
    const float inv = 1.f / sum;
    for (int64_t d = 0; d < dim; d++) o[d] *= inv;
}

#define ATTEND_G(G)                                                                                          \
    switch (dim) {                                                                                          \
        case 64: attend_vec(qv, k, v, slots, n, kv_heads, kvh, G, 4, scale, s, o, ml); break;               \
        case 128: attend_vec(qv, k, v, slots, n, kv_heads, kvh, G, 8, scale, s, o, ml); break;              \
        default: attend_vec(qv, k, v, slots, n, kv_heads, kvh, G, 16, scale, s, o, ml); break;              \
    }

/* `heads` consecutive heads sharing KV head kvh over the n keys of `slots` (out and ml as attend_vec's, for every
   head: ml (heads, 2)) */
static void attend_keys(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t n,
                        int64_t kv_heads, int64_t kvh, int64_t heads, int64_t dim, float scale, float* s, float* o,
                        float* ml) {
    if (dim != 64 && dim != 128 && dim != 256) {
        for (int64_t h = 0; h < heads; h++)
            attend_generic(qv + h * dim, k, v, slots, n, kv_heads, kvh, dim, scale, s, o + h * dim,
                           ml ? ml + 2 * h : NULL);
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
        if (ml) ml += 2 * g;
    }
}

/* Long contexts in parts. A row attending to more than ATTEND_PART keys takes them in parts of ATTEND_PART from
   the first (the window's first, with a sliding window), each part softmaxed on its own maximum, and merges the
   parts in order. The split depends only on the row's own context, whoever computes it: the native step may run a
   row's parts on different threads (one stream's few KV heads leave a thread idle otherwise), and the result is
   the same as attend_heads' here, in any batch. A part's record (heads * (dim + 2) floats): the heads'
   unnormalized sums (heads, dim), then each head's maximum and sum of weights (heads, 2). */

/* the first key a row of `len` keys attends to */
static inline int64_t window_start(int64_t len, int64_t window) {
    return window > 0 && len > window ? len - window : 0;
}

int64_t attend_parts(int64_t len, int64_t window) {
    const int64_t n = len - window_start(len, window);
    return n > ATTEND_PART ? (n + ATTEND_PART - 1) / ATTEND_PART : 1;
}

int64_t attend_scratch(int64_t lmax, int64_t heads, int64_t dim) {
    const int64_t parts = attend_parts(lmax, 0);
    return 4 * (lmax + 16) + (parts > 1 ? parts * heads * (dim + 2) : 0);
}

/* part p of the row (see attend_parts) into rec; s: scratch of 4 * (ATTEND_PART + 16) floats */
void attend_part(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t len,
                 int64_t kv_heads, int64_t kvh, int64_t heads, int64_t dim, float scale, int64_t window, int64_t p,
                 float* s, float* rec) {
    const int64_t start = window_start(len, window) + p * ATTEND_PART;
    const int64_t n = len - start < ATTEND_PART ? len - start : ATTEND_PART;
    attend_keys(qv, k, v, slots + start, n, kv_heads, kvh, heads, dim, scale, s, rec, rec + heads * dim);
}

/* out (heads, dim) = the attention from the row's `parts` records: each part's sums and weights rescaled from its
   maximum to the largest, added in part order */
void attend_merge(const float* recs, int64_t parts, int64_t heads, int64_t dim, float* out) {
    const int64_t R = heads * (dim + 2);
    for (int64_t h = 0; h < heads; h++) {
        const float* ml = recs + heads * dim + 2 * h;  /* part p's: ml[p R], ml[p R + 1] */
        float mx = -INFINITY;
        for (int64_t p = 0; p < parts; p++) mx = ml[p * R] > mx ? ml[p * R] : mx;
        float* o = out + h * dim;
        float sum = 0.f;
        for (int64_t d = 0; d < dim; d++) o[d] = 0.f;
        for (int64_t p = 0; p < parts; p++) {
            const float w = expf(ml[p * R] - mx), *r = recs + p * R + h * dim;
            sum += w * ml[p * R + 1];
            for (int64_t d = 0; d < dim; d++) o[d] += w * r[d];
        }
        const float inv = 1.f / sum;
        for (int64_t d = 0; d < dim; d++) o[d] *= inv;
    }
}

/* One query row of `heads` consecutive heads sharing KV head kvh (qv, o: (heads, dim)): each attends the first
   `len` slots of its context, the last `window` of them if window > 0, in parts past ATTEND_PART keys. s: scratch
   of attend_scratch(len, heads, dim) floats. */
void attend_heads(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t len,
                  int64_t kv_heads, int64_t kvh, int64_t heads, int64_t dim, float scale, int64_t window, float* s,
                  float* o) {
    const int64_t parts = attend_parts(len, window);
    if (parts == 1) {
        const int64_t start = window_start(len, window);
        attend_keys(qv, k, v, slots + start, len - start, kv_heads, kvh, heads, dim, scale, s, o, NULL);
        return;
    }
    float* recs = s + 4 * (ATTEND_PART + 16);
    for (int64_t p = 0; p < parts; p++)
        attend_part(qv, k, v, slots, len, kv_heads, kvh, heads, dim, scale, window, p, s,
                    recs + p * heads * (dim + 2));
    attend_merge(recs, parts, heads, dim, o);
}

/* Each of R query rows attends over its own context: the first lens[r] slots of row seq[r] of ctx (S, ctx_stride),
   the last `window` of them if window > 0. q: (R, H, D) float32; k, v: (slots, Hkv, D) bf16; out: (R, H, D). */
void paged_attention(const float* q, const uint16_t* k, const uint16_t* v, const int64_t* ctx, int64_t ctx_stride,
                     const int64_t* seq, const int64_t* lens, int64_t rows, int64_t heads, int64_t kv_heads,
                     int64_t dim, float scale, int64_t window, float* out, int64_t n_threads) {
    const int64_t group = heads / kv_heads;
    int64_t lmax = 1;
    for (int64_t r = 0; r < rows; r++) if (lens[r] > lmax) lmax = lens[r];
#pragma omp parallel num_threads((int)n_threads)
    {
        float* s = (float*)malloc(sizeof(float) * (size_t)attend_scratch(lmax, group, dim));
#pragma omp for schedule(dynamic, 4)
        for (int64_t rk = 0; rk < rows * kv_heads; rk++) {  /* a row's heads of one KV head together */
            const int64_t r = rk / kv_heads, kvh = rk % kv_heads, at = (r * heads + kvh * group) * dim;
            attend_heads(q + at, k, v, ctx + seq[r] * ctx_stride, lens[r], kv_heads, kvh, group, dim, scale,
                         window, s, out + at);
        }
        free(s);
    }
}

/* out[r] = the first index of row r's largest value, a NaN counting as larger than anything (torch.argmax's
   rule): one vector pass for the maximum, one for its first position. */
void argmax_rows(const float* x, int64_t rows, int64_t n, int64_t* out, int64_t nthreads) {
#pragma omp parallel for num_threads((int)nthreads) schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float* v = x + r * n;
        V m = v_set1(-INFINITY);
        uint32_t nan = 0;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            const V a = v_load(v + i);
            nan |= v_nan_mask(a);
            m = v_max(m, a);
        }
        float best = v_hmax(m);
        for (; i < n; i++) {
            if (v[i] != v[i]) nan = 1;
            else if (v[i] > best) best = v[i];
        }
        int64_t at = 0;
        if (nan) {
            while (v[at] == v[at]) at++;
        } else {
            const V b = v_set1(best);
            for (i = 0; i + 16 <= n; i += 16)
                if (v_eq_mask(v_load(v + i), b)) break;
            at = i;
            while (v[at] != best) at++;
        }
        out[r] = at;
    }
}

/* The grammar masks of constrained rows: row idx[k] of x (rows of n floats) keeps the logits whose bit is set in
   its mask (bits + k * words, bit j of word w = token 32 w + j) and gets -inf elsewhere; empty[k] = 1 where none
   of the kept logits is above -inf (NaN counts as above), so the caller can fall back. */
void mask_rows(float* x, int64_t n, const int64_t* idx, int64_t nrows, const uint32_t* bits, int64_t words,
               uint8_t* empty, int64_t nthreads) {
#pragma omp parallel for num_threads((int)nthreads) schedule(static) if (nrows > 1)
    for (int64_t k = 0; k < nrows; k++) {
        float* v = x + idx[k] * n;
        const uint32_t* b = bits + k * words;
        const V ninf = v_set1(-INFINITY);
        V top = ninf;
        uint32_t nan = 0;
        int64_t i = 0;
        for (; i + 32 <= n; i += 32) {
            const uint32_t m = b[i / 32];
            for (int h = 0; h < 2; h++) {
                const uint32_t mh = (m >> (16 * h)) & 0xffffu;
                if (mh == 0) {
                    v_store(v + i + 16 * h, ninf);
                } else {
                    const V a = v_select_bits(mh, v_load(v + i + 16 * h), ninf);
                    nan |= v_nan_mask(a);
                    top = v_max(top, a);
                    if (mh != 0xffffu) v_store(v + i + 16 * h, a);
                }
            }
        }
        float best = v_hmax(top);
        for (; i < n; i++) {
            if ((b[i / 32] >> (i % 32)) & 1u) {
                if (v[i] != v[i]) nan = 1;
                else if (v[i] > best) best = v[i];
            } else {
                v[i] = -INFINITY;
            }
        }
        empty[k] = !nan && !(best > -INFINITY);
    }
}
