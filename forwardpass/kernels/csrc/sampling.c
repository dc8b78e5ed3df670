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

static int64_t draw_row(const float* x, int64_t n, float temp, float u0, float u1, float* block_sums) {
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
    const int64_t nb = (n + DRAW_BLOCK - 1) / DRAW_BLOCK;
    float total = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * DRAW_BLOCK, hi = lo + DRAW_BLOCK < n ? lo + DRAW_BLOCK : n;
        V acc = v_zero();
        for (int64_t j = lo; j < hi; j += 16) acc = v_add(acc, exp_lanes(x + j, hi - j, vmx, it));
        const float s = v_hsum(acc);
        block_sums[b] = s;
        total += s;
    }
    /* the block: the first whose running sum reaches (1 - u0) * total (a block of zero mass never does) */
    const float target = (1.0f - u0) * total;
    int64_t b = 0;
    float run = block_sums[0];
    while (b + 1 < nb && run < target) run += block_sums[++b];
    /* the token: the same in the block, over its running sum */
    const int64_t lo = b * DRAW_BLOCK, hi = lo + DRAW_BLOCK < n ? lo + DRAW_BLOCK : n;
    float e[DRAW_BLOCK];
    for (int64_t j = lo; j < hi; j += 16) {
        const int64_t cnt = hi - j < 16 ? hi - j : 16;
        v_store_n(e + (j - lo), exp_lanes(x + j, cnt, vmx, it), (int)cnt);
    }
    float in = 0.0f;
    for (int64_t j = 0; j < hi - lo; j++) in += e[j];
    const float t2 = (1.0f - u1) * in;
    float c = 0.0f;
    int64_t j = 0;  /* the running sum ends at `in` >= t2, reached at a token of non-zero mass */
    for (; j + 1 < hi - lo; j++) {
        c += e[j];
        if (c >= t2) break;
    }
    return lo + j;
}

/* out[r] = a token drawn from softmax(x[r] / temp[r]) with the uniform numbers u[2 r], u[2 r + 1] in [0, 1) */
void sample_rows(const float* x, int64_t rows, int64_t n, const float* temp, const float* u, int64_t* out,
                 int64_t nthreads) {
    const int64_t nb = (n + DRAW_BLOCK - 1) / DRAW_BLOCK;
#pragma omp parallel num_threads((int)nthreads) if (rows > 1)
    {
        float stack[STACK_BLOCKS];
        float* sums = nb <= STACK_BLOCKS ? stack : malloc(sizeof(float) * (size_t)nb);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            out[r] = sums ? draw_row(x + r * n, n, temp[r], u[2 * r], u[2 * r + 1], sums) : 0;
        if (sums != stack) free(sums);
    }
}
