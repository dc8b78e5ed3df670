/* C source of the native decode step: every layer of a decoder-only transformer for B generated tokens, in one
   call and one OpenMP parallel region (threads meet at a barrier between phases instead of waking per op).

   Decoding is bound by reading the weights once per step; in eager PyTorch the ~60 small ops a layer takes
   (norms, RoPE, cache writes, dtype casts) cost more than the matmuls on a small model. Here a layer is:

     h = rmsnorm(x) * attn_norm                      quantized to int8 once, shared by q, k and v
     q, k, v = tiles(h) (+ bias)                     per head: rmsnorm (q_norm, k_norm), RoPE; k, v -> bf16 cache
     o = attention(q, paged cache)                   each (token, head) alone, in a fixed order (a long context
                                                     in fixed parts, which one or two streams share out)
     f = tiles(o);  x += post_attn_norm ? rmsnorm(f) * post_attn_norm : f
     h = rmsnorm(x) * ffn_norm;  g, u = tiles(h);  a = act(g) * u
     f = tiles(a);  x += post_ffn_norm ? rmsnorm(f) * post_ffn_norm : f

   which covers llama, qwen2 (biases), qwen3 (q/k norms) and gemma3 (sandwich norms, GELU, sliding windows). The
   architecture files describe their layers with `kernels/native_decoder.py`'s spec; the PyTorch code in each
   architecture file stays the definition (prompt tokens and CUDA run it) and the tests hold the two together.
   Each token is computed alone (its own norm, quantization, dot products and attention), so its result never
   depends on the other tokens of the step.

   Tensor parallelism (`dmodel_t.gather` set): a rank runs this same step on its share of each layer, its query
   heads (and their KV heads, its cache) and its FFN columns; norms, residuals and the head are computed whole on
   every rank. Before attn_output and ffn_down it gathers every rank's columns of their input, quantizes the full
   rows and computes its share of their output rows (whole 16-row tiles) over them, then gathers the ranks' output
   rows into f. No rank sums a partial product, and every value is computed from the same input by the same
   kernel as on one process: the result is bit-identical to it. The gathers run on thread 0 (the caller's thread,
   which calls back into Python) while the others wait at the phase's barrier. */
#include <omp.h>
#include <sched.h>
#include <stdlib.h>

#include "internal.h"

/* The barrier between the phases of a step. OpenMP's spins for a long while before sleeping, which is right on
   idle cores and a disaster when the OS puts two of our threads on one core (another busy process took the
   other): the one spinning holds the core its partner needs, a whole time slice per barrier (a 16-token step
   took 1 s instead of 12 ms with one busy process beside it). This one spins briefly, then yields the core. */
typedef struct { int64_t arrived, generation, n; } spin_barrier_t;

static void step_barrier(spin_barrier_t* b) {
    const int64_t gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == b->n) {
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    for (int spins = 0; __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen; spins++) {
        if (spins < 2000) cpu_relax();
        else sched_yield();
    }
}

/* out = x * rsqrt(mean(x^2) + eps) * w over n features (vector path when n % 16 == 0) */
static void rmsnorm_row(const float* x, const float* w, float* out, int64_t n, float eps) {
    if (n % 16 == 0) {
        V acc = v_zero();
        for (int64_t i = 0; i < n; i += 16) { const V v = v_load(x + i); acc = v_fma(v, v, acc); }
        const V r = v_set1(1.0f / sqrtf(v_hsum(acc) / (float)n + eps));
        for (int64_t i = 0; i < n; i += 16) v_store(out + i, v_mul(v_mul(v_load(x + i), r), v_load(w + i)));
        return;
    }
    float ss = 0.f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

/* out = act(g) * u over n features (n % 16 == 0): SiLU g / (1 + e^-g), or GELU-tanh
   0.5 g (1 + tanh(c (g + 0.044715 g^3))) with tanh(z) = 1 - 2 / (1 + e^2z) */
static void act_mul_row(const float* g, const float* u, float* out, int64_t n, int64_t act) {
    const V one = v_set1(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const V x = v_load(g + i);
        V a;
        if (act == 0) {
            a = v_div(x, v_add(one, v_exp(v_sub(v_zero(), x))));
        } else {
            const V z = v_mul(v_set1(0.7978845608028654f), v_fma(v_mul(v_set1(0.044715f), x), v_mul(x, x), x));
            const V t = v_sub(one, v_div(v_set1(2.0f), v_add(one, v_exp(v_add(z, z)))));
            a = v_mul(v_mul(v_set1(0.5f), x), v_add(one, t));
        }
        v_store(out + i, v_mul(a, v_load(u + i)));
    }
}

/* x += post ? rmsnorm(f) * post : f, one token (f is overwritten by its norm) */
static void residual_row(float* x, float* f, const float* post, int64_t n, float eps) {
    if (post) rmsnorm_row(f, post, f, n, eps);
    for (int64_t i = 0; i < n; i++) x[i] += f[i];
}

/* RoPE in place on one head: cos, sin laid out per feature (as `Rotary.factors`) */
static void rope_head(float* x, const float* c, const float* s, int64_t dims, int64_t neox) {
    if (neox) {
        const int64_t half = dims / 2;
        for (int64_t i = 0; i < half; i++) {
            const float a = x[i], b = x[i + half];
            x[i] = a * c[i] - b * s[i];
            x[i + half] = b * c[i + half] + a * s[i + half];
        }
    } else {
        for (int64_t i = 0; i < dims; i += 2) {
            const float a = x[i], b = x[i + 1];
            x[i] = a * c[i] - b * s[i];
            x[i + 1] = b * c[i + 1] + a * s[i + 1];
        }
    }
}

static inline void* take_bytes(char** w, size_t n) {
    void* p = *w;
    *w += (n + 63) / 64 * 64;
    return p;
}

static int64_t max3(int64_t a, int64_t b, int64_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* the widths the step works at: local (this rank's heads and FFN columns), full (the gathered input of
   attn_output and ffn_down) and this rank's output rows of those two; one process: full = local, d_local = D */
typedef struct { int64_t QO, F, QOF, FF, DL; } widths_t;

static widths_t step_widths(const dmodel_t* M) {
    const int64_t QO = M->n_heads * M->head_dim, F = M->n_ff;
    if (!M->gather) return (widths_t){QO, F, QO, F, M->d_model};
    return (widths_t){QO, F, M->q_out_full, M->n_ff_full, M->d_local};
}

/* floats of the records of long contexts' attention parts that a step's threads share (attention_block): only for
   batches too small to share out whole tokens, which are what leave threads idle */
static int64_t part_records(const dmodel_t* M, int64_t B, int64_t lmax, int64_t nthreads) {
    const int64_t parts = attend_parts(lmax, 0);
    if (parts == 1 || B >= 2 * nthreads) return 0;
    return B * parts * M->n_heads * (M->head_dim + 2);
}

/* bytes of scratch `decoder_step` needs for B tokens whose contexts hold at most lmax tokens */
int64_t decoder_workspace(const dmodel_t* M, int64_t B, int64_t lmax, int64_t nthreads) {
    const int64_t D = M->d_model;
    const widths_t W = step_widths(M);
    const int64_t NQKV = W.QO + 2 * M->n_kv * M->head_dim, KMAX = max3(W.FF, W.QOF, D);
    const int64_t tp = M->gather != NULL;  /* the gathered buffers and the local output rows */
    const int64_t sizes[15] = {4 * B * D, 4 * B * D, 4 * B * NQKV, 4 * B * W.QO, 4 * B * 2 * W.F, 4 * B * W.F,
                               B * KMAX, 4 * B * KMAX / 32, 4 * B * KMAX / 32, 4 * B * KMAX / 16,
                               4 * nthreads * attend_scratch(lmax, M->n_heads / M->n_kv, M->head_dim),
                               tp * 4 * B * W.QOF, tp * 4 * B * W.FF, tp * 4 * B * W.DL,
                               4 * part_records(M, B, lmax, nthreads)};
    int64_t total = 0;
    for (int i = 0; i < 15; i++) total += (sizes[i] + 63) / 64 * 64;
    return total;
}

/* One step's shared state: the batch, its cache addressing and the scratch buffers (every thread reads it). */
typedef struct {
    const dmodel_t* M;
    float *x, *h, *f, *qkv, *att, *gu, *a;  /* (B, d_model), (B, d_model), (B, d_model), (B, q|k|v), (B, q_out),
                                              (B, 2 n_ff), (B, n_ff) */
    float *att_full, *a_full, *y;           /* (B, q_out_full), (B, n_ff_full), (B, d_local): the gathered inputs
                                              of attn_output and ffn_down, their local output rows (one process:
                                              att, a and f) */
    widths_t W;
    qact_t qD, qQ, qF;                      /* one int8 buffer read as K = d_model, q_out_full or n_ff_full columns */
    const float* rope;
    const int64_t *slots, *ctx, *seq, *lens;
    int64_t B, ctx_stride, ctx_group_stride;
    spin_barrier_t* bar;  /* ends each phase (the work-sharing loops run with nowait) */
    float* recs;    /* (B, KV, parts, G, head_dim + 2): the parts of long contexts' attention; NULL: none */
    int64_t parts;  /* the most parts a row's attention has (attend_parts) */
    int distinct;   /* every token belongs to a different sequence */
    int f_ready;    /* f holds a block's output to add to x */
    int* failed;    /* a gather failed: the later ones are skipped (thread 0 only) */
} step_t;

/* full = every rank's `local` side by side (tensor parallelism): thread 0 calls the gather while the others wait
   at the barrier, which publishes `full` to them */
static void gather_phase(const step_t* S, int64_t what, const float* local, float* full) {
    if (omp_get_thread_num() == 0 && !*S->failed && S->M->gather(S->M->gather_ctx, what, local, S->B, full))
        *S->failed = 1;
    step_barrier(S->bar);
}

/* q head hh < H, or KV head hh - H (its k and v), of token r: bias, per-head norm, RoPE; k and v into the cache */
static void qkv_head(const step_t* S, const dlayer_t* L, int64_t r, int64_t hh) {
    const dmodel_t* M = S->M;
    const int64_t H = M->n_heads, KV = M->n_kv, HD = M->head_dim, QO = H * HD, NQKV = QO + 2 * KV * HD;
    float* row = S->qkv + r * NQKV;
    const float* cs = S->rope + ((L->rope * S->B + r) * 2) * M->rope_dims;
    const float* sn = cs + M->rope_dims;
    if (hh < H) {
        float* q = row + hh * HD;
        if (L->qkv_bias) for (int64_t i = 0; i < HD; i++) q[i] += L->qkv_bias[hh * HD + i];
        if (L->q_norm) rmsnorm_row(q, L->q_norm, q, HD, M->eps);
        rope_head(q, cs, sn, M->rope_dims, M->neox);
        return;
    }
    const int64_t j = hh - H;
    float* k = row + QO + j * HD;
    float* v = row + QO + KV * HD + j * HD;
    if (L->qkv_bias)
        for (int64_t i = 0; i < HD; i++) {
            k[i] += L->qkv_bias[QO + j * HD + i];
            v[i] += L->qkv_bias[QO + KV * HD + j * HD + i];
        }
    if (L->k_norm) rmsnorm_row(k, L->k_norm, k, HD, M->eps);
    rope_head(k, cs, sn, M->rope_dims, M->neox);
    const int64_t slot = S->slots[L->group * S->B + r];
    uint16_t* kd = L->kc + (slot * KV + j) * HD;
    uint16_t* vd = L->vc + (slot * KV + j) * HD;
    for (int64_t i = 0; i < HD; i++) { kd[i] = f32_to_bf16(k[i]); vd[i] = f32_to_bf16(v[i]); }
}

/* token r's G query heads of KV head kvh attend over its context */
static void attend_unit(const step_t* S, const dlayer_t* L, int64_t r, int64_t kvh, float* s) {
    const dmodel_t* M = S->M;
    const int64_t KV = M->n_kv, HD = M->head_dim, G = M->n_heads / KV, QO = M->n_heads * HD;
    const int64_t NQKV = QO + 2 * KV * HD;
    const int64_t* ctx = S->ctx + L->group * S->ctx_group_stride + S->seq[r] * S->ctx_stride;
    attend_heads(S->qkv + r * NQKV + kvh * G * HD, L->kc, L->vc, ctx, S->lens[r], KV, kvh, G, HD, M->scale,
                 L->window, s, S->att + r * QO + kvh * G * HD);
}

/* token r's query heads of KV head kvh and the KV head itself, then their attention */
static void heads_and_attention(const step_t* S, const dlayer_t* L, int64_t r, int64_t kvh, float* s) {
    const int64_t H = S->M->n_heads, G = H / S->M->n_kv;
    for (int64_t g = 0; g < G; g++) qkv_head(S, L, r, kvh * G + g);
    qkv_head(S, L, r, H + kvh);
    attend_unit(S, L, r, kvh, s);
}

/* x += post ? rmsnorm(f) * post : f; then, if next_norm, h = rmsnorm(x) * next_norm quantized (the next block's
   input): one pass over the rows, one barrier */
static void residual_and_norm(const step_t* S, const float* post, const float* next_norm) {
    const int64_t D = S->M->d_model;
    #pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < S->B; r++) {
        if (S->f_ready) residual_row(S->x + r * D, S->f + r * D, post, D, S->M->eps);
        if (next_norm) {
            rmsnorm_row(S->x + r * D, next_norm, S->h + r * D, D, S->M->eps);
            quantize_row(S->h + r * D, r, &S->qD);
        }
    }
    step_barrier(S->bar);
}

/* whether sharing out the parts of long contexts beats whole (token, KV head) units at layer L: some row attends
   in more than one part, and the units cannot be shared evenly (their count is not a multiple of the threads', or
   their rows take different numbers of parts) */
static int parts_balance_better(const step_t* S, const dlayer_t* L) {
    const int64_t first = attend_parts(S->lens[0], L->window);
    int64_t most = first, uneven = 0;
    for (int64_t r = 1; r < S->B; r++) {
        const int64_t p = attend_parts(S->lens[r], L->window);
        uneven |= p != first;
        most = p > most ? p : most;
    }
    return most > 1 && (uneven || S->B * S->M->n_kv % omp_get_num_threads() != 0);
}

/* the attention block of layer L up to its output projection in f (its input h already normalized and quantized);
   with tensor parallelism, this rank's heads, then every rank's gathered before and after attn_output */
static void attention_block(const step_t* S, const dlayer_t* L, float* s, team_t* team) {
    const dmodel_t* M = S->M;
    const int64_t B = S->B, H = M->n_heads, KV = M->n_kv, HD = M->head_dim;
    const int64_t QO = H * HD, NQKV = QO + 2 * KV * HD;
    const int tp = M->gather != NULL;
    tile_matmul_multi(L->qkv, (int)L->n_qkv, &S->qD, B, S->qkv, NQKV, team);
    step_barrier(S->bar);
    /* tokens enough to share out whole (decoding, one process): a token's heads, its attention and its row of
       attn_output's input quantized in one unit (the same arithmetic; its KV rows read in one pass, a barrier fewer) */
    const int whole_tokens = S->distinct && !tp && B >= 2 * omp_get_num_threads();
    if (whole_tokens) {
        #pragma omp for schedule(dynamic, 1) nowait
        for (int64_t r = 0; r < B; r++) {
            for (int64_t kvh = 0; kvh < KV; kvh++) heads_and_attention(S, L, r, kvh, s);
            quantize_row(S->att + r * QO, r, &S->qQ);
        }
        step_barrier(S->bar);
    } else if (S->distinct && S->recs && parts_balance_better(S, L)) {
        /* one stream or a few, some with long contexts: too few (token, KV head) units to keep every thread busy,
           so their parts (attend_parts) are shared out instead, then merged: the same result as attend_heads */
        #pragma omp for schedule(static) nowait
        for (int64_t u = 0; u < B * (H + KV); u++) qkv_head(S, L, u / (H + KV), u % (H + KV));
        step_barrier(S->bar);
        const int64_t P = S->parts, G = H / KV, R = G * (HD + 2);
        #pragma omp for schedule(dynamic, 1) nowait
        for (int64_t u = 0; u < B * KV * P; u++) {
            const int64_t r = u / (KV * P), kvh = u / P % KV, p = u % P, window = L->window;
            const int64_t parts = attend_parts(S->lens[r], window);
            if (p >= parts) continue;
            if (parts == 1) { attend_unit(S, L, r, kvh, s); continue; }
            const int64_t* ctx = S->ctx + L->group * S->ctx_group_stride + S->seq[r] * S->ctx_stride;
            attend_part(S->qkv + r * NQKV + kvh * G * HD, L->kc, L->vc, ctx, S->lens[r], KV, kvh, G, HD, M->scale,
                        window, p, s, S->recs + ((r * KV + kvh) * P + p) * R);
        }
        step_barrier(S->bar);
        #pragma omp for schedule(static) nowait
        for (int64_t u = 0; u < B * KV; u++) {
            const int64_t r = u / KV, kvh = u % KV, parts = attend_parts(S->lens[r], L->window);
            if (parts > 1) attend_merge(S->recs + u * P * R, parts, G, HD, S->att + r * QO + kvh * G * HD);
        }
        step_barrier(S->bar);
    } else if (S->distinct) {
        /* every token of a different sequence (decoding): a unit's own k and v are all its attention needs, so
           the heads' work and the attention share one pass (the same arithmetic, one barrier fewer) */
        #pragma omp for schedule(dynamic, 1) nowait
        for (int64_t u = 0; u < B * KV; u++) heads_and_attention(S, L, u / KV, u % KV, s);
        step_barrier(S->bar);
    } else {
        #pragma omp for schedule(static) nowait
        for (int64_t u = 0; u < B * (H + KV); u++) qkv_head(S, L, u / (H + KV), u % (H + KV));
        step_barrier(S->bar);
        #pragma omp for schedule(dynamic, 1) nowait
        for (int64_t u = 0; u < B * KV; u++) attend_unit(S, L, u / KV, u % KV, s);  /* a token's heads of a KV head */
        step_barrier(S->bar);
    }
    if (!whole_tokens) {
        if (tp) gather_phase(S, FP_GATHER_ATT, S->att, S->att_full);
        #pragma omp for schedule(static) nowait
        for (int64_t r = 0; r < B; r++) quantize_row(S->att_full + r * S->W.QOF, r, &S->qQ);
        step_barrier(S->bar);
    }
    tile_matmul_multi(&L->o, 1, &S->qQ, B, S->y, S->W.DL, team);
    step_barrier(S->bar);
    if (tp) gather_phase(S, FP_GATHER_O, S->y, S->f);
}

/* the feed-forward block of layer L up to its down projection in f (its input h already normalized, quantized) */
static void ffn_block(const step_t* S, const dlayer_t* L, team_t* team) {
    const dmodel_t* M = S->M;
    const int64_t B = S->B, F = M->n_ff, FF = S->W.FF;
    const int tp = M->gather != NULL;
    tile_matmul_multi(L->gu, (int)L->n_gu, &S->qD, B, S->gu, 2 * F, team);
    step_barrier(S->bar);
    #pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < B; r++) {
        const float* g = S->gu + r * 2 * F;
        act_mul_row(g, g + F, S->a + r * F, F, M->act);
        if (!tp) quantize_row(S->a + r * F, r, &S->qF);
    }
    step_barrier(S->bar);
    if (tp) {  /* every rank's FFN columns, then the full rows quantized */
        gather_phase(S, FP_GATHER_FF, S->a, S->a_full);
        #pragma omp for schedule(static) nowait
        for (int64_t r = 0; r < B; r++) quantize_row(S->a_full + r * FF, r, &S->qF);
        step_barrier(S->bar);
    }
    tile_matmul_multi(&L->down, 1, &S->qF, B, S->y, S->W.DL, team);
    step_barrier(S->bar);
    if (tp) gather_phase(S, FP_GATHER_DOWN, S->y, S->f);
}

/* x: (B, d_model) float32 hidden states of B tokens (prompt or generated, of one or many sequences), updated in
   place through every layer; then logits (n_out, vocab) = head(out_norm(x[out_rows])). rope: (n_rope, B, 2,
   rope_dims) cos/sin; slots: (G, B) cache slot of each token in each KV group's pool; ctx: (G, S, ctx_stride)
   cache slots of each sequence's context in each group (ctx_group_stride = S * ctx_stride; a layer uses its
   group's, and a sliding layer reads only its window of it); seq: (B,) each token's sequence; lens: (B,) the
   context length each token sees, itself included. A sequence's tokens are written to the cache before any
   attends, so a prompt chunk attends to itself causally through `lens`. ws: `decoder_workspace` bytes of scratch
   (no allocation per step). With tensor parallelism (`M->gather`), returns nonzero when a gather failed (the
   outputs are then garbage); 0 otherwise. */
int64_t decoder_step(const dmodel_t* M, float* x, int64_t B, const float* rope, const int64_t* slots,
                     const int64_t* ctx, int64_t ctx_stride, int64_t ctx_group_stride,
                     const int64_t* seq, const int64_t* lens,
                     const int64_t* out_rows, int64_t n_out, float* logits, void* ws, int64_t nthreads) {
    const widths_t W = step_widths(M);
    const int64_t D = M->d_model, F = W.F, QO = W.QO;
    const int64_t NQKV = QO + 2 * M->n_kv * M->head_dim, KMAX = max3(W.FF, W.QOF, D);
    int64_t lmax = 1;
    for (int64_t r = 0; r < B; r++) if (lens[r] > lmax) lmax = lens[r];
    char* w = (char*)ws;
    #define TAKE(T, count) ((T*)take_bytes(&w, sizeof(T) * (size_t)(count)))
    step_t S = {.M = M, .x = x, .h = TAKE(float, B * D), .f = TAKE(float, B * D), .qkv = TAKE(float, B * NQKV),
                .att = TAKE(float, B * QO), .gu = TAKE(float, B * 2 * F), .a = TAKE(float, B * F)};
    S.qD = (qact_t){TAKE(int8_t, B * KMAX), TAKE(float, B * KMAX / 32), TAKE(float, B * KMAX / 32),
                    TAKE(int32_t, B * KMAX / 16), D, B};
    S.qQ = S.qD; S.qQ.k = W.QOF;  /* the int8 rows of attn_output's and ffn_down's full input */
    S.qF = S.qD; S.qF.k = W.FF;
    const int64_t scratch = attend_scratch(lmax, M->n_heads / M->n_kv, M->head_dim);
    float* scores = TAKE(float, nthreads * scratch);
    S.W = W;
    if (M->gather) {
        S.att_full = TAKE(float, B * W.QOF); S.a_full = TAKE(float, B * W.FF); S.y = TAKE(float, B * W.DL);
    } else {
        S.att_full = S.att; S.a_full = S.a; S.y = S.f;
    }
    const int64_t records = part_records(M, B, lmax, nthreads);
    S.recs = records ? TAKE(float, records) : NULL;
    S.parts = attend_parts(lmax, 0);
    int failed = 0;
    S.failed = &failed;
    #undef TAKE
    S.rope = rope; S.slots = slots; S.ctx = ctx; S.seq = seq; S.lens = lens; S.B = B; S.ctx_stride = ctx_stride;
    S.ctx_group_stride = ctx_group_stride;
    S.distinct = 1;
    for (int64_t r = 1; r < B && S.distinct; r++) if (seq[r] == seq[r - 1]) S.distinct = 0;  /* rows come grouped */
    spin_barrier_t bar = {0, 0, 1};
    work_t work;
    memset(&work, 0, sizeof(work));
    S.bar = &bar;
    step_t S0 = S, S1 = S;  /* S0: nothing to add yet (before layer 0); S1: f holds a block's output */
    S0.f_ready = 0; S1.f_ready = 1;
    #pragma omp parallel num_threads((int)nthreads)
    {
        #pragma omp single
        bar.n = omp_get_num_threads();  /* the team we got (its implicit barrier publishes it) */
        float* s = scores + (int64_t)omp_get_thread_num() * scratch;
        team_t team = {&work, 0};
        residual_and_norm(&S0, NULL, M->layers[0].attn_norm);
        for (int64_t l = 0; l < M->n_layers; l++) {
            const dlayer_t* L = M->layers + l;
            attention_block(&S1, L, s, &team);
            residual_and_norm(&S1, L->post_attn_norm, L->ffn_norm);
            ffn_block(&S1, L, &team);
            residual_and_norm(&S1, L->post_ffn_norm, l + 1 < M->n_layers ? M->layers[l + 1].attn_norm : NULL);
        }
        if (n_out > 0) {
            #pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < n_out; i++) {
                rmsnorm_row(x + out_rows[i] * D, M->out_norm, S.h + i * D, D, M->eps);
                quantize_row(S.h + i * D, i, &S.qD);
            }
            step_barrier(S.bar);
            tile_matmul_multi(&M->head, 1, &S.qD, n_out, logits, M->head->n, &team);
        }
    }
    return failed;
}
