/* What this build is: its instruction set and the layout of the structs shared with Python. */
#include <stddef.h>

#include "internal.h"

const char* fp_variant(void) {
#if defined(FP_AVX512)
    return "avx512";
#elif defined(FP_AVX2) && defined(FP_AVXVNNI)
    return "avx2+vnni";
#elif defined(FP_AVX2)
    return "avx2";
#else
    return "neon";
#endif
}

int64_t fp_abi_layout(int64_t* out, int64_t cap) {
    int64_t n = 0;
#define PUT(v) do { if (n < cap) out[n] = (int64_t)(v); n++; } while (0)
#define FIELD(type, field) PUT(offsetof(type, field));
    PUT(sizeof(tmat_t));
    PUT(sizeof(dlayer_t));
    PUT(sizeof(dmodel_t));
    FP_ABI_FIELDS(FIELD)
#undef FIELD
#undef PUT
    return n;
}
