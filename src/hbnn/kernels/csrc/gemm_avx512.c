/* AVX-512 VPOPCNTDQ variant: a 16-lane weight panel is two zmm of 8 words; each of up to
 * 12 activation rows is broadcast and combined with vpxorq / vpternlogq, counted with
 * vpopcntq and summed in 64-bit lanes (2 x 12 accumulators, no horizontal reductions).
 * Masked x masked pairs need two popcounts, so they run 6 rows at a time.
 * Included by hbnn_kernels.c; see gemm_body.c for the micro-kernel contract. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,popcnt")
#endif

#define HBNN_SUFFIX avx512
#define HBNN_POP(v) ((int64_t)__builtin_popcountll(v))

/* vpternlogq truth table of (a ^ b) & c. */
#define HBNN_XOR_AND 0x28

/* Row r's 16 counts (int64 lanes a0[r], a1[r]) as int32: stored to P + 16 r, or with rows
 * (the tap path) added to P + 16 rows[r]. */
static inline __attribute__((always_inline)) void
hbnn_store_rows512(const __m512i *a0, const __m512i *a1, int32_t *P, const int32_t *rows, const int NR) {
#pragma GCC unroll 12
    for (int r = 0; r < NR; r++) {
        /* one 64-byte store, so the epilogue's 64-byte load is store-forwarded */
        const __m512i lo = _mm512_castsi256_si512(_mm512_cvtepi64_epi32(a0[r]));
        const __m512i v = _mm512_inserti64x4(lo, _mm512_cvtepi64_epi32(a1[r]), 1);
        if (rows) {
            int32_t *d = P + rows[r] * HBNN_LANES;
            _mm512_storeu_si512(d, _mm512_add_epi32(_mm512_loadu_si512(d), v));
        } else {
            _mm512_storeu_si512(P + r * HBNN_LANES, v);
        }
    }
}

/* Modes FF (0), FM (1), MF (2) with NR rows; the compiler unrolls r and keeps a0/a1 in
 * registers once NR and MODE are constants. */
static inline __attribute__((always_inline)) void
hbnn_uk512_one(const int MODE, const uint64_t *ws, const uint64_t *wm, const uint64_t *xs,
               const uint64_t *xm, int64_t kwt, int32_t *P, const int32_t *rows, const int NR) {
    __m512i a0[12], a1[12];
#pragma GCC unroll 12
    for (int r = 0; r < NR; r++) a0[r] = a1[r] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kwt; k++) {
        const __m512i w0 = _mm512_load_si512(ws + k * HBNN_LANES);
        const __m512i w1 = _mm512_load_si512(ws + k * HBNN_LANES + 8);
        __m512i m0 = w0, m1 = w1;
        if (MODE == 2) {
            m0 = _mm512_load_si512(wm + k * HBNN_LANES);
            m1 = _mm512_load_si512(wm + k * HBNN_LANES + 8);
        }
#pragma GCC unroll 12
        for (int r = 0; r < NR; r++) {
            const __m512i xb = _mm512_set1_epi64((long long)xs[k * HBNN_NR + r]);
            __m512i d0, d1;
            if (MODE == 0) {
                d0 = _mm512_xor_si512(w0, xb);
                d1 = _mm512_xor_si512(w1, xb);
            } else if (MODE == 1) {
                const __m512i xmb = _mm512_set1_epi64((long long)xm[k * HBNN_NR + r]);
                d0 = _mm512_ternarylogic_epi64(w0, xb, xmb, HBNN_XOR_AND);
                d1 = _mm512_ternarylogic_epi64(w1, xb, xmb, HBNN_XOR_AND);
            } else {
                d0 = _mm512_ternarylogic_epi64(w0, xb, m0, HBNN_XOR_AND);
                d1 = _mm512_ternarylogic_epi64(w1, xb, m1, HBNN_XOR_AND);
            }
            a0[r] = _mm512_add_epi64(a0[r], _mm512_popcnt_epi64(d0));
            a1[r] = _mm512_add_epi64(a1[r], _mm512_popcnt_epi64(d1));
        }
    }
    hbnn_store_rows512(a0, a1, P, rows, NR);
}

/* Mode MM with NR <= 6 rows: P counts (ws ^ xs) & t, T counts t = wm & xm. */
static inline __attribute__((always_inline)) void
hbnn_uk512_mm(const uint64_t *ws, const uint64_t *wm, const uint64_t *xs, const uint64_t *xm,
              int64_t kwt, int32_t *P, int32_t *T, const int32_t *rows, const int NR) {
    __m512i a0[6], a1[6], t0[6], t1[6];
#pragma GCC unroll 6
    for (int r = 0; r < NR; r++) a0[r] = a1[r] = t0[r] = t1[r] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kwt; k++) {
        const __m512i w0 = _mm512_load_si512(ws + k * HBNN_LANES);
        const __m512i w1 = _mm512_load_si512(ws + k * HBNN_LANES + 8);
        const __m512i m0 = _mm512_load_si512(wm + k * HBNN_LANES);
        const __m512i m1 = _mm512_load_si512(wm + k * HBNN_LANES + 8);
#pragma GCC unroll 6
        for (int r = 0; r < NR; r++) {
            const __m512i xb = _mm512_set1_epi64((long long)xs[k * HBNN_NR + r]);
            const __m512i xmb = _mm512_set1_epi64((long long)xm[k * HBNN_NR + r]);
            const __m512i e0 = _mm512_and_si512(m0, xmb), e1 = _mm512_and_si512(m1, xmb);
            a0[r] = _mm512_add_epi64(a0[r], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(w0, xb, e0, HBNN_XOR_AND)));
            a1[r] = _mm512_add_epi64(a1[r], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(w1, xb, e1, HBNN_XOR_AND)));
            t0[r] = _mm512_add_epi64(t0[r], _mm512_popcnt_epi64(e0));
            t1[r] = _mm512_add_epi64(t1[r], _mm512_popcnt_epi64(e1));
        }
    }
    hbnn_store_rows512(a0, a1, P, rows, NR);
    hbnn_store_rows512(t0, t1, T, rows, NR);
}

#define HBNN_CASES6(CALL) \
    case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; \
    case 4: CALL(4); break; case 5: CALL(5); break; case 6: CALL(6); break;
#define HBNN_CASES12(CALL) HBNN_CASES6(CALL) \
    case 7: CALL(7); break; case 8: CALL(8); break; case 9: CALL(9); break; \
    case 10: CALL(10); break; case 11: CALL(11); break; case 12: CALL(12); break;

static void hbnn_uk512_ff(const uint64_t *ws, const uint64_t *xs, int64_t kwt, int nr, int32_t *P, const int32_t *rows) {
#define HBNN_CALL(N) hbnn_uk512_one(0, ws, NULL, xs, NULL, kwt, P, rows, N)
    switch (nr) { HBNN_CASES12(HBNN_CALL) }
#undef HBNN_CALL
}

static void hbnn_uk512_fm(const uint64_t *ws, const uint64_t *xs, const uint64_t *xm,
                          int64_t kwt, int nr, int32_t *P, const int32_t *rows) {
#define HBNN_CALL(N) hbnn_uk512_one(1, ws, NULL, xs, xm, kwt, P, rows, N)
    switch (nr) { HBNN_CASES12(HBNN_CALL) }
#undef HBNN_CALL
}

static void hbnn_uk512_mf(const uint64_t *ws, const uint64_t *wm, const uint64_t *xs,
                          int64_t kwt, int nr, int32_t *P, const int32_t *rows) {
#define HBNN_CALL(N) hbnn_uk512_one(2, ws, wm, xs, NULL, kwt, P, rows, N)
    switch (nr) { HBNN_CASES12(HBNN_CALL) }
#undef HBNN_CALL
}

static void hbnn_uk512_mm6(const uint64_t *ws, const uint64_t *wm, const uint64_t *xs,
                           const uint64_t *xm, int64_t kwt, int nr, int32_t *P, int32_t *T, const int32_t *rows) {
#define HBNN_CALL(N) hbnn_uk512_mm(ws, wm, xs, xm, kwt, P, T, rows, N)
    switch (nr) { HBNN_CASES6(HBNN_CALL) }
#undef HBNN_CALL
}

/* The micro-kernel (rows NULL: P / T rows stored) and its tap form (ukt: row r's counts added
 * to P / T + 16 rows[r] instead; gemm_body.c / tap_body.c contracts). */
static inline void hbnn_uk512(int mode, const uint64_t *ws, const uint64_t *wm, const uint64_t *xs,
                              const uint64_t *xm, int64_t kwt, int nr, int32_t *P, int32_t *T, const int32_t *rows) {
    switch (mode) {
    case 0: hbnn_uk512_ff(ws, xs, kwt, nr, P, rows); break;
    case 1: hbnn_uk512_fm(ws, xs, xm, kwt, nr, P, rows); break;
    case 2: hbnn_uk512_mf(ws, wm, xs, kwt, nr, P, rows); break;
    default:
        hbnn_uk512_mm6(ws, wm, xs, xm, kwt, nr < 6 ? nr : 6, P, T, rows);
        if (nr > 6)
            hbnn_uk512_mm6(ws, wm, xs + 6, xm + 6, kwt, nr - 6, rows ? P : P + 6 * HBNN_LANES,
                           rows ? T : T + 6 * HBNN_LANES, rows ? rows + 6 : NULL);
    }
}

static void uk_avx512(int mode, const uint64_t *ws, const uint64_t *wm, const uint64_t *xs,
                      const uint64_t *xm, int64_t kwt, int nr, int32_t *P, int32_t *T) {
    hbnn_uk512(mode, ws, wm, xs, xm, kwt, nr, P, T, NULL);
}

static void ukt_avx512(int mode, const uint64_t *ws, const uint64_t *wm, const uint64_t *xs,
                       const uint64_t *xm, int64_t kwt, int nr, const int32_t *rows, int32_t *pa, int32_t *ta) {
    hbnn_uk512(mode, ws, wm, xs, xm, kwt, nr, pa, ta, rows);
}
#define HBNN_HAVE_UKT 1

/* Word-list kernel, activation side (gemm_body.c uksx contract): the row's word and mask are
 * broadcast against the two zmm of the 16-lane weight panel; one 64-byte store per output. */
static inline __attribute__((always_inline)) void
hbnn_uksx512(const int MM, int64_t n, const int32_t *idx, const uint64_t *ss, const uint64_t *sm, int64_t sst,
             const uint64_t *ws, const uint64_t *wm, int32_t *P, int32_t *T) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, t0 = a0, t1 = a0;
    int64_t t;
    for (t = 0; t < n; t++) {
        const int64_t k = idx[t];
        const __m512i sb = _mm512_set1_epi64((long long)ss[k * sst]);
        const __m512i mb = _mm512_set1_epi64((long long)sm[k * sst]);
        const __m512i d0 = _mm512_load_si512(ws + k * HBNN_LANES), d1 = _mm512_load_si512(ws + k * HBNN_LANES + 8);
        if (MM) {
            const __m512i e0 = _mm512_and_si512(mb, _mm512_load_si512(wm + k * HBNN_LANES));
            const __m512i e1 = _mm512_and_si512(mb, _mm512_load_si512(wm + k * HBNN_LANES + 8));
            a0 = _mm512_add_epi64(a0, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(d0, sb, e0, HBNN_XOR_AND)));
            a1 = _mm512_add_epi64(a1, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(d1, sb, e1, HBNN_XOR_AND)));
            t0 = _mm512_add_epi64(t0, _mm512_popcnt_epi64(e0));
            t1 = _mm512_add_epi64(t1, _mm512_popcnt_epi64(e1));
        } else {
            a0 = _mm512_add_epi64(a0, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(d0, sb, mb, HBNN_XOR_AND)));
            a1 = _mm512_add_epi64(a1, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(d1, sb, mb, HBNN_XOR_AND)));
        }
    }
    hbnn_store_rows512(&a0, &a1, P, NULL, 1);
    if (MM) hbnn_store_rows512(&t0, &t1, T, NULL, 1);
}

static void uksx_avx512(int64_t n, const int32_t *idx, const uint64_t *ss, const uint64_t *sm, int64_t sst,
                        const uint64_t *ws, const uint64_t *wm, int32_t *P, int32_t *T) {
    if (wm) hbnn_uksx512(1, n, idx, ss, sm, sst, ws, wm, P, T);
    else hbnn_uksx512(0, n, idx, ss, sm, sst, ws, wm, P, T);
}

/* Word-list kernel, weight side (gemm_body.c uksw contract): the lane's word and mask are
 * broadcast once per present word against G micro-panels of 12 rows (zmm + 4-lane load). */
static inline __attribute__((always_inline)) void
hbnn_uksw512(const int G, const int MM, int64_t n, const int32_t *idx, const uint64_t *ss, const uint64_t *sm,
             const uint64_t *const *xs, const uint64_t *const *xm, int32_t *const *P, int32_t *const *T) {
    __m512i a0[4], a1[4], t0[4], t1[4];
    int64_t t, acc[16];
    int g, r;
#pragma GCC unroll 4
    for (g = 0; g < G; g++) a0[g] = a1[g] = t0[g] = t1[g] = _mm512_setzero_si512();
    for (t = 0; t < n; t++) {
        const int64_t k = idx[t];
        const __m512i sb = _mm512_set1_epi64((long long)ss[k * HBNN_LANES]);
        const __m512i mb = _mm512_set1_epi64((long long)sm[k * HBNN_LANES]);
#pragma GCC unroll 4
        for (g = 0; g < G; g++) {
            const uint64_t *d = xs[g] + k * HBNN_NR;
            const __m512i d0 = _mm512_loadu_si512(d), d1 = _mm512_maskz_loadu_epi64(0x0F, d + 8);
            if (MM) {
                const uint64_t *e = xm[g] + k * HBNN_NR;
                const __m512i e0 = _mm512_and_si512(mb, _mm512_loadu_si512(e));
                const __m512i e1 = _mm512_and_si512(mb, _mm512_maskz_loadu_epi64(0x0F, e + 8));
                a0[g] = _mm512_add_epi64(a0[g], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(d0, sb, e0, HBNN_XOR_AND)));
                a1[g] = _mm512_add_epi64(a1[g], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(d1, sb, e1, HBNN_XOR_AND)));
                t0[g] = _mm512_add_epi64(t0[g], _mm512_popcnt_epi64(e0));
                t1[g] = _mm512_add_epi64(t1[g], _mm512_popcnt_epi64(e1));
            } else {
                a0[g] = _mm512_add_epi64(a0[g], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(d0, sb, mb, HBNN_XOR_AND)));
                a1[g] = _mm512_add_epi64(a1[g], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(d1, sb, mb, HBNN_XOR_AND)));
            }
        }
    }
    for (g = 0; g < G; g++) {
        _mm512_storeu_si512(acc, a0[g]);
        _mm512_storeu_si512(acc + 8, a1[g]);
        for (r = 0; r < HBNN_NR; r++) P[g][r * HBNN_LANES] = (int32_t)acc[r];
        if (!MM) continue;
        _mm512_storeu_si512(acc, t0[g]);
        _mm512_storeu_si512(acc + 8, t1[g]);
        for (r = 0; r < HBNN_NR; r++) T[g][r * HBNN_LANES] = (int32_t)acc[r];
    }
}

static void uksw_avx512(int G, int mm, int64_t n, const int32_t *idx, const uint64_t *ss, const uint64_t *sm,
                        const uint64_t *const *xs, const uint64_t *const *xm, int32_t *const *P, int32_t *const *T) {
#define HBNN_CALL(N) (mm ? hbnn_uksw512(N, 1, n, idx, ss, sm, xs, xm, P, T) : hbnn_uksw512(N, 0, n, idx, ss, sm, xs, xm, P, T))
    switch (G) {
    case 1: HBNN_CALL(1); break;
    case 2: HBNN_CALL(2); break;
    case 3: HBNN_CALL(3); break;
    default: HBNN_CALL(4); break;
    }
#undef HBNN_CALL
}
#define HBNN_HAVE_UKS 1

/* The epilogue of hbnn_gemm_args on the 16 values v of output columns base.. (lanes of k):
 * + bias, + residual row res (NULL: none), then the clamp; max(lo, v) / min(hi, v) return v
 * when v is NaN, as the scalar v < lo ? lo : v / v > hi ? hi : v do. */
static inline __m512 epi_avx512(const hbnn_gemm_args *epi, __m512 v, const float *res, int64_t base, __mmask16 k) {
    if (epi->e_bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, epi->e_bias + base));
    if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, res + base));
    if (epi->e_clamp) {
        v = _mm512_max_ps(_mm512_set1_ps(epi->e_lo), v);
        v = _mm512_min_ps(_mm512_set1_ps(epi->e_hi), v);
    }
    return v;
}

/* One tile row into an output row by the panel's blocks (gemm_body.c put_row contract): per
 * block one vpermd placing the lanes and one masked 64-byte store. */
static inline void put_row_avx512(void *dst, const void *src, const hbnn_blk *b, int nb, const hbnn_gemm_args *epi,
                                  const float *res) {
    const __m512i v = _mm512_loadu_si512(src);
    int e;
    for (e = 0; e < nb; e++) {
        int32_t *d = (int32_t *)dst + b[e].base;
        __m512i p = _mm512_permutexvar_epi32(_mm512_loadu_si512(b[e].idx), v);
        if (epi) p = _mm512_castps_si512(epi_avx512(epi, _mm512_castsi512_ps(p), res, b[e].base, (__mmask16)b[e].mask));
        if (b[e].mask == 0xFFFFu) _mm512_storeu_si512(d, p);
        else _mm512_mask_storeu_epi32(d, (__mmask16)b[e].mask, p);
    }
}
#define HBNN_HAVE_PUT 1

/* The chunk's staged rows (panel order, ch->stg, 16 floats of slack at its end) into y: output
 * block n of a row merges its runs (hbnn_plan) with one load + vexpandps each, then one
 * (tail: masked) 64-byte store. */
static void unperm_avx512(const hbnn_gemm_args *a, const hbnn_row *rows, const hbnn_chunk *ch, const hbnn_plan *pl,
                          int64_t Op) {
    const int64_t nn = (a->O + HBNN_LANES - 1) / HBNN_LANES;
    const __mmask16 tail = (__mmask16)(a->O % HBNN_LANES ? (1u << (a->O % HBNN_LANES)) - 1u : 0xFFFFu);
    const int epi = a->e_bias || a->e_res || a->e_clamp;
    int64_t rr, n;
    int32_t k;
    for (rr = 0; rr < ch->r1 - ch->r0; rr++) {
        const float *src = ch->stg + rr * Op;
        const int64_t p = rows[ch->r0 + rr].p;
        float *dst = a->y + p * a->O;
        for (n = 0; n < nn; n++) {
            __m512 v = _mm512_setzero_ps();
            for (k = pl->rstart[n]; k < pl->rstart[n + 1]; k++)
                v = _mm512_mask_expand_ps(v, (__mmask16)pl->run[k].mask, _mm512_loadu_ps(src + pl->run[k].start));
            if (epi) v = epi_avx512(a, v, a->e_res ? a->e_res + p * a->O : NULL, n * HBNN_LANES, n < nn - 1 ? 0xFFFFu : tail);
            if (n < nn - 1) _mm512_storeu_ps(dst + n * HBNN_LANES, v);
            else _mm512_mask_storeu_ps(dst + n * HBNN_LANES, tail, v);
        }
    }
}
#define HBNN_HAVE_UNPERM 1
#define HBNN_UNPERM 1

#undef HBNN_CASES6
#undef HBNN_CASES12
#undef HBNN_XOR_AND

#include "prep_body.c"
#include "tap_body.c"
#include "gemm_body.c"
#undef HBNN_HAVE_UKS
#undef HBNN_HAVE_PUT
#undef HBNN_HAVE_UKT
#undef HBNN_HAVE_UNPERM
/* One row of up to 64 channels (S = 1), four 16-float vectors: the scalar residual64 as
 * masked arithmetic (the same float32 e - mu / e + mu per active entry, so the same bits). */
static inline void row64_avx512(const float *x, const int8_t *bitmap, int64_t base, int64_t k1, int n,
                                const float *mu, uint64_t *sw, uint64_t *mw) {
    __m512 e[4];
    __m128i lv[4];
    __mmask16 valid[4];
    int q, p;
    for (q = 0; q < 4; q++) {
        const int64_t rem = k1 - 16 * q;
        valid[q] = (__mmask16)(rem >= 16 ? 0xFFFFu : rem > 0 ? (1u << rem) - 1u : 0u);
        e[q] = _mm512_maskz_loadu_ps(valid[q], x + base + 16 * q);
        if (bitmap) lv[q] = _mm_maskz_loadu_epi8(valid[q], bitmap + base + 16 * q);
    }
    for (p = 0; p < n; p++) {
        const __m512 m = _mm512_set1_ps(mu[p]);
        const __m128i pp = _mm_set1_epi8((char)p);
        uint64_t s = 0, a = 0;
        for (q = 0; q < 4; q++) {
            /* plane 0 is active on every entry; plane p > 0 where the level exceeds p */
            const __mmask16 on = p == 0 || !bitmap ? valid[q] : (__mmask16)(valid[q] & _mm_cmpgt_epi8_mask(lv[q], pp));
            const __mmask16 pos = _mm512_cmp_ps_mask(e[q], _mm512_setzero_ps(), _CMP_GT_OQ);
            const __mmask16 up = (__mmask16)(on & pos), dn = (__mmask16)(on & ~pos);
            e[q] = _mm512_mask_sub_ps(e[q], up, e[q], m);
            e[q] = _mm512_mask_add_ps(e[q], dn, e[q], m);
            s |= (uint64_t)up << (16 * q);
            a |= (uint64_t)on << (16 * q);
        }
        sw[p] = s;
        mw[p] = a;
    }
}
#define HBNN_HAVE_ROW64 1

#include "pack_body.c"
#undef HBNN_HAVE_ROW64
#define HBNN_SEL_ISA 2
#include "select_body.c"
#undef HBNN_SEL_ISA

#undef HBNN_SUFFIX
#undef HBNN_POP

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
