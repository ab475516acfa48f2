/* hbnn bit-serial kernels: packing, CPU feature detection and the dispatching entry points.
 *
 * One translation unit, built on first use by hbnn/kernels/_build.py with
 *     cc -O3 -fopenmp -ffp-contract=off -shared -fPIC hbnn_kernels.c
 * It #includes gemm_portable.c, gemm_avx2.c and gemm_avx512.c; each of those compiles the
 * weight preparation prep_body.c, the tap path tap_body.c, the shared driver gemm_body.c and
 * the packers pack_body.c with its own micro-kernels and its own target attributes, so
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

#define HBNN_ABI_VERSION 6
#define HBNN_SEL_MAXCUTS 7 /* bit-map selection: at most 8 bitwidths in a mix */
#define HBNN_NR 12     /* activation rows per micro-panel */
#define HBNN_LANES 16  /* weight rows per panel */
#define HBNN_STAGE_BYTES (256 * 1024) /* largest chunk of y staged in panel order (gemm_body.c) */

/* Status of a (weight plane, 16-row panel) or an (activation plane, 12-row micro-panel):
 * ABSENT: every live row inactive (the pair contributes exactly 0 and is skipped);
 * FULL: every live row fully active (no mask reads); MASKED: the dense masked path;
 * SPARSE: masked, and few enough words present that the word-list kernel (uks) is cheaper. */
enum { HBNN_ST_ABSENT = 0, HBNN_ST_FULL = 1, HBNN_ST_MASKED = 2, HBNN_ST_SPARSE = 3 };

/* Cost model of the paths, in 1/64 of a dense k-step (one word of a 16 x 12 tile, 24
 * vector popcounts), fitted on AVX-512 (Zen 4): the dense micro-kernel costs 64 per word of a
 * (pair, micro-panel); the word-list kernels a fixed HBNN_SP_FIX_X (activation side, per
 * micro-panel) or HBNN_SP_FIX_W (weight side) plus HBNN_SP_WORD per listed word of one row;
 * the tap-compacted path HBNN_SP_FIX_T per compacted micro-panel and tap plus 64 per word and
 * HBNN_SP_WORD per (row, tap) scatter-add.  A side or path is used only when cheaper. */
#define HBNN_SP_UNIT 64
#define HBNN_SP_FIX_X 640
#define HBNN_SP_FIX_W 1408
#define HBNN_SP_FIX_T 256
#define HBNN_SP_WORD 10

/* Which path a pair (weight status wst, activation status xst, neither ABSENT) takes: the
 * weight-side word lists (SPARSE panel) unless the activation side is SPARSE with fewer
 * cost (HBNN_SP_*); then activation-side word lists; else dense. */
enum { HBNN_PATH_DENSE = 0, HBNN_PATH_WLIST = 1, HBNN_PATH_XLIST = 2 };

static inline int hbnn_path(int wst, int xst, int64_t wsum, int64_t xsum) {
    if (wst == HBNN_ST_SPARSE && (xst != HBNN_ST_SPARSE || HBNN_SP_FIX_W + wsum * HBNN_SP_WORD <= HBNN_SP_FIX_X + xsum * HBNN_SP_WORD))
        return HBNN_PATH_WLIST;
    return xst == HBNN_ST_SPARSE ? HBNN_PATH_XLIST : HBNN_PATH_DENSE;
}


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
    /* The prepared weight (written by hbnn_prepare_weight, read by hbnn_gemm); nq = ceil(O/16),
     * Op = 16 nq, kwt = kh*kw*cw.  Panel rows are original rows p_perm[row] (-1: padding). */
    uint64_t *p_ws;   /* [nw][nq][kwt][16] sign panels */
    uint64_t *p_wm;   /* same, masks (NULL when every plane is full); undefined on FULL panels */
    int32_t *p_popw;  /* [nw][nq][16] mask popcount of each panel row (kh*kw*C when full) */
    float *p_wsc;     /* [nw][Op] scale of each panel row (0 on padding rows) */
    int64_t *p_perm;  /* [Op] original row of each panel row, -1 for padding */
    uint8_t *p_wst;   /* [nw][nq] panel status HBNN_ST_* */
    int32_t *p_widx;  /* [nw][Op][kwt] present words of the rows of SPARSE panels (NULL: none masked) */
    int32_t *p_wn;    /* [nw][Op] their number */
    int64_t p_permuted; /* 1 when p_perm is not the identity */
    /* 1: dense taps (conv, C < 64 so cw = 1): a row's K = kh*kw*C bits are packed densely
     * in tap-major, channel-minor (OHWI) order, kwt = ceil(kh*kw*C/64) words, and the
     * prepared weight is the (O, kh*kw*C) flatten packed the same way (dense_body.c). */
    int64_t dense;
    /* Epilogue on y (not on counts), in this order, each a float32 op as torch does it:
     * y = y + e_bias[o] (e_bias [O] or NULL); y = y + e_res[row][o] (e_res [B*OH*OW][O], the
     * layout of y, not overlapping it, or NULL); if e_clamp: y = min(max(y, e_lo), e_hi) with
     * NaN kept (ReLU: lo 0, hi +inf). */
    const float *e_bias;
    const float *e_res;
    int64_t e_clamp;
    float e_lo, e_hi;
} hbnn_gemm_args;

/* Where a tile row's 16 lanes go in an output row: one entry per 16-column block of the
 * row that the panel's lanes touch; lane idx[c] goes to column base + c for each bit c of
 * mask (lanes of a permuted panel land in a few blocks; an unpermuted panel in one). */
typedef struct {
    int32_t idx[HBNN_LANES];
    int64_t base;
    uint32_t mask;
} hbnn_blk;

/* Output placement of the weight panels for one call (prep_body.c out_plan): the panels in the
 * order the items visit them (permuted panels by their first output column, so the few
 * panels that write one cache line of an output row run close together in time and the
 * line stays in L1/L2) and each panel's blocks blk[bstart[q] .. bstart[q+1]). */
typedef struct {
    int64_t *qord;
    int32_t *bstart;
    hbnn_blk *blk;
    /* Permuted weights: output block n (columns 16n..16n+15) gathers the runs run[rstart[n] ..
     * rstart[n+1]) of a row staged in panel order: the columns of bits of mask, in order, take
     * the consecutive staged values from start on (AVX-512 unpermute: one vpexpandd each). */
    int32_t *rstart;
    struct { int32_t start; uint32_t mask; } *run;
} hbnn_plan;

/* Free what out_plan allocated (every pointer may be NULL). */
static void hbnn_plan_free(hbnn_plan *pl) {
    free(pl->qord); free(pl->bstart); free(pl->blk); free(pl->rstart); free(pl->run);
}

/* An output row (pixel p = (b, oy, ox)) and the top-left input position of its window. */
typedef struct {
    int64_t p, b, y0, x0;
} hbnn_row;

/* Per-thread activation panels of one chunk of output rows (see gemm_body.c pack_x). */
typedef struct {
    uint64_t *xs, *xm;   /* [nx][nm][kwt][HBNN_NR] signs / masks */
    int32_t *popx;       /* [nx][nm][HBNN_NR] mask popcounts */
    float *xsc;          /* [nx][nm][HBNN_NR] activation scales */
    uint8_t *xmsk;       /* [nx][nm] status HBNN_ST_* of plane j on micro-panel m */
    int32_t *xidx;       /* [nx][nm][HBNN_NR][kwt] present (nonzero-mask) words of masked rows */
    int32_t *xn;         /* [nx][nm][HBNN_NR] their number */
    int64_t *xsum;       /* [nx][nm] sum of xn over the micro-panel */
    /* Tap-compacted path (gemm_body.c tap_lists / tap_counts); nmax = micro-panels per chunk. */
    uint8_t *xtap;       /* [nx] plane j takes the tap path in this chunk */
    int32_t *trow;       /* [nx][taps][12 nmax] chunk rows whose input pixel at tap t has plane j */
    int32_t *tcnt;       /* [nx][taps] their number */
    uint64_t *ts, *tm;   /* [nx][taps][nmax][cw][HBNN_NR] those rows' tap words, 12 per micro-panel */
    int32_t *pacc, *tacc;/* [nw][nx][12 nmax][HBNN_LANES] P / T of a weight panel summed over taps */
    /* Pixel planes (every input pixel ABSENT or FULL: per-pixel bitwidths) of a conv take the
     * tap path without packing their micro-panels (tap_body.c pix_lists). */
    const uint8_t *ps;   /* [nx][B*H*W] pixel states (prep_body.c pixel_states) or NULL */
    const uint8_t *pixp; /* [nx] plane j is a pixel plane */
    uint8_t *xpix;       /* [nx] plane j is a pixel plane on the tap path in this chunk */
    float *stg;          /* [chunk rows][16 nq] y of the chunk in panel order, or NULL (gemm_body.c) */
    int64_t nm, r0, r1;  /* micro-panels in the chunk, its rows rows[r0..r1) */
    int64_t nmax;        /* micro-panels the buffers hold */
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

/* Grow-only per-thread scratch: slot k of the calling thread holds its largest request so far
 * (64-byte aligned, kept for the thread's lifetime).  The GEMM's row list and per-thread
 * panels come from here, so repeated calls neither call malloc nor touch fresh pages (a
 * freed multi-MB block goes back to the OS and costs a page fault per 4 KB when reused).
 * Contents are undefined on return; NULL if the allocation fails. */
enum { HBNN_SCR_XS, HBNN_SCR_XM, HBNN_SCR_XIDX, HBNN_SCR_POPX, HBNN_SCR_XN, HBNN_SCR_XSC,
       HBNN_SCR_XSUM, HBNN_SCR_XMSK, HBNN_SCR_XPIX, HBNN_SCR_STG, HBNN_SCR_XTAP, HBNN_SCR_TROW, HBNN_SCR_TCNT,
       HBNN_SCR_TS, HBNN_SCR_TM, HBNN_SCR_PACC, HBNN_SCR_TACC, HBNN_SCR_SLOTS };
static __thread struct { void *p; size_t n; } hbnn_scr[HBNN_SCR_SLOTS];

static void *hbnn_scratch(int slot, size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    if (n == 0) n = 64;
    if (hbnn_scr[slot].n < n) {
        free(hbnn_scr[slot].p);
        hbnn_scr[slot].p = hbnn_alloc(n);
        hbnn_scr[slot].n = hbnn_scr[slot].p ? n : 0;
    }
    return hbnn_scr[slot].p;
}

/* Per-thread cache of the GEMM's row lists (prep_body.c row_order): the list depends only on
 * the conv geometry, and a network calls the same few geometries over and over (ResNet-20:
 * four), so the last HBNN_ROW_SLOTS lists are kept, each in its own grow-only buffer, and
 * the least recently used one is rebuilt on a miss.  hbnn_rows returns the slot's buffer
 * for R rows and sets *hit (the list and *n_int are valid) or clears it (the caller builds
 * the list and calls hbnn_rows_built); NULL if the allocation fails. */
enum { HBNN_ROW_SLOTS = 4, HBNN_ROW_KEY = 13 };
static __thread struct {
    int64_t key[HBNN_ROW_KEY], n_int;
    uint64_t used;
    void *p;
    size_t n;
} hbnn_rowc[HBNN_ROW_SLOTS];
static __thread uint64_t hbnn_row_clock;

static void hbnn_row_key(const hbnn_gemm_args *a, int64_t *k) {
    const int64_t v[HBNN_ROW_KEY] = {a->B, a->H, a->W, a->kh, a->kw, a->sh, a->sw, a->ph, a->pw, a->dh, a->dw,
                                     a->oh, a->ow};
    memcpy(k, v, sizeof(v));
}

/* Drops slot's list (a call that reordered it by its activation states, x_sort). */
static void hbnn_rows_forget(int slot) {
    memset(hbnn_rowc[slot].key, 0xff, sizeof(hbnn_rowc[slot].key));
}

static hbnn_row *hbnn_rows(const hbnn_gemm_args *a, int64_t R, int64_t *n_int, int *slot, int *hit) {
    int64_t key[HBNN_ROW_KEY];
    size_t n = ((size_t)R * sizeof(hbnn_row) + 63) / 64 * 64;
    int s, lru = 0;
    hbnn_row_key(a, key);
    for (s = 0; s < HBNN_ROW_SLOTS; s++) {
        if (hbnn_rowc[s].p && !memcmp(hbnn_rowc[s].key, key, sizeof(key))) {
            hbnn_rowc[s].used = ++hbnn_row_clock;
            *n_int = hbnn_rowc[s].n_int;
            *slot = s;
            *hit = 1;
            return (hbnn_row *)hbnn_rowc[s].p;
        }
        if (hbnn_rowc[s].used < hbnn_rowc[lru].used) lru = s;
    }
    if (hbnn_rowc[lru].n < n) {
        free(hbnn_rowc[lru].p);
        hbnn_rowc[lru].p = hbnn_alloc(n ? n : 64);
        hbnn_rowc[lru].n = hbnn_rowc[lru].p ? n : 0;
    }
    hbnn_rows_forget(lru); /* invalid until hbnn_rows_built */
    hbnn_rowc[lru].used = ++hbnn_row_clock;
    *slot = lru;
    *hit = 0;
    return (hbnn_row *)hbnn_rowc[lru].p;
}

static void hbnn_rows_built(const hbnn_gemm_args *a, int slot, int64_t n_int) {
    hbnn_row_key(a, hbnn_rowc[slot].key);
    hbnn_rowc[slot].n_int = n_int;
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

/* AVX2 left-pack table for the selection gather: lane indices of the set bits of m, first. */
static uint8_t hbnn_compress_lut[256][8];
static int hbnn_compress_lut_ready;

static void hbnn_compress_lut_init(void) {
    int m, i, pos;
    if (__atomic_load_n(&hbnn_compress_lut_ready, __ATOMIC_ACQUIRE)) return;
    for (m = 0; m < 256; m++) {
        for (i = 0, pos = 0; i < 8; i++) {
            if (m >> i & 1) hbnn_compress_lut[m][pos++] = (uint8_t)i;
        }
        for (; pos < 8; pos++) hbnn_compress_lut[m][pos] = 0;
    }
    __atomic_store_n(&hbnn_compress_lut_ready, 1, __ATOMIC_RELEASE);
}

/* One branch-free Lomuto pass over a[0..n): moves the entries with (strict ? a < p : a <= p)
 * to the front, keeping the order of neither side; returns how many there are. */
static int64_t hbnn_part(float *a, int64_t n, float p, int strict) {
    int64_t i, s = 0;
    if (strict) {
        for (i = 0; i < n; i++) {
            const float t = a[i];
            const int64_t lt = t < p;
            a[i] = a[s];
            a[s] = t;
            s += lt;
        }
    } else {
        for (i = 0; i < n; i++) {
            const float t = a[i];
            const int64_t le = t <= p;
            a[i] = a[s];
            a[s] = t;
            s += le;
        }
    }
    return s;
}

/* The k-th smallest (0-based) of a[0..n), reordering a so that a[0..k) <= a[k] <= a[k+1..n).
 * Quickselect with a three-way split (heavy ties cost one extra pass, not quadratic time)
 * around the median of three pseudo-random entries: expected linear time on any input. */
static float hbnn_kth(float *a, int64_t n, int64_t k) {
    uint64_t state = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    while (n > 1) {
        float c[3], p;
        int64_t lt, le, r;
        for (r = 0; r < 3; r++) {
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            c[r] = a[(int64_t)((state >> 33) % (uint64_t)n)];
        }
        p = c[0] < c[1] ? (c[1] < c[2] ? c[1] : (c[0] < c[2] ? c[2] : c[0]))
                        : (c[0] < c[2] ? c[0] : (c[1] < c[2] ? c[2] : c[1]));
        lt = hbnn_part(a, n, p, 1);
        if (k < lt) {
            n = lt;
            continue;
        }
        le = lt + hbnn_part(a + lt, n - lt, p, 0);
        if (k < le) return p; /* a[lt..le) == p */
        a += le;
        n -= le;
        k -= le;
    }
    return a[0];
}

/* vals[j] = the ranks[j]-th smallest (0-based) of a[0..n) for K <= 2 * HBNN_SEL_MAXCUTS
 * ranks in any order, reordering a: the ranks are visited in ascending order, each
 * selected in the part of a above the previous one. */
static void hbnn_kth_many(float *a, int64_t n, const int64_t *ranks, int64_t K, float *vals) {
    int64_t order[2 * HBNN_SEL_MAXCUTS], i, j, done = -1; /* a[0..done] = the done+1 smallest */
    float last = 0.0f;
    for (i = 0; i < K; i++) { /* insertion sort of positions by rank */
        for (j = i; j > 0 && ranks[order[j - 1]] > ranks[i]; j--) order[j] = order[j - 1];
        order[j] = i;
    }
    for (i = 0; i < K; i++) {
        const int64_t r = ranks[order[i]];
        if (r != done) {
            last = hbnn_kth(a + done + 1, n - done - 1, r - done - 1);
            done = r;
        }
        vals[order[i]] = last;
    }
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

static int hbnn_geometry_ok(const hbnn_gemm_args *a) {
    if (a->nw < 1 || a->nx < 1 || a->O < 1 || a->cw < 1 || a->kh < 1 || a->kw < 1) return 0;
    if (a->sh < 1 || a->sw < 1 || a->dh < 1 || a->dw < 1 || a->ph < 0 || a->pw < 0) return 0;
    if (a->dense && (a->cw != 1 || a->C > 64)) return 0; /* dense taps: one word per pixel */
    return 1;
}

/* Prepare the weight of a (the w_* fields, O, C, cw, kh, kw, nw, w_scale_per_row,
 * nthreads) into the caller-allocated p_* buffers; sets p_permuted.
 * Returns 0, -1 (variant unsupported), -2 (out of memory), -3 (bad arguments). */
int hbnn_prepare_weight(int variant, hbnn_gemm_args *a) {
    if (variant < 0) variant = hbnn_best_variant();
    if (!hbnn_variant_supported(variant)) return -1;
    if (a->nw < 1 || a->nw > 8 || a->O < 1 || a->cw < 1 || a->kh < 1 || a->kw < 1) return -3;
    if (!a->p_ws || !a->p_popw || !a->p_wsc || !a->p_perm || !a->p_wst || !a->p_wn) return -3;
    switch (variant) {
#ifdef HBNN_X86
    case HBNN_V_AVX512: return hbnn_prepare_w_avx512(a);
    case HBNN_V_AVX2: return hbnn_prepare_w_avx2(a);
#endif
    default: return hbnn_prepare_w_portable(a);
    }
}

/* Bit-serial GEMM / conv.  variant < 0 picks the best supported one.
 * Returns 0, or -1 (variant unsupported), -2 (out of memory), -3 (bad arguments). */
int hbnn_gemm(int variant, const hbnn_gemm_args *a) {
    if (variant < 0) variant = hbnn_best_variant();
    if (!hbnn_variant_supported(variant)) return -1;
    if (!hbnn_geometry_ok(a) || a->nx > 8 || !a->p_ws || !a->p_wst || !a->p_wsc || !a->p_perm) return -3;
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

/* ---- Algorithm 1 bit-map selection (see select_body.c); mode 0/1/2 = middle-out,
 * bottom-up, top-down keys. ---- */

#define HBNN_SEL_DISPATCH(VID, CALL)                          \
    switch (VID) {                                            \
    HBNN_SEL_X86_CASES(CALL)                                  \
    case HBNN_V_PORTABLE: CALL(portable); break;              \
    default: return -1;                                       \
    }
#ifdef HBNN_X86
#define HBNN_SEL_X86_CASES(CALL)             \
    case HBNN_V_AVX512: CALL(avx512); break; \
    case HBNN_V_AVX2: CALL(avx2); break;
#else
#define HBNN_SEL_X86_CASES(CALL)
#endif

/* Exact Algorithm 1 map of the keys of x[0..n) for J ascending cuts 0 < cuts[j] < n:
 * out[i] = top - sum_j step[j] * [i is among the first cuts[j] of the stable ascending
 * key order], thr[j] = the cuts[j]-th smallest key.  Brackets are the order statistics
 * lo_r[j] <= hi_r[j] (0-based) of the keys at the sorted sample positions idx[0..S), or
 * of all keys when idx == NULL; cap bounds the keys kept inside one bracket.
 * Returns 0, 1 (a bracket missed its rank or overflowed cap: use the slow path),
 * -1 (bad arguments / variant), -2 (out of memory). */
int hbnn_select_exact(int variant, const float *x, int64_t n, int mode, float mu, int64_t J,
                      const int64_t *cuts, const int64_t *idx, int64_t S, const int64_t *lo_r,
                      const int64_t *hi_r, int64_t cap, const int8_t *step, int8_t top, int8_t *out,
                      float *thr) {
    const int64_t m = idx ? S : n;
    int64_t j;
    int rc = -1;
    if (n < 1 || J < 1 || J > HBNN_SEL_MAXCUTS || mode < 0 || mode > 2 || cap < 0 || m < 1) return -1;
    for (j = 0; j < J; j++) {
        if (cuts[j] < 1 || cuts[j] >= n || (j && cuts[j] < cuts[j - 1])) return -1;
        if (lo_r[j] < 0 || lo_r[j] > hi_r[j] || hi_r[j] >= m) return -1;
    }
    hbnn_compress_lut_init();
#define HBNN_SEL_CALL(S_) rc = sel_exact_##S_(x, n, mode, mu, J, cuts, idx, S, lo_r, hi_r, cap, step, top, out, thr)
    HBNN_SEL_DISPATCH(hbnn_pick(variant), HBNN_SEL_CALL)
#undef HBNN_SEL_CALL
    return rc;
}

/* Sampled selection: thr[j] = the ranks[j]-th smallest key (0-based, any order) of
 * the sample at sorted positions idx[0..S) (all of x when idx == NULL); out[i] = top -
 * sum_j step[j] * [key_i <= thr[j]].  Returns 0, -1 (bad arguments), -2 (out of memory). */
int hbnn_select_sampled(int variant, const float *x, int64_t n, int mode, float mu, int64_t J,
                        const int64_t *idx, int64_t S, const int64_t *ranks, const int8_t *step, int8_t top,
                        int8_t *out, float *thr) {
    const int64_t m = idx ? S : n;
    int64_t j;
    int rc = -1;
    if (n < 1 || J < 1 || J > HBNN_SEL_MAXCUTS || mode < 0 || mode > 2 || m < 1) return -1;
    for (j = 0; j < J; j++) {
        if (ranks[j] < 0 || ranks[j] >= m) return -1;
    }
#define HBNN_SEL_CALL(S_) rc = sel_sampled_##S_(x, n, mode, mu, J, idx, S, ranks, step, top, out, thr)
    HBNN_SEL_DISPATCH(hbnn_pick(variant), HBNN_SEL_CALL)
#undef HBNN_SEL_CALL
    return rc;
}

/* mean |x[0..n)| accumulated in float64 in a fixed order (identical in every variant). */
int hbnn_select_mean_abs(int variant, const float *x, int64_t n, double *out) {
    if (n < 0) return -1;
#define HBNN_SEL_CALL(S) *out = sel_mean_abs_##S(x, n)
    HBNN_SEL_DISPATCH(hbnn_pick(variant), HBNN_SEL_CALL)
#undef HBNN_SEL_CALL
    return 0;
}

/* out[i] = top - sum_j step[j] * [key_i <= t[j]] (J <= 7 thresholds).  Returns 0 or -1. */
int hbnn_select_map(int variant, const float *x, int64_t n, int mode, float mu, int64_t J,
                    const float *t, const int8_t *step, int8_t top, int8_t *out) {
    int64_t p[HBNN_SEL_MAXCUTS], j;
    if (n < 0 || J < 0 || J > HBNN_SEL_MAXCUTS || mode < 0 || mode > 2) return -1;
    for (j = 0; j < J; j++) p[j] = n; /* ties at t_j are "first" everywhere: key <= t_j */
#define HBNN_SEL_CALL(S) sel_map_##S(x, n, mode, mu, J, t, p, step, top, out)
    HBNN_SEL_DISPATCH(hbnn_pick(variant), HBNN_SEL_CALL)
#undef HBNN_SEL_CALL
    return 0;
}
