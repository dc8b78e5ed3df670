/* The most int8 multiply-adds per second each kernel build's instruction sequence can issue on this machine: the
   bound under the batched matmuls of `forwardpass bench --batch N`, which are compute-bound where one stream is
   bound by memory. Registers only (no loads, no scales), inline asm so that the compiler cannot fold the work,
   2 threads by default (OMP_NUM_THREADS). A MAC is one weight code times one int8 activation, as the tile kernels
   count them (csrc/tiles.c).

       gcc -O2 -fopenmp scripts/int8_peak.c -o /tmp/int8_peak && /tmp/int8_peak

   avx2 4-bit: one tile half for one token as tiles.c's plain-AVX2 path runs it: 8 vpmaddubsw summed in int16,
   one vpmaddwd to int32 (256 MACs). avx2 8-bit: vpsignb, vpmaddubsw, vpmaddwd, vpaddd per 32 MACs (the 8-bit
   output head; plain AVX2 has no unsigned x signed byte product that cannot saturate on 8-bit codes).
   avx-vnni / avx512-vnni: independent vpdpbusd (ymm: 32 MACs, zmm: 64). Needs an x86-64 CPU with AVX-512 VNNI and
   AVX-VNNI to run every line; a line whose instructions the CPU lacks dies with SIGILL, so run on such a CPU. */
#if !defined(__x86_64__)
#error "x86-64 only: it measures the x86 builds' instruction sequences"
#endif

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define ITERS 100000000L

static void avx2_4bit(void) {
    for (long i = 0; i < ITERS; i++)
        __asm__ volatile(
            "vpmaddubsw %%ymm8, %%ymm0, %%ymm1\n vpmaddubsw %%ymm8, %%ymm2, %%ymm3\n"
            "vpmaddubsw %%ymm9, %%ymm0, %%ymm4\n vpmaddubsw %%ymm9, %%ymm2, %%ymm5\n"
            "vpaddw %%ymm4, %%ymm1, %%ymm1\n vpaddw %%ymm5, %%ymm3, %%ymm3\n"
            "vpmaddubsw %%ymm10, %%ymm0, %%ymm4\n vpmaddubsw %%ymm10, %%ymm2, %%ymm5\n"
            "vpaddw %%ymm4, %%ymm1, %%ymm1\n vpaddw %%ymm5, %%ymm3, %%ymm3\n"
            "vpmaddubsw %%ymm11, %%ymm0, %%ymm4\n vpmaddubsw %%ymm11, %%ymm2, %%ymm5\n"
            "vpaddw %%ymm4, %%ymm1, %%ymm1\n vpaddw %%ymm5, %%ymm3, %%ymm3\n"
            "vpaddw %%ymm3, %%ymm1, %%ymm1\n vpmaddwd %%ymm12, %%ymm1, %%ymm1\n vpaddd %%ymm1, %%ymm14, %%ymm14\n" ::
                : "xmm1", "xmm3", "xmm4", "xmm5", "xmm14");
}

static void avx2_8bit(void) {
    for (long i = 0; i < ITERS; i++)
        __asm__ volatile(
            "vpsignb %%ymm0, %%ymm8, %%ymm1\n vpmaddubsw %%ymm1, %%ymm2, %%ymm1\n"
            "vpmaddwd %%ymm12, %%ymm1, %%ymm1\n vpaddd %%ymm1, %%ymm4, %%ymm4\n"
            "vpsignb %%ymm0, %%ymm9, %%ymm3\n vpmaddubsw %%ymm3, %%ymm2, %%ymm3\n"
            "vpmaddwd %%ymm12, %%ymm3, %%ymm3\n vpaddd %%ymm3, %%ymm5, %%ymm5\n"
            "vpsignb %%ymm0, %%ymm10, %%ymm6\n vpmaddubsw %%ymm6, %%ymm2, %%ymm6\n"
            "vpmaddwd %%ymm12, %%ymm6, %%ymm6\n vpaddd %%ymm6, %%ymm13, %%ymm13\n"
            "vpsignb %%ymm0, %%ymm11, %%ymm7\n vpmaddubsw %%ymm7, %%ymm2, %%ymm7\n"
            "vpmaddwd %%ymm12, %%ymm7, %%ymm7\n vpaddd %%ymm7, %%ymm14, %%ymm14\n" ::
                : "xmm1", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm13", "xmm14");
}

/* One tile half for one token as tiles.c's plain-AVX2 path runs it, scales included: the integer dot product
   above, then vcvtdq2ps, the scale (vbroadcastss dx, vmulps dw) and two vfmadd231ps (d dx dot + m sx): four units
   (tokens) per iteration, each into its own accumulator. */
/* the two scales, then 1.5 * 2^23 eight times (a ymm operand) */
static const float scales[16] __attribute__((aligned(32))) = {0.5f, 0.25f, 0, 0, 0, 0, 0, 0, 12582912.0f,
                                                              12582912.0f, 12582912.0f, 12582912.0f, 12582912.0f,
                                                              12582912.0f, 12582912.0f, 12582912.0f};
/* a unit's end: its int16 sums to int32, to float, times d * dx into ACC, plus m * sx */
#define UNIT_SCALES(ACC)                                                                                   \
    "vpaddw %%ymm2, %%ymm1, %%ymm1\n vpmaddwd %%ymm7, %%ymm1, %%ymm1\n vcvtdq2ps %%ymm1, %%ymm1\n"         \
    "vbroadcastss (%1), %%ymm2\n vmulps %%ymm6, %%ymm2, %%ymm2\n vfmadd231ps %%ymm2, %%ymm1, %%ymm" ACC "\n" \
    "vbroadcastss 4(%1), %%ymm3\n vfmadd231ps %%ymm3, %%ymm5, %%ymm" ACC "\n"
/* the scales, the ones of vpmaddwd and the four accumulators set before the loop */
#define SCALED_SETUP                                                                                       \
    "vbroadcastss (%1), %%ymm5\n vbroadcastss 4(%1), %%ymm6\n"                                             \
    "vpcmpeqw %%ymm7, %%ymm7, %%ymm7\n vpsrlw $15, %%ymm7, %%ymm7\n"                                       \
    "vxorps %%ymm12, %%ymm12, %%ymm12\n vxorps %%ymm13, %%ymm13, %%ymm13\n"                                \
    "vxorps %%ymm14, %%ymm14, %%ymm14\n vxorps %%ymm15, %%ymm15, %%ymm15\n"
#define UNIT4(ACC)                                                                                         \
    "vpmaddubsw %%ymm8, %%ymm0, %%ymm1\n vpmaddubsw %%ymm8, %%ymm0, %%ymm2\n"                              \
    "vpmaddubsw %%ymm9, %%ymm0, %%ymm3\n vpmaddubsw %%ymm9, %%ymm0, %%ymm4\n"                              \
    "vpaddw %%ymm3, %%ymm1, %%ymm1\n vpaddw %%ymm4, %%ymm2, %%ymm2\n"                                      \
    "vpmaddubsw %%ymm10, %%ymm0, %%ymm3\n vpmaddubsw %%ymm10, %%ymm0, %%ymm4\n"                            \
    "vpaddw %%ymm3, %%ymm1, %%ymm1\n vpaddw %%ymm4, %%ymm2, %%ymm2\n"                                      \
    "vpmaddubsw %%ymm11, %%ymm0, %%ymm3\n vpmaddubsw %%ymm11, %%ymm0, %%ymm4\n"                            \
    "vpaddw %%ymm3, %%ymm1, %%ymm1\n vpaddw %%ymm4, %%ymm2, %%ymm2\n"                                      \
    UNIT_SCALES(ACC)
static void avx2_4bit_scaled(void) { /* the loop in the asm: its float registers set first (no denormals) */
    long n = ITERS;
    __asm__ volatile(
        SCALED_SETUP
        "1:\n" UNIT4("12") UNIT4("13") UNIT4("14") UNIT4("15") "dec %0\n jnz 1b\n"
        : "+r"(n)
        : "r"(scales)
        : "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
}

/* The same, with each 4 activation bytes broadcast from memory (vpbroadcastd m32) as tiles.c's halves read them:
   8 more loads per unit, the weights in registers. */
static const int8_t xbytes[32] __attribute__((aligned(32)));
#define UNIT4_BCAST(ACC)                                                                                   \
    "vpbroadcastd (%2), %%ymm0\n vpmaddubsw %%ymm0, %%ymm8, %%ymm1\n"                                       \
    "vpbroadcastd 4(%2), %%ymm0\n vpmaddubsw %%ymm0, %%ymm8, %%ymm2\n"                                      \
    "vpbroadcastd 8(%2), %%ymm0\n vpmaddubsw %%ymm0, %%ymm9, %%ymm3\n"                                      \
    "vpbroadcastd 12(%2), %%ymm0\n vpmaddubsw %%ymm0, %%ymm9, %%ymm4\n"                                     \
    "vpaddw %%ymm3, %%ymm1, %%ymm1\n vpaddw %%ymm4, %%ymm2, %%ymm2\n"                                      \
    "vpbroadcastd 16(%2), %%ymm0\n vpmaddubsw %%ymm0, %%ymm10, %%ymm3\n"                                    \
    "vpbroadcastd 20(%2), %%ymm0\n vpmaddubsw %%ymm0, %%ymm10, %%ymm4\n"                                    \
    "vpaddw %%ymm3, %%ymm1, %%ymm1\n vpaddw %%ymm4, %%ymm2, %%ymm2\n"                                      \
    "vpbroadcastd 24(%2), %%ymm0\n vpmaddubsw %%ymm0, %%ymm11, %%ymm3\n"                                    \
    "vpbroadcastd 28(%2), %%ymm0\n vpmaddubsw %%ymm0, %%ymm11, %%ymm4\n"                                    \
    "vpaddw %%ymm3, %%ymm1, %%ymm1\n vpaddw %%ymm4, %%ymm2, %%ymm2\n"                                      \
    UNIT_SCALES(ACC)
static void avx2_4bit_scaled_bcast(void) {
    long n = ITERS;
    __asm__ volatile(
        SCALED_SETUP
        "vpxor %%ymm8, %%ymm8, %%ymm8\n vpxor %%ymm9, %%ymm9, %%ymm9\n"
        "vpxor %%ymm10, %%ymm10, %%ymm10\n vpxor %%ymm11, %%ymm11, %%ymm11\n"
        "1:\n" UNIT4_BCAST("12") UNIT4_BCAST("13") UNIT4_BCAST("14") UNIT4_BCAST("15") "dec %0\n jnz 1b\n"
        : "+r"(n)
        : "r"(scales), "r"(xbytes)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
          "xmm12", "xmm13", "xmm14", "xmm15", "cc");
}

/* ten independent accumulators: vpdpbusd's latency (5) times its throughput (2 a cycle) */
#define DP10(P, R)                                                                                         \
    P "vpdpbusd %%" R "0, %%" R "1, %%" R "4\n" P "vpdpbusd %%" R "0, %%" R "1, %%" R "5\n"               \
    P "vpdpbusd %%" R "0, %%" R "1, %%" R "6\n" P "vpdpbusd %%" R "0, %%" R "1, %%" R "7\n"               \
    P "vpdpbusd %%" R "0, %%" R "1, %%" R "8\n" P "vpdpbusd %%" R "0, %%" R "1, %%" R "9\n"               \
    P "vpdpbusd %%" R "0, %%" R "1, %%" R "10\n" P "vpdpbusd %%" R "0, %%" R "1, %%" R "11\n"             \
    P "vpdpbusd %%" R "0, %%" R "1, %%" R "12\n" P "vpdpbusd %%" R "0, %%" R "1, %%" R "13\n"
#define DP10_CLOBBERS "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13"

static void vnni_ymm(void) { /* the VEX (AVX-VNNI) encoding, as the avx2+vnni build emits */
    for (long i = 0; i < ITERS; i++) __asm__ volatile(DP10("%{vex%} ", "ymm")::: DP10_CLOBBERS);
}

/* vpdpbusd shares ports 0 and 1 with the float multiplies, FMAs and conversions: this is the ymm line above with
   the scales of a Q4_1 tile in the same ratio as tiles.c runs them (16 vpdpbusd, then per 8-row half the integer
   sum to float, vmulps d * dx, vfmadd231ps, vfmadd231ps m * sx: 8 float ops; here 10 and 5), the loop in the asm so
   that its registers are set first (zero codes: the sums stay at 1.5 * 2^23). The sum becomes a float by
   vcvtdq2ps (ports 0 and 1; tiles.c before session 9) or by a subtraction from sums started at the bits of
   1.5 * 2^23 (tiles.c now: a float add can also issue on port 5 of Golden Cove class cores). The AVX-VNNI kernels'
   bound is one of these two lines, not the bare one above. */
#define VNNI_YMM_SCALED(TO_FLOAT_A, TO_FLOAT_B)                                                             \
    long n = ITERS;                                                                                         \
    __asm__ volatile(                                                                                       \
        "vbroadcastss (%1), %%ymm2\n vbroadcastss 4(%1), %%ymm3\n vpxor %%ymm0, %%ymm0, %%ymm0\n"             \
        "vpxor %%ymm1, %%ymm1, %%ymm1\n vmovaps 32(%1), %%ymm4\n vmovaps 32(%1), %%ymm5\n"                     \
        "1:\n" DP10("%{vex%} ", "ymm")                                                                      \
        TO_FLOAT_A " vmulps %%ymm2, %%ymm3, %%ymm15\n vfmadd231ps %%ymm15, %%ymm3, %%ymm14\n"               \
        TO_FLOAT_B " vfmadd231ps %%ymm2, %%ymm3, %%ymm15\n"                                                 \
        "dec %0\n jnz 1b\n"                                                                                 \
        : "+r"(n)                                                                                           \
        : "r"(scales)                                                                                       \
        : DP10_CLOBBERS, "xmm0", "xmm1", "xmm2", "xmm3", "xmm14", "xmm15", "cc")

static void vnni_ymm_scaled_cvt(void) {
    VNNI_YMM_SCALED("vcvtdq2ps %%ymm4, %%ymm14\n", "vcvtdq2ps %%ymm5, %%ymm15\n");
}

static void vnni_ymm_scaled_sub(void) {
    VNNI_YMM_SCALED("vsubps 32(%1), %%ymm4, %%ymm14\n", "vsubps 32(%1), %%ymm5, %%ymm15\n");
}

static void vnni_zmm(void) {
    for (long i = 0; i < ITERS; i++) __asm__ volatile(DP10("", "zmm")::: DP10_CLOBBERS);
}

static double gmacs(void (*f)(void), double macs_per_iter) {
    const double t0 = omp_get_wtime();
    int threads = 1;
#pragma omp parallel
    {
#pragma omp single
        threads = omp_get_num_threads();
        f();
    }
    return threads * ITERS * macs_per_iter / (omp_get_wtime() - t0) / 1e9;
}

int main(void) {
    if (!getenv("OMP_NUM_THREADS")) omp_set_num_threads(2);
    printf("threads: %d\n", omp_get_max_threads());
    printf("%-56s %7.1f GMAC/s\n", "avx2, 4-bit codes (vpmaddubsw x8 in int16, vpmaddwd)", gmacs(avx2_4bit, 256));
    printf("%-56s %7.1f GMAC/s\n", "avx2, 4-bit codes, with the scales (as tiles.c)", gmacs(avx2_4bit_scaled, 1024));
    printf("%-56s %7.1f GMAC/s\n", "avx2, 4-bit codes, scales, x broadcast from memory",
           gmacs(avx2_4bit_scaled_bcast, 1024));
    printf("%-56s %7.1f GMAC/s\n", "avx2, 8-bit codes (vpsignb, vpmaddubsw, vpmaddwd)", gmacs(avx2_8bit, 128));
    printf("%-56s %7.1f GMAC/s\n", "avx2+vnni, ymm vpdpbusd", gmacs(vnni_ymm, 320));
    printf("%-56s %7.1f GMAC/s\n", "avx2+vnni, with Q4_1's scales, vcvtdq2ps", gmacs(vnni_ymm_scaled_cvt, 320));
    printf("%-56s %7.1f GMAC/s\n", "avx2+vnni, with Q4_1's scales, vsubps (as tiles.c)",
           gmacs(vnni_ymm_scaled_sub, 320));
    printf("%-56s %7.1f GMAC/s\n", "avx512, zmm vpdpbusd", gmacs(vnni_zmm, 640));
    return 0;
}
