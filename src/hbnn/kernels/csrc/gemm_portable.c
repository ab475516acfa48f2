/* Portable C variant: no intrinsics, SWAR popcount; the reference for the SIMD variants.
 * Included by hbnn_kernels.c; see gemm_body.c for the micro-kernel contract. */
#define HBNN_SUFFIX portable
#define HBNN_POP(v) hbnn_pop_swar(v)

/* One mode's loop nest; OP(w, x, wm, xm) is the masked xor word, T is accumulated for MM. */
#define HBNN_PORTABLE_LOOP(OP, WITH_T)                                                   \
    for (k = 0; k < kwt; k++) {                                                          \
        const uint64_t *w = ws + k * HBNN_LANES;                                         \
        const uint64_t *mw = wm ? wm + k * HBNN_LANES : w;                               \
        for (r = 0; r < nr; r++) {                                                       \
            const uint64_t xv = xs[k * HBNN_NR + r], xmv = xm ? xm[k * HBNN_NR + r] : 0; \
            for (l = 0; l < HBNN_LANES; l++) {                                           \
                acc[r][l] += hbnn_pop_swar(OP(w[l], xv, mw[l], xmv));                    \
                if (WITH_T) tac[r][l] += hbnn_pop_swar(mw[l] & xmv);                     \
            }                                                                            \
        }                                                                                \
    }

#define HBNN_OP_FF(w, x, mw, mx) ((w) ^ (x))
#define HBNN_OP_FM(w, x, mw, mx) (((w) ^ (x)) & (mx))
#define HBNN_OP_MF(w, x, mw, mx) (((w) ^ (x)) & (mw))
#define HBNN_OP_MM(w, x, mw, mx) (((w) ^ (x)) & (mw) & (mx))

static void uk_portable(int mode, const uint64_t *ws, const uint64_t *wm, const uint64_t *xs,
                        const uint64_t *xm, int64_t kwt, int nr, int32_t *P, int32_t *T) {
    int64_t acc[HBNN_NR][HBNN_LANES], tac[HBNN_NR][HBNN_LANES];
    int64_t k;
    int r, l;
    memset(acc, 0, sizeof(acc));
    memset(tac, 0, sizeof(tac));
    switch (mode) {
    case 0: HBNN_PORTABLE_LOOP(HBNN_OP_FF, 0) break;
    case 1: HBNN_PORTABLE_LOOP(HBNN_OP_FM, 0) break;
    case 2: HBNN_PORTABLE_LOOP(HBNN_OP_MF, 0) break;
    default: HBNN_PORTABLE_LOOP(HBNN_OP_MM, 1) break;
    }
    for (r = 0; r < nr; r++) {
        for (l = 0; l < HBNN_LANES; l++) {
            P[r * HBNN_LANES + l] = (int32_t)acc[r][l];
            T[r * HBNN_LANES + l] = (int32_t)tac[r][l];
        }
    }
}

#include "prep_body.c"
#include "tap_body.c"
#include "gemm_body.c"
#include "pack_body.c"
#define HBNN_SEL_ISA 0
#include "select_body.c"
#undef HBNN_SEL_ISA

#undef HBNN_OP_FF
#undef HBNN_OP_FM
#undef HBNN_OP_MF
#undef HBNN_OP_MM
#undef HBNN_PORTABLE_LOOP
#undef HBNN_SUFFIX
#undef HBNN_POP
