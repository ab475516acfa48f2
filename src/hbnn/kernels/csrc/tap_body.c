/* Tap-compacted path for activation planes with per-pixel structure in convolutions, compiled
 * once per SIMD variant (included by gemm_<variant>.c after its micro-kernel uk_<suffix>,
 * before gemm_body.c).  Per chunk of output rows, masked plane j and kernel tap t, the rows
 * whose input pixel at tap t has plane j are compacted into dense 12-row micro-panels of that
 * tap's cw words; the dense micro-kernel counts them and the exact int32 P / T are
 * scatter-added into per-row sums, which the GEMM's epilogue then uses like any other P / T
 * (gemm_body.c tiles).  Work follows the present (row, tap) pairs instead of every word.
 */
#ifndef HBNN_SUFFIX
#error "tap_body.c is included by gemm_<variant>.c"
#endif

#define HBNN_CAT2(a, b) a##_##b
#define HBNN_CAT(a, b) HBNN_CAT2(a, b)
#define FN(name) HBNN_CAT(name, HBNN_SUFFIX)

/* Tap path, lists: for each masked plane j and tap t, the chunk rows whose input pixel at tap
 * t has plane j (a nonzero mask word), in order; the plane takes the tap path when its cost
 * (HBNN_SP_FIX_T per compacted micro-panel and tap + the tap's words + HBNN_SP_WORD per row)
 * is below that of the micro-panels' own paths; then ts/tm hold the rows' tap words packed
 * 12 to a micro-panel (padding rows zero). */
static void FN(tap_lists)(const hbnn_gemm_args *a, hbnn_chunk *ch, int64_t kwt) {
    const int64_t taps = a->kh * a->kw, cw = a->cw, nm = ch->nm, nrow = ch->r1 - ch->r0, rp = ch->nmax * HBNN_NR;
    int64_t j, t, rr, e, m, c;
    for (j = 0; j < a->nx; j++) {
        int64_t cost_t = 0, cost_m = 0;
        ch->xtap[j] = 0;
        if (a->x_full[j]) continue;
        for (t = 0; t < taps; t++) ch->tcnt[j * taps + t] = 0;
        for (rr = 0; rr < nrow; rr++) {
            const int64_t row = (j * nm + rr / HBNN_NR) * HBNN_NR + rr % HBNN_NR;
            const int32_t *idx = ch->xidx + row * kwt;
            int64_t last = -1;
            for (e = 0; e < ch->xn[row]; e++) {
                t = idx[e] / cw;
                if (t != last) ch->trow[(j * taps + t) * rp + ch->tcnt[j * taps + t]++] = (int32_t)rr;
                last = t;
            }
        }
        for (t = 0; t < taps; t++) {
            const int64_t n = ch->tcnt[j * taps + t];
            cost_t += (n + HBNN_NR - 1) / HBNN_NR * (HBNN_SP_FIX_T + HBNN_SP_UNIT * cw) + n * HBNN_SP_WORD;
        }
        for (m = 0; m < nm; m++) {
            const int st = ch->xmsk[j * nm + m];
            cost_m += st == HBNN_ST_ABSENT ? 0 : st == HBNN_ST_SPARSE ? HBNN_SP_FIX_X + ch->xsum[j * nm + m] * HBNN_SP_WORD
                                                                       : HBNN_SP_UNIT * kwt;
        }
        if (cost_t >= cost_m) continue;
        ch->xtap[j] = 1;
        for (t = 0; t < taps; t++) {
            const int64_t n = ch->tcnt[j * taps + t], np = (n + HBNN_NR - 1) / HBNN_NR * HBNN_NR;
            uint64_t *ds = ch->ts + (j * taps + t) * ch->nmax * cw * HBNN_NR, *dm = ch->tm + (ds - ch->ts);
            for (e = 0; e < np; e++) {
                const int64_t dst0 = (e / HBNN_NR) * cw * HBNN_NR + e % HBNN_NR;
                const int64_t r = e < n ? ch->trow[(j * taps + t) * rp + e] : -1;
                const int64_t src0 = r < 0 ? 0 : ((j * nm + r / HBNN_NR) * kwt + t * cw) * HBNN_NR + r % HBNN_NR;
                for (c = 0; c < cw; c++) {
                    ds[dst0 + c * HBNN_NR] = r < 0 ? 0 : ch->xs[src0 + c * HBNN_NR];
                    dm[dst0 + c * HBNN_NR] = r < 0 ? 0 : ch->xm[src0 + c * HBNN_NR];
                }
            }
        }
    }
}

/* d[l] += s[l] for the 16 lanes: one vector add (s was written by a 64-byte store, which a
 * same-sized load forwards; scalar loads of it would stall). */
static inline void FN(add16)(int32_t *restrict d, const int32_t *restrict s) {
    typedef int32_t v16 __attribute__((vector_size(64)));
    v16 dv, sv;
    memcpy(&dv, d, sizeof(dv));
    memcpy(&sv, s, sizeof(sv));
    dv += sv;
    memcpy(d, &dv, sizeof(dv));
}

/* Tap path, counts of weight panel q: for every pair (i, j) with j on the tap path, P (and T
 * for a masked panel) of every chunk row summed over taps: the dense micro-kernel on tap t's
 * cw words of the compacted micro-panels (modes FM / MM: their masks hold the exact active
 * entries), scatter-added into the rows.  Integer sums, so the order is free. */
static void FN(tap_counts)(const hbnn_gemm_args *a, hbnn_chunk *ch, int64_t kwt, int64_t nq, int64_t q) {
    const int64_t taps = a->kh * a->kw, cw = a->cw, rp = ch->nmax * HBNN_NR, nrow = ch->nm * HBNN_NR;
    int32_t P[HBNN_NR * HBNN_LANES], T[HBNN_NR * HBNN_LANES];
    int64_t i, j, t, c, r;
    for (i = 0; i < a->nw; i++) {
        const int wst = a->p_wst[i * nq + q], wm_on = wst >= HBNN_ST_MASKED;
        const int64_t pan = (i * nq + q) * kwt * HBNN_LANES;
        if (wst == HBNN_ST_ABSENT) continue;
        for (j = 0; j < a->nx; j++) {
            int32_t *pa = ch->pacc + (i * a->nx + j) * rp * HBNN_LANES, *ta = ch->tacc + (pa - ch->pacc);
            if (!ch->xtap[j]) continue;
            memset(pa, 0, (size_t)nrow * HBNN_LANES * sizeof(int32_t));
            if (wm_on) memset(ta, 0, (size_t)nrow * HBNN_LANES * sizeof(int32_t));
            for (t = 0; t < taps; t++) {
                const int64_t n = ch->tcnt[j * taps + t], woff = pan + t * cw * HBNN_LANES;
                const int32_t *rows = ch->trow + (j * taps + t) * rp;
                for (c = 0; c * HBNN_NR < n; c++) {
                    const int nr = (int)hbnn_min64(HBNN_NR, n - c * HBNN_NR);
                    const int64_t xoff = ((j * taps + t) * ch->nmax + c) * cw * HBNN_NR;
                    FN(uk)(wm_on ? 3 : 1, a->p_ws + woff, wm_on ? a->p_wm + woff : NULL, ch->ts + xoff, ch->tm + xoff,
                           cw, nr, P, T);
                    for (r = 0; r < nr; r++) {
                        FN(add16)(pa + rows[c * HBNN_NR + r] * HBNN_LANES, P + r * HBNN_LANES);
                        if (wm_on) FN(add16)(ta + rows[c * HBNN_NR + r] * HBNN_LANES, T + r * HBNN_LANES);
                    }
                }
            }
        }
    }
}

#undef FN
#undef HBNN_CAT
#undef HBNN_CAT2
