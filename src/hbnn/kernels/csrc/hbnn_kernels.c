/* hbnn bit-serial kernels: packing, CPU feature detection and the dispatching entry points.
 *
 * One translation unit, built on first use by hbnn/kernels/_build.py with
 *     cc -O3 -fopenmp -ffp-contract=off -shared -fPIC hbnn_kernels.c
 * It #includes gemm_portable.c, gemm_avx2.c and gemm_avx512.c; each of those compiles the
 * shared driver gemm_body.c and the packers pack_body.c with its own micro-kernel and its
 * own target attributes, so
 * no -march flag is needed and the variant is picked at run time (__builtin_cpu_supports).
 * -ffp-contract=off keeps every float operation a separately rounded IEEE operation, so
 * all variants and the pure-torch reference produce bit-identical float outputs.
 *
 * Packed layout (the contract with hbnn/kernels/packing.py): a plane of R rows and K
 * entries is R rows of ceil(K/64) uint64 words; entry k is bit k%64 of word k/64 (LSB
 * first), 1 = +1 (signs) or active (masks); bits past K are 0.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#define HBNN_X86 1
#include <immintrin.h>
#endif

#define HBNN_ABI_VERSION 4
#define HBNN_NR 12     /* activation rows per micro-panel */
#define HBNN_LANES 16  /* weight rows per panel */

/* Arguments of one bit-serial GEMM / implicit-GEMM convolution (linear = 1x1 conv on 1x1
 * images).  Mirrored field by field by the ctypes Structure in _cbackend.py. */
typedef struct {
    const uint64_t *w_signs; /* [nw][O][kh*kw*cw] */
    const uint64_t *w_masks; /* same or NULL (all weight planes full) */
    const uint8_t *w_full;   /* [nw]: 1 = plane is all-active, its mask is never read */
    const float *w_scales;   /* [nw] or [nw][O] */
    const uint64_t *x_signs; /* [nx][B*H*W][cw] (NHWC, packed along C) */
    const uint64_t *x_masks;
    const uint8_t *x_full;
    const float *x_scales;   /* [nx] or [nx][B] */
    float *y;                /* [B*OH*OW][O] or NULL */
    int32_t *counts;         /* [nw][nx][B*OH*OW][O] or NULL */
    int64_t nw, nx, O, B, H, W, C, cw;
    int64_t kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
    int64_t w_scale_per_row, x_scale_per_row;
    int64_t nthreads;
} hbnn_gemm_args;

/* An output row (pixel p = (b, oy, ox)) and the top-left input position of its window. */
typedef struct {
    int64_t p, b, y0, x0;
} hbnn_row;

/* Per-thread activation panels of one chunk of output rows (see gemm_body.c pack_x). */
typedef struct {
    uint64_t *xs, *xm;   /* [nx][nm][kwt][HBNN_NR] signs / masks */
    int32_t *popx;       /* [nx][nm][HBNN_NR] mask popcounts */
    float *xsc;          /* [nx][nm][HBNN_NR] activation scales */
    uint8_t *xmsk;       /* [nx][nm] plane treated as masked on this micro-panel */
    int64_t nm, r0, r1;  /* micro-panels in the chunk, its rows rows[r0..r1) */
} hbnn_chunk;

static inline int64_t hbnn_min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Output rows per work item: ~256 KiB of activation panels (L2), at most 16 micro-panels,
 * and small enough that each of nt threads gets >= 4 items (dynamic scheduling then
 * evens out a busy machine); a multiple of HBNN_NR. */
static int64_t hbnn_chunk_rows(int64_t kwt, int64_t nx, int64_t R, int nt) {
    const int64_t row_bytes = kwt * 8 * nx * 2 + 4 * nx + 1;
    const int64_t balance = (R + 4 * nt - 1) / (4 * nt);
    int64_t chunk = 256 * 1024 / row_bytes;
    if (chunk > 16 * HBNN_NR) chunk = 16 * HBNN_NR;
    if (chunk > balance) chunk = balance;
    chunk = (chunk + HBNN_NR - 1) / HBNN_NR * HBNN_NR;
    return chunk < HBNN_NR ? HBNN_NR : chunk;
}

/* 64-byte aligned allocation (panels are read with aligned vector loads). */
static void *hbnn_alloc(size_t bytes) {
    void *p = NULL;
    size_t n = (bytes + 63) / 64 * 64;
    if (n == 0) n = 64;
    if (posix_memalign(&p, 64, n) != 0) return NULL;
    return p;
}

/* Portable 64-bit popcount (SWAR, no multiply so it also vectorizes on plain SSE2). */
static inline int64_t hbnn_pop_swar(uint64_t v) {
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    v += v >> 8;
    v += v >> 16;
    v += v >> 32;
    return (int64_t)(v & 0x7F);
}

/* Valid-bit pattern of word c of a C-entry row packed in cw words. */
static inline uint64_t hbnn_valid_word(int64_t c, int64_t cw, int64_t C) {
    int64_t tail = C - 64 * (cw - 1);
    if (c < cw - 1 || tail == 64) return ~0ULL;
    return (1ULL << tail) - 1ULL;
}

/* ---- SIMD variants: each defines <name>_<suffix> for the driver functions ---- */
#include "gemm_portable.c"
#ifdef HBNN_X86
#include "gemm_avx2.c"
#include "gemm_avx512.c"
#endif

enum { HBNN_V_PORTABLE = 0, HBNN_V_AVX2 = 1, HBNN_V_AVX512 = 2 };

int hbnn_abi_version(void) { return HBNN_ABI_VERSION; }

/* Bit mask of CPU features: 1 popcnt, 2 avx2, 4 avx512f, 8 avx512bw, 16 avx512vpopcntdq. */
int hbnn_cpu_features(void) {
    int f = 0;
#ifdef HBNN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("popcnt")) f |= 1;
    if (__builtin_cpu_supports("avx2")) f |= 2;
    if (__builtin_cpu_supports("avx512f")) f |= 4;
    if (__builtin_cpu_supports("avx512bw")) f |= 8;
    if (__builtin_cpu_supports("avx512vpopcntdq")) f |= 16;
#endif
    return f;
}

int hbnn_variant_supported(int v) {
    int f = hbnn_cpu_features();
    switch (v) {
    case HBNN_V_PORTABLE: return 1;
    case HBNN_V_AVX2: return (f & 3) == 3;
    case HBNN_V_AVX512: return (f & (1 | 4 | 8 | 16)) == (1 | 4 | 8 | 16);
    default: return 0;
    }
}

int hbnn_best_variant(void) {
    if (hbnn_variant_supported(HBNN_V_AVX512)) return HBNN_V_AVX512;
    if (hbnn_variant_supported(HBNN_V_AVX2)) return HBNN_V_AVX2;
    return HBNN_V_PORTABLE;
}

int hbnn_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Bit-serial GEMM / conv.  variant < 0 picks the best supported one.
 * Returns 0, or -1 (variant unsupported), -2 (out of memory), -3 (bad arguments). */
int hbnn_gemm(int variant, const hbnn_gemm_args *a) {
    if (variant < 0) variant = hbnn_best_variant();
    if (!hbnn_variant_supported(variant)) return -1;
    if (a->nw < 1 || a->nx < 1 || a->O < 1 || a->cw < 1 || a->kh < 1 || a->kw < 1) return -3;
    if (a->sh < 1 || a->sw < 1 || a->dh < 1 || a->dw < 1 || a->ph < 0 || a->pw < 0) return -3;
    switch (variant) {
#ifdef HBNN_X86
    case HBNN_V_AVX512: return hbnn_gemm_avx512(a);
    case HBNN_V_AVX2: return hbnn_gemm_avx2(a);
#endif
    default: return hbnn_gemm_portable(a);
    }
}

/* ---- packing (see pack_body.c); variant < 0 picks the best supported one ---- */

static int hbnn_pick(int variant) {
    if (variant < 0) variant = hbnn_best_variant();
    return hbnn_variant_supported(variant) ? variant : -1;
}

/* bool/uint8 [B][K][S] -> rows r = b*S + s of ceil(K/64) words.  Returns 0 or -1. */
int hbnn_pack_u8(int variant, const uint8_t *src, int64_t B, int64_t K, int64_t S,
                 uint64_t *dst, int64_t nthreads) {
    const int nt = nthreads > 0 ? (int)nthreads : 1;
    switch (hbnn_pick(variant)) {
#ifdef HBNN_X86
    case HBNN_V_AVX512: pack_u8_avx512(src, B, K, S, dst, nt); return 0;
    case HBNN_V_AVX2: pack_u8_avx2(src, B, K, S, dst, nt); return 0;
#endif
    case HBNN_V_PORTABLE: pack_u8_portable(src, B, K, S, dst, nt); return 0;
    default: return -1;
    }
}

/* Residual binarization with fixed per-tensor scales mu[n] (n <= 8), fused with packing.
 * x is [B][K][S] float32; bitmap (same layout, int8) or NULL for n planes everywhere.
 * Per entry: E_0 = x; plane i is active where i == 0 or bitmap > i; s_i = [E > 0]
 * (sign(0) = -1); on active entries E -= mu_i s_i (i.e. E - mu_i or E + mu_i, float32).
 * Writes signs (0 where inactive) and, if masks != NULL, active bits, both
 * [n][B*S][kwords]; active[i] = number of active entries of plane i.  Returns 0 or -1. */
int hbnn_pack_residual(int variant, const float *x, const int8_t *bitmap, int64_t B, int64_t K,
                       int64_t S, int64_t n, const float *mu, uint64_t *signs, uint64_t *masks,
                       int64_t *active, int64_t nthreads) {
    const int nt = nthreads > 0 ? (int)nthreads : 1;
    if (n < 1 || n > 8) return -1;
    switch (hbnn_pick(variant)) {
#ifdef HBNN_X86
    case HBNN_V_AVX512:
        pack_residual_avx512(x, bitmap, B, K, S, n, mu, signs, masks, active, nt); return 0;
    case HBNN_V_AVX2:
        pack_residual_avx2(x, bitmap, B, K, S, n, mu, signs, masks, active, nt); return 0;
#endif
    case HBNN_V_PORTABLE:
        pack_residual_portable(x, bitmap, B, K, S, n, mu, signs, masks, active, nt); return 0;
    default: return -1;
    }
}
