/* Declarations shared between the library's own files (not exported). */
#ifndef FP_INTERNAL_H
#define FP_INTERNAL_H

#include "forwardpass.h"
#include "fp_simd.h"

/* tokens of K columns quantized, the codes group-major with room for `ld` tokens: q (K / 32, ld, 32) int8; the
   scales token-major: dx and sx (ld, K / 32), s16 (ld, K / 32, 2) */
typedef struct { int8_t* q; float* dx; float* sx; int32_t* s16; int64_t k, ld; } qact_t;

/* How the row tiles of a matmul are shared out: each thread starts on its own contiguous part (one stream the
   prefetchers follow), in chunks it claims from the front; a thread done with its part takes chunks from the back
   of the others'. Idle cores split the work in halves as a static schedule would; a thread slowed by a busy
   neighbour on its core leaves the rest of its part to the others instead of holding up the whole step. A slot
   packs phase (16 bits), next (24) and end (24) in one word, claimed with compare-and-swap; `calls` counts a
   thread's matmuls in the parallel region, so every thread names the same phase for the same matmul. */
#define FP_MAX_THREADS 64
typedef struct { _Alignas(64) uint64_t word; } work_slot_t;
typedef struct { work_slot_t slot[FP_MAX_THREADS]; } work_t;  /* zeroed before the parallel region */
typedef struct { work_t* work; uint32_t calls; } team_t;       /* per thread */

/* tiles.c */
void quantize_row(const float* x, int64_t t, const qact_t* a);
void tile_matmul_multi(const tmat_t* const* mats, int nm, const qact_t* X, int64_t T, float* y, int64_t ldy,
                       team_t* team);

/* attention.c */
#define ATTEND_PART 256  /* keys per part of a long context (attend_parts) */
int64_t attend_parts(int64_t len, int64_t window);
int64_t attend_scratch(int64_t lmax, int64_t heads, int64_t dim);
void attend_part(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t len,
                 int64_t kv_heads, int64_t kvh, int64_t heads, int64_t dim, float scale, int64_t window, int64_t p,
                 float* s, float* rec);
void attend_merge(const float* recs, int64_t parts, int64_t heads, int64_t dim, float* out);
void attend_heads(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t len,
                  int64_t kv_heads, int64_t kvh, int64_t heads, int64_t dim, float scale, int64_t window, float* s,
                  float* o);

#endif /* FP_INTERNAL_H */
