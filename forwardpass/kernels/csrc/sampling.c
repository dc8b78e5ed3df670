/* Drawing a token from softmax(x / temperature), for the sampler's rows without top-k, top-p or min-p.

   The same two-level inverse-CDF draw as `sampler.draw` (blocks of 256 tokens, then a token in the block, each
   level with its own uniform number u: the first entry whose running sum reaches (1 - u) times the level's total),
   in two vector passes over the row and one over the chosen block, without the probability row in memory: the
   exponentials of the chosen block are computed again, by the same function of the same logits. Each row is
   computed alone, in a fixed order, by one thread: its token depends only on its logits, its temperature and its
   two numbers, never on the other rows. (torch's division, softmax and block sums over a (8, 49152) batch took
   ~1 ms of a 5 ms decode step; this takes ~0.1 ms.) */
#include <omp.h>
#include <stdlib.h>

#include "internal.h"

#define DRAW_BLOCK 256
#define STACK_BLOCKS 4096

/* exp((x[i .. i + cnt) - mx) * it), exactly 0 where that is below -87 (v_exp clamps there; a logit of -inf, a
   token masked out, must never be drawn) and in the lanes past cnt */
FP_INLINE V exp_lanes(const float* x, int64_t cnt, V mx, V it) {
    const V z = v_mul(v_sub(cnt >= 16 ? v_load(x) : v_load_n(x, (int)cnt, -INFINITY), mx), it);
    const V keep = v_min(v_max(v_mul(v_add(z, v_set1(87.0f)), v_set1(1e30f)), v_zero()), v_set1(1.0f));
    return v_mul(v_exp(z), keep);
}

/* Top-p's threshold: the largest t with sum(e >= t) >= top_p * sum(e), e's n values in [0, 1]. Their float bit
   patterns order them as integers, so t is found ten bits at a time (`cut_levels`): a histogram of the mass per
   value of the top bits (0 .. 0x3f8), the highest bucket where the running sum from the top reaches the target,
   then the same over that bucket's values with the next ten bits and the last ten. Most of a vocabulary is far
   below the threshold: one vector pass sums the values under TAIL and gathers the others into `cand`, and the
   levels run over those alone; only when the threshold falls among the tail do they run over the whole row. Every
   sum runs in a fixed order: the threshold is a function of the row alone. Where rounding leaves a lower level
   short of its target (its sums run in another order than the level above), that level keeps all of its values. */
#define HIST 1024
#define TAIL 0x1p-20f

/* the threshold over count values (moved, for the lower levels, into cand; vals may be cand) whose sum plus
   `tail` (the mass of values below all of them) is the total; 0 in *reached when the top level never reaches
   the target (the threshold is in the tail) */
static float cut_levels(const float* vals, int64_t count, float tail, float top_p, float* cand, int* reached) {
    float h[4][HIST], target = 0.0f, above = 0.0f;
    uint32_t prefix = 0;
    *reached = 1;
    for (int shift = 20; shift >= 0; shift -= 10) {
        memset(h, 0, sizeof h);
        int64_t i = 0;
        for (; i + 4 <= count; i += 4)  /* four histograms: no chain of adds through one bucket's memory */
            for (int l = 0; l < 4; l++) {
                uint32_t b;
                memcpy(&b, &vals[i + l], 4);
                h[l][(b >> shift) & (HIST - 1)] += vals[i + l];
            }
        for (; i < count; i++) {
            uint32_t b;
            memcpy(&b, &vals[i], 4);
            h[0][(b >> shift) & (HIST - 1)] += vals[i];
        }
        float mass[HIST];
        for (int k = 0; k < HIST; k++) mass[k] = (h[0][k] + h[1][k]) + (h[2][k] + h[3][k]);
        if (shift == 20) {
            float total = 0.0f;
            for (int k = HIST - 1; k >= 0; k--) total += mass[k];
            target = top_p * (total + tail);
        }
        int chosen = -1, lowest = -1;
        float run = above;
        for (int k = HIST - 1; k >= 0 && chosen < 0; k--) {
            if (!(mass[k] > 0.0f)) continue;
            lowest = k;
            if (run + mass[k] >= target) chosen = k;
            else run += mass[k];
        }
        if (chosen < 0) {  /* rounding (or no mass at all): this level keeps all of its values */
            if (shift == 20) *reached = 0;
            chosen = lowest >= 0 ? lowest : 0;
            run = above;
            for (int k = HIST - 1; k > chosen; k--) run += mass[k] > 0.0f ? mass[k] : 0.0f;
        }
        above = run;
        prefix |= (uint32_t)chosen << shift;
        if (shift == 0) break;
        /* the values sharing the chosen bits above `shift` */
        const uint32_t want = prefix >> shift, high = 0xffffffffu >> shift;
        int64_t c = 0;
        for (int64_t j = 0; j < count; j++) {
            uint32_t b;
            memcpy(&b, &vals[j], 4);
            if (((b >> shift) & high) == want) cand[c++] = vals[j];
        }
        vals = cand;
        count = c;
    }
    float t;
    memcpy(&t, &prefix, 4);
    return t;
}

/* e: n16 values (zero-padded); cand: room for n16 */
static float top_p_cut(const float* e, int64_t n16, float top_p, float* cand) {
    V tail = v_zero();
    const V bound = v_set1(TAIL);
    int64_t c = 0;
    for (int64_t j = 0; j < n16; j += 16) {
        const V v = v_load(e + j);
        uint32_t keep = v_ge_mask(v, bound);
        tail = v_add(tail, v_select_bits(keep, v_zero(), v));
        for (; keep; keep &= keep - 1) cand[c++] = e[j + __builtin_ctz(keep)];
    }
    int reached;
    const float t = cut_levels(cand, c, v_hsum(tail), top_p, cand, &reached);
    return reached ? t : cut_levels(e, n16, 0.0f, top_p, cand, &reached);
}

/* Row x's token: e = exp((x - max) / T) in [0, 1]; with top-p or min-p, stored in `e` (n rounded up to 16,
   zero-padded) and filtered as the sampler filters (top-p first, over softmax(x / T); then min-p): top-p keeps the
   tokens with e >= the largest value t whose kept mass reaches top_p times the total (ties with it kept: the
   sampler's rule; `top_p_cut`); min-p keeps e >= min_p (e is the probability over the largest one). Without them
   nothing is stored: the block sums come from one pass of exponentials, and the chosen block's are computed again. */
static int64_t draw_row(const float* x, int64_t n, float temp, float top_p, float min_p, float u0, float u1,
                        float* e, float* block_sums) {
    V m = v_set1(-INFINITY);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) m = v_max(m, v_load(x + i));
    float mx = v_hmax(m);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    if (!(mx > -INFINITY) || mx != mx) {  /* every logit -inf (or NaN): the first largest, as argmax */
        int64_t at = 0;
        while (at + 1 < n && !(x[at] >= mx)) at++;
        return at;
    }
    const V vmx = v_set1(mx), it = v_set1(1.0f / temp);
    const int stored = top_p < 1.0f || min_p > 0.0f;
    if (stored) {
        const int64_t n16 = (n + 15) / 16 * 16;
        for (int64_t j = 0; j < n16; j += 16) v_store(e + j, exp_lanes(x + j, n - j, vmx, it));
        float cut = min_p;
        if (top_p < 1.0f) {
            const float t = top_p_cut(e, n16, top_p, e + n16);
            if (t > cut) cut = t;
        }
        if (cut > 0.0f)
            for (int64_t j = 0; j < n; j++) e[j] = e[j] >= cut ? e[j] : 0.0f;
    }
    const int64_t nb = (n + DRAW_BLOCK - 1) / DRAW_BLOCK;
    float total = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * DRAW_BLOCK, hi = lo + DRAW_BLOCK < n ? lo + DRAW_BLOCK : n;
        V acc = v_zero();
        for (int64_t j = lo; j < hi; j += 16)
            acc = v_add(acc, stored ? v_load(e + j) : exp_lanes(x + j, hi - j, vmx, it));
        block_sums[b] = v_hsum(acc);
        total += block_sums[b];
    }
    /* the block: the first whose running sum reaches (1 - u0) * total (a block of zero mass never does) */
    const float target = (1.0f - u0) * total;
    int64_t b = 0;
    float run = block_sums[0];
    while (b + 1 < nb && run < target) run += block_sums[++b];
    /* the token: the same in the block, over its running sum */
    const int64_t lo = b * DRAW_BLOCK, len = (lo + DRAW_BLOCK < n ? lo + DRAW_BLOCK : n) - lo;
    float again[DRAW_BLOCK];
    const float* eb = e + lo;
    if (!stored) {
        for (int64_t j = 0; j < len; j += 16)
            v_store_n(again + j, exp_lanes(x + lo + j, len - j, vmx, it), len - j < 16 ? (int)(len - j) : 16);
        eb = again;
    }
    float in = 0.0f;
    for (int64_t j = 0; j < len; j++) in += eb[j];
    const float t2 = (1.0f - u1) * in;
    float c = 0.0f;
    int64_t j = 0;  /* the running sum ends at `in` >= t2, reached at a token of non-zero mass */
    for (; j + 1 < len; j++) {
        c += eb[j];
        if (c >= t2) break;
    }
    return lo + j;
}

/* out[r] = a token drawn from softmax(x[r] / temp[r]) with the uniform numbers u[2 r], u[2 r + 1] in [0, 1),
   after top-p (top_p[r] < 1) and min-p (min_p[r] > 0) where given (top_p, min_p may be NULL). Returns 0, or -1
   when a thread's scratch could not be allocated (out is then not to be used). */
int64_t sample_rows(const float* x, int64_t rows, int64_t n, const float* temp, const float* top_p,
                    const float* min_p, const float* u, int64_t* out, int64_t nthreads) {
    const int64_t nb = (n + DRAW_BLOCK - 1) / DRAW_BLOCK, n16 = (n + 15) / 16 * 16;
    int filtered = 0, failed = 0;
    for (int64_t r = 0; r < rows; r++)
        if ((top_p && top_p[r] < 1.0f) || (min_p && min_p[r] > 0.0f)) filtered = 1;
#pragma omp parallel num_threads((int)nthreads) if (rows > 1)
    {
        float stack[STACK_BLOCKS];
        float* sums = nb <= STACK_BLOCKS ? stack : malloc(sizeof(float) * (size_t)nb);
        float* e = filtered ? malloc(sizeof(float) * (size_t)(2 * n16)) : NULL;  /* the row, top-p's candidates */
        const int ok = sums && (e || !filtered);
        if (!ok) __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float p = top_p ? top_p[r] : 1.0f, mp = min_p ? min_p[r] : 0.0f;
            out[r] = ok ? draw_row(x + r * n, n, temp[r], p, mp, u[2 * r], u[2 * r + 1], e, sums) : -1;
        }
        free(e);
        if (sums != stack) free(sums);
    }
    return failed ? -1 : 0;
}
