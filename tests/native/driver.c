/* Runs calls of the native library recorded by tests/native_remote.py, in a process of its own: under qemu for a
   build of another instruction set (neon on an x86 machine), or natively under AddressSanitizer and UBSan.

   Input file (little-endian 64-bit words): "FPDRV001", the buffers (count, then size and bytes of each; each is
   allocated on its own, so a read or write past one is caught by the sanitizers), the relocations (count, then
   buffer, offset, target buffer, target offset: the word at buffer + offset becomes the target's address), then
   one call: its name (32 bytes), its argument count and the arguments (kind 0: an integer, kind 1: a pointer
   into a buffer, kind 2: a float32 by its bits; then two words). Output file: the call's return value, then every
   buffer's bytes after the call. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forwardpass.h"

static void fail(const char* what) {
    fprintf(stderr, "driver: %s\n", what);
    exit(2);
}

static uint64_t word(FILE* f) {
    uint64_t w;
    if (fread(&w, 8, 1, f) != 1) fail("truncated input");
    return w;
}

typedef struct { uint8_t* data; uint64_t size; } buffer_t;

int main(int argc, char** argv) {
    if (argc != 3) fail("usage: driver IN OUT");
    FILE* in = fopen(argv[1], "rb");
    if (!in) fail("cannot open the input");
    char magic[8];
    if (fread(magic, 1, 8, in) != 8 || memcmp(magic, "FPDRV001", 8) != 0) fail("not a driver file");
    const uint64_t nbuf = word(in);
    buffer_t* bufs = calloc(nbuf ? nbuf : 1, sizeof(buffer_t));
    for (uint64_t i = 0; i < nbuf; i++) {
        bufs[i].size = word(in);
        bufs[i].data = malloc(bufs[i].size ? bufs[i].size : 1);
        if (bufs[i].size && fread(bufs[i].data, 1, bufs[i].size, in) != bufs[i].size) fail("truncated buffer");
    }
    const uint64_t nrel = word(in);
    for (uint64_t i = 0; i < nrel; i++) {
        const uint64_t b = word(in), off = word(in), t = word(in), toff = word(in);
        if (b >= nbuf || t >= nbuf || off + 8 > bufs[b].size || toff > bufs[t].size) fail("bad relocation");
        const uint64_t address = (uint64_t)(uintptr_t)(bufs[t].data + toff);
        memcpy(bufs[b].data + off, &address, 8);
    }
    char name[33] = {0};
    if (fread(name, 1, 32, in) != 32) fail("truncated call");
    const uint64_t nargs = word(in);
    if (nargs > 16) fail("too many arguments");
    uint64_t a[16] = {0};
    float fl[16] = {0};
    for (uint64_t i = 0; i < nargs; i++) {
        const uint64_t kind = word(in), x = word(in), y = word(in);
        if (kind == 1) {
            if (x >= nbuf || y > bufs[x].size) fail("bad pointer argument");
            a[i] = (uint64_t)(uintptr_t)(bufs[x].data + y);
        } else if (kind == 2) {
            const uint32_t bits = (uint32_t)x;
            memcpy(&fl[i], &bits, 4);
        } else {
            a[i] = x;
        }
    }
    fclose(in);

#define P(i) ((void*)(uintptr_t)a[i])
#define I(i) ((int64_t)a[i])
    int64_t ret = 0;
    if (!strcmp(name, "fp_abi_layout")) {
        ret = fp_abi_layout(P(0), I(1));
    } else if (!strcmp(name, "quantize_rows")) {
        quantize_rows(P(0), I(1), I(2), I(3), P(4), P(5), P(6), P(7));
    } else if (!strcmp(name, "tile_matmul")) {
        tile_matmul(P(0), I(1), P(2), I(3), P(4), P(5), P(6), P(7), P(8), I(9), I(10));
    } else if (!strcmp(name, "tile_dequant")) {
        tile_dequant(P(0), I(1), I(2), P(3), I(4), I(5));
    } else if (!strcmp(name, "paged_attention")) {
        paged_attention(P(0), P(1), P(2), P(3), I(4), P(5), P(6), I(7), I(8), I(9), I(10), fl[11], I(12), P(13),
                        I(14));
    } else if (!strcmp(name, "argmax_rows")) {
        argmax_rows(P(0), I(1), I(2), P(3), I(4));
    } else if (!strcmp(name, "sample_rows")) {
        ret = sample_rows(P(0), I(1), I(2), P(3), P(4), P(5), P(6), P(7), I(8));
    } else if (!strcmp(name, "decoder_workspace")) {
        ret = decoder_workspace(P(0), I(1), I(2), I(3));
    } else if (!strcmp(name, "decoder_step")) {
        ret = decoder_step(P(0), P(1), I(2), P(3), P(4), P(5), I(6), I(7), P(8), P(9), P(10), I(11), P(12), P(13),
                           I(14));
    } else {
        fail("unknown function");
    }

    FILE* out = fopen(argv[2], "wb");
    if (!out) fail("cannot open the output");
    fwrite(&ret, 8, 1, out);
    for (uint64_t i = 0; i < nbuf; i++) {
        fwrite(bufs[i].data, 1, bufs[i].size, out);
        free(bufs[i].data);
    }
    free(bufs);
    fclose(out);
    return 0;
}
