/* Every struct and entry point shared with Python (forwardpass/kernels/native.py binds them with ctypes).

   The library reports the size and field offsets of each struct (`fp_abi_layout`), and the Python side refuses
   to use a library whose layout differs from its own: a mismatch is a clear error at load, never silent memory
   corruption. Keep FP_ABI_FIELDS below in step with the structs. */
#ifndef FORWARDPASS_H
#define FORWARDPASS_H

#include <stdint.h>

#define FP_EXPORT __attribute__((visibility("default")))

/* A matrix of n rows and k columns in 16-row x 32-column tiles (layout: tiles.c). */
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

/* One layer of the native step (decoder.c). */
typedef struct {
    const float *attn_norm, *q_norm, *k_norm, *post_attn_norm, *ffn_norm, *post_ffn_norm, *qkv_bias;
    const tmat_t* qkv[3]; int64_t n_qkv;
    const tmat_t* o;
    const tmat_t* gu[2]; int64_t n_gu;
    const tmat_t* down;
    uint16_t *kc, *vc;          /* this layer's bf16 cache: (slots, n_kv, head_dim) */
    int64_t window, rope;       /* sliding window (0: none); index of its RoPE table */
    int64_t group;              /* its KV group: which of the step's slot and context tables address its cache */
} dlayer_t;

/* What a tensor-parallel rank gathers from every rank (`dmodel_t.gather`): the attention output's columns (its
   heads), attn_output's output rows, the FFN activation's columns, ffn_down's output rows. */
enum { FP_GATHER_ATT = 0, FP_GATHER_O = 1, FP_GATHER_FF = 2, FP_GATHER_DOWN = 3 };

/* The all-gather of a tensor-parallel rank: `local` (rows, this rank's width of `what`) -> `full` (rows, every
   rank's width side by side, in rank order). Returns 0, or nonzero on failure (the step then skips every later
   gather and the caller reports the error). */
typedef int (*fp_gather_fn)(void* ctx, int64_t what, const float* local, int64_t rows, float* full);

typedef struct {
    int64_t n_layers, d_model, n_ff, n_heads, n_kv, head_dim, rope_dims, neox, act;  /* act 0: SiLU, 1: GELU-tanh */
    float eps, scale;
    const dlayer_t* layers;
    const float* out_norm;      /* final norm and output head: logits of the rows asked for */
    const tmat_t* head;
    /* Tensor parallelism (gather NULL: one process, and the fields below are unused). n_heads, n_kv and n_ff are
       then this rank's; o and down hold this rank's d_local output rows over the full q_out_full / n_ff_full
       input columns, gathered from every rank before them; their output rows are gathered after them. */
    fp_gather_fn gather;
    void* gather_ctx;
    int64_t q_out_full, n_ff_full, d_local;
} dmodel_t;

/* struct name, then each field: the list fp_abi_layout reports (sizeof, then offsetof per field) */
#define FP_ABI_FIELDS(X)                                                                                        \
    X(tmat_t, n) X(tmat_t, k) X(tmat_t, bits) X(tmat_t, smode) X(tmat_t, mconst) X(tmat_t, codes)                \
    X(tmat_t, planes) X(tmat_t, d16) X(tmat_t, m16) X(tmat_t, sc) X(tmat_t, mn) X(tmat_t, dsb) X(tmat_t, msb)    \
    X(dlayer_t, attn_norm) X(dlayer_t, q_norm) X(dlayer_t, k_norm) X(dlayer_t, post_attn_norm)                   \
    X(dlayer_t, ffn_norm) X(dlayer_t, post_ffn_norm) X(dlayer_t, qkv_bias) X(dlayer_t, qkv) X(dlayer_t, n_qkv)    \
    X(dlayer_t, o) X(dlayer_t, gu) X(dlayer_t, n_gu) X(dlayer_t, down) X(dlayer_t, kc) X(dlayer_t, vc)            \
    X(dlayer_t, window) X(dlayer_t, rope) X(dlayer_t, group)                                                     \
    X(dmodel_t, n_layers) X(dmodel_t, d_model) X(dmodel_t, n_ff) X(dmodel_t, n_heads) X(dmodel_t, n_kv)          \
    X(dmodel_t, head_dim) X(dmodel_t, rope_dims) X(dmodel_t, neox) X(dmodel_t, act) X(dmodel_t, eps)              \
    X(dmodel_t, scale) X(dmodel_t, layers) X(dmodel_t, out_norm) X(dmodel_t, head) X(dmodel_t, gather)          \
    X(dmodel_t, gather_ctx) X(dmodel_t, q_out_full) X(dmodel_t, n_ff_full) X(dmodel_t, d_local)

/* ---- entry points ---- */

/* The instruction set this library was built for ("avx512", "avx2", "avx2+vnni", "neon"). */
FP_EXPORT const char* fp_variant(void);
/* Writes sizeof(tmat_t), sizeof(dlayer_t), sizeof(dmodel_t), then the offset of every field of FP_ABI_FIELDS in
   that order, into out (at most cap values); returns how many values there are. */
FP_EXPORT int64_t fp_abi_layout(int64_t* out, int64_t cap);

FP_EXPORT void quantize_rows(const float* x, int64_t t, int64_t ldx, int64_t k, int8_t* q, float* dx, float* sx,
                             int32_t* s16);
FP_EXPORT void tile_matmul(const tmat_t* const* mats, int64_t nm, const float* x, int64_t t, int8_t* q, float* dx,
                           float* sx, int32_t* s16, float* y, int64_t ldy, int64_t nthreads);
FP_EXPORT void tile_dequant(const tmat_t* W, int64_t rt0, int64_t rt1, void* out, int64_t bf16, int64_t nthreads);
FP_EXPORT void paged_attention(const float* q, const uint16_t* k, const uint16_t* v, const int64_t* ctx,
                               int64_t ctx_stride, const int64_t* seq, const int64_t* lens, int64_t rows,
                               int64_t heads, int64_t kv_heads, int64_t dim, float scale, int64_t window, float* out,
                               int64_t n_threads);
FP_EXPORT void argmax_rows(const float* x, int64_t rows, int64_t n, int64_t* out, int64_t nthreads);
FP_EXPORT int64_t sample_rows(const float* x, int64_t rows, int64_t n, const float* temp, const float* top_p,
                           const float* min_p, const float* u, int64_t* out, int64_t nthreads);
FP_EXPORT void mask_rows(float* x, int64_t n, const int64_t* idx, int64_t nrows, const uint32_t* bits, int64_t words,
                         uint8_t* empty, int64_t nthreads);
FP_EXPORT int64_t decoder_workspace(const dmodel_t* M, int64_t B, int64_t lmax, int64_t nthreads);
FP_EXPORT int64_t decoder_step(const dmodel_t* M, float* x, int64_t B, const float* rope, const int64_t* slots,
                            const int64_t* ctx, int64_t ctx_stride, int64_t ctx_group_stride, const int64_t* seq,
                            const int64_t* lens, const int64_t* out_rows, int64_t n_out, float* logits, void* ws,
                            int64_t nthreads);

#endif /* FORWARDPASS_H */
