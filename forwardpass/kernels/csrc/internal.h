/* Declarations shared between the library's own files (not exported). */
#ifndef FP_INTERNAL_H
#define FP_INTERNAL_H

#include "forwardpass.h"
#include "fp_simd.h"

/* tokens of K columns quantized, group-major with room for `ld` tokens: q (K / 32, ld, 32) int8, dx and sx
   (K / 32, ld), s16 (K / 32, ld, 2) */
typedef struct { int8_t* q; float* dx; float* sx; int32_t* s16; int64_t k, ld; } qact_t;

/* tiles.c */
void quantize_row(const float* x, int64_t t, const qact_t* a);
void tile_matmul_multi(const tmat_t* const* mats, int nm, const qact_t* X, int64_t T, float* y, int64_t ldy);

/* attention.c */
void attend_heads(const float* qv, const uint16_t* k, const uint16_t* v, const int64_t* slots, int64_t len,
                  int64_t kv_heads, int64_t kvh, int64_t heads, int64_t dim, float scale, int64_t window, float* s,
                  float* o);

#endif /* FP_INTERNAL_H */
