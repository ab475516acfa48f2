/* Packing routines, compiled once per SIMD variant (included by gemm_<variant>.c after
 * gemm_body.c, with HBNN_SUFFIX defined).  Written as short fixed-length loops that the
 * compiler vectorizes; bytes are gathered into bits with a multiply (see bits64).
 *
 * Layout of the input: [B][K][S] (S = 1: rows of K contiguous entries; S = H*W: NCHW,
 * giving NHWC rows r = b*S + s).  Output rows of ceil(K/64) words, bit k%64 of word k/64.
 */
#ifndef HBNN_SUFFIX
#error "pack_body.c is included by gemm_<variant>.c"
#endif

#define HBNN_CAT2(a, b) a##_##b
#define HBNN_CAT(a, b) HBNN_CAT2(a, b)
#define FN(name) HBNN_CAT(name, HBNN_SUFFIX)
#define HBNN_TS 64 /* spatial positions per tile (S > 1) */

/* 64 bytes (each 0 or 1) -> one word, byte k -> bit k. */
static inline uint64_t FN(bits64)(const uint8_t *b) {
    uint64_t w = 0;
    int i;
    for (i = 0; i < 8; i++) {
        uint64_t v;
        memcpy(&v, b + 8 * i, 8);
        w |= ((v * 0x0102040810204080ULL) >> 56) << (8 * i);
    }
    return w;
}

/* Residual planes of 64 entries e[] with levels lvl[] (0 = padding) -> words per plane. */
static inline void FN(residual64)(float *e, const uint8_t *lvl, int64_t n, const float *mu,
                                  uint64_t *sw, uint64_t *mw) {
    uint8_t sb[64], mb[64];
    int p, k;
    for (p = 0; p < (int)n; p++) {
        const float m = mu[p];
        const uint8_t pp = (uint8_t)p;
        for (k = 0; k < 64; k++) {
            const int on = lvl[k] > pp, pos = e[k] > 0.0f;
            sb[k] = (uint8_t)(on & pos);
            mb[k] = (uint8_t)on;
            e[k] = on ? (pos ? e[k] - m : e[k] + m) : e[k];
        }
        sw[p] = FN(bits64)(sb);
        mw[p] = FN(bits64)(mb);
    }
}

/* Entries of 64 channels starting at x + base: one row (S = 1) or a 64 x ts tile of
 * spatial positions (S > 1, rows copied whole so a power-of-two S cannot thrash L1). */
static inline void FN(load_tile)(const float *x, const int8_t *bitmap, int64_t base, int64_t S,
                                 int64_t k1, int64_t ts, int n, float et[64][HBNN_TS],
                                 uint8_t lt[64][HBNN_TS]) {
    int64_t k, s;
    for (k = 0; k < 64; k++) {
        if (k >= k1) {
            memset(et[k], 0, sizeof(et[k]));
            memset(lt[k], 0, sizeof(lt[k]));
            continue;
        }
        memcpy(et[k], x + base + k * S, (size_t)ts * sizeof(float));
        for (s = ts; s < HBNN_TS; s++) et[k][s] = 0.0f; /* computed on, never stored */
        for (s = 0; s < ts; s++) {
            const int lv = bitmap ? bitmap[base + k * S + s] : n;
            lt[k][s] = (uint8_t)(lv < 1 ? 1 : lv); /* plane 0 is always active */
        }
    }
}

/* Residual planes of a 64 x HBNN_TS tile, vectorized along the spatial positions s:
 * bit k of word s of plane p. */
static inline void FN(residual_tile)(float et[64][HBNN_TS], const uint8_t lt[64][HBNN_TS], int n,
                                     const float *mu, uint64_t sw[8][HBNN_TS],
                                     uint64_t mw[8][HBNN_TS]) {
    int p, k, s;
    for (p = 0; p < n; p++) {
        const float m = mu[p];
        const uint8_t pp = (uint8_t)p;
        uint64_t *ws = sw[p], *wm = mw[p];
        for (s = 0; s < HBNN_TS; s++) ws[s] = wm[s] = 0;
        for (k = 0; k < 64; k++) {
            float *e = et[k];
            const uint8_t *l = lt[k];
            for (s = 0; s < HBNN_TS; s++) {
                const int on = l[s] > pp, pos = e[s] > 0.0f;
                ws[s] |= (uint64_t)(on & pos) << k;
                wm[s] |= (uint64_t)on << k;
                e[s] = on ? (pos ? e[s] - m : e[s] + m) : e[s];
            }
        }
    }
}

/* Entries of one contiguous row of up to 64 channels (S = 1). */
static inline void FN(load_row)(const float *x, const int8_t *bitmap, int64_t base, int64_t k1,
                                int n, float *e, uint8_t *lvl) {
    int64_t k;
    if (k1 == 64) {
        memcpy(e, x + base, 64 * sizeof(float));
    } else {
        for (k = 0; k < 64; k++) e[k] = k < k1 ? x[base + k] : 0.0f;
    }
    for (k = 0; k < 64; k++) {
        const int lv = k >= k1 ? 0 : bitmap ? bitmap[base + k] : n;
        lvl[k] = (uint8_t)(k >= k1 ? 0 : lv < 1 ? 1 : lv);
    }
}

#ifndef HBNN_HAVE_ROW64
/* One row of up to 64 channels (S = 1): residual planes -> sw[p], mw[p] (scalar loops). */
static inline void FN(row64)(const float *x, const int8_t *bitmap, int64_t base, int64_t k1, int n,
                             const float *mu, uint64_t *sw, uint64_t *mw) {
    float e[64];
    uint8_t lvl[64];
    FN(load_row)(x, bitmap, base, k1, n, e, lvl);
    FN(residual64)(e, lvl, n, mu, sw, mw);
}
#endif

/* Narrow rows (S = 1, K < 64 dividing 64): g = 64/K consecutive rows are 64 contiguous
 * entries, binarized as one 64-entry row (the same elementwise residuals at the same scales,
 * so the same bits) and cut into their g one-word rows: word of row t*g + i =
 * (W >> K i) & (2^K - 1).  Saves the per-row cost of mostly-padding words. */
static void FN(pack_narrow)(const float *x, const int8_t *bitmap, int64_t B, int64_t K, int64_t n,
                            const float *mu, uint64_t *signs, uint64_t *masks, int64_t *active, int nt) {
    const int64_t g = 64 / K, ng = (B + g - 1) / g;
    const uint64_t field = (1ULL << K) - 1;
    int64_t i;
#pragma omp parallel num_threads(nt)
    {
        int64_t cnt[8] = {0, 0, 0, 0, 0, 0, 0, 0}, t;
        uint64_t sw[8], mw[8];
#pragma omp for schedule(static) nowait
        for (t = 0; t < ng; t++) {
            const int64_t rows = hbnn_min64(g, B - t * g);
            int64_t p, r;
            FN(row64)(x, bitmap, t * 64, rows * K, (int)n, mu, sw, mw);
            for (p = 0; p < n; p++) {
                for (r = 0; r < rows; r++) {
                    signs[p * B + t * g + r] = (sw[p] >> (K * r)) & field;
                    if (masks) masks[p * B + t * g + r] = (mw[p] >> (K * r)) & field;
                }
                cnt[p] += HBNN_POP(mw[p]);
            }
        }
#pragma omp critical
        for (i = 0; i < n; i++) active[i] += cnt[i];
    }
}

static void FN(pack_residual)(const float *x, const int8_t *bitmap, int64_t B, int64_t K,
                              int64_t S, int64_t n, const float *mu, uint64_t *signs,
                              uint64_t *masks, int64_t *active, int nt) {
    const int64_t kwords = (K + 63) / 64, R = B * S, ntile = (S + HBNN_TS - 1) / HBNN_TS;
    int64_t i;
    for (i = 0; i < n; i++) active[i] = 0;
    if (S == 1 && K < 64 && 64 % K == 0) {
        FN(pack_narrow)(x, bitmap, B, K, n, mu, signs, masks, active, nt);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int64_t cnt[8] = {0, 0, 0, 0, 0, 0, 0, 0}, t;
        float et[64][HBNN_TS];
        uint8_t lt[64][HBNN_TS];
        uint64_t sw[8], mw[8], swt[8][HBNN_TS], mwt[8][HBNN_TS];
#pragma omp for schedule(guided) nowait
        for (t = 0; t < B * kwords * ntile; t++) {
            const int64_t b = t / (kwords * ntile), kw = (t / ntile) % kwords, s0 = (t % ntile) * HBNN_TS;
            const int64_t k1 = hbnn_min64(64, K - kw * 64), ts = hbnn_min64(S - s0, HBNN_TS);
            const int64_t base = (b * K + kw * 64) * S + s0;
            int64_t s, p;
            if (S == 1) {
                FN(row64)(x, bitmap, base, k1, (int)n, mu, sw, mw);
                for (p = 0; p < n; p++) {
                    signs[(p * R + b) * kwords + kw] = sw[p];
                    if (masks) masks[(p * R + b) * kwords + kw] = mw[p];
                    cnt[p] += HBNN_POP(mw[p]);
                }
                continue;
            }
            FN(load_tile)(x, bitmap, base, S, k1, ts, (int)n, et, lt);
            FN(residual_tile)(et, lt, (int)n, mu, swt, mwt);
            for (p = 0; p < n; p++) {
                for (s = 0; s < ts; s++) {
                    const int64_t row = b * S + s0 + s;
                    signs[(p * R + row) * kwords + kw] = swt[p][s];
                    if (masks) masks[(p * R + row) * kwords + kw] = mwt[p][s];
                    cnt[p] += HBNN_POP(mwt[p][s]);
                }
            }
        }
#pragma omp critical
        for (i = 0; i < n; i++) active[i] += cnt[i];
    }
}

static void FN(pack_u8)(const uint8_t *src, int64_t B, int64_t K, int64_t S, uint64_t *dst,
                        int nt) {
    const int64_t kwords = (K + 63) / 64, ntile = (S + HBNN_TS - 1) / HBNN_TS;
    int64_t t;
#pragma omp parallel for schedule(guided) num_threads(nt)
    for (t = 0; t < B * kwords * ntile; t++) {
        const int64_t b = t / (kwords * ntile), kw = (t / ntile) % kwords, s0 = (t % ntile) * HBNN_TS;
        const int64_t k1 = hbnn_min64(64, K - kw * 64), s1 = hbnn_min64(S, s0 + HBNN_TS);
        uint8_t bb[64];
        int64_t s, k;
        for (s = s0; s < s1; s++) {
            const int64_t base = (b * K + kw * 64) * S + s;
            for (k = 0; k < 64; k++) bb[k] = (uint8_t)(k < k1 && src[base + k * S] != 0);
            dst[(b * S + s) * kwords + kw] = FN(bits64)(bb);
        }
    }
}

#undef HBNN_TS
#undef FN
#undef HBNN_CAT
#undef HBNN_CAT2
