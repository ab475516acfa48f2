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

/* Pixel plane j (every input pixel ABSENT or FULL) of the chunk: the rows whose input pixel at
 * tap t is FULL (trow / tcnt, from the pixel states alone), and each row's popcount (C per such
 * tap), present words, scale and the micro-panels' statuses (ABSENT or MASKED).  Returns 1 if
 * the tap path is cheaper than the micro-panels' own paths (HBNN_SP_*): then the plane's
 * micro-panels are never packed (pack_row skips it) and tap_lists copies its tap words straight
 * from the NHWC planes; else 0 and the plane is packed as any masked plane. */
static int FN(pix_lists)(const hbnn_gemm_args *a, const hbnn_row *rows, hbnn_chunk *ch, int64_t j, int64_t kwt) {
    const int64_t taps = a->kh * a->kw, cw = a->cw, nm = ch->nm, nrow = ch->r1 - ch->r0, rp = ch->nmax * HBNN_NR;
    const uint8_t *ps = ch->ps + j * a->B * a->H * a->W;
    int32_t *tcnt = ch->tcnt + j * taps, *trow = ch->trow + j * taps * rp;
    int64_t cost_t = 0, cost_m = 0, t, m, r, ki, kj;
    for (t = 0; t < taps; t++) tcnt[t] = 0;
    for (m = 0; m < nm; m++) {
        const int64_t jm = j * nm + m;
        int64_t words = 0;
        for (r = 0; r < HBNN_NR; r++) {
            const int64_t rr = m * HBNN_NR + r, o = jm * HBNN_NR + r;
            const hbnn_row *rw = rows + ch->r0 + rr;
            int32_t n = 0;
            if (rr >= nrow) {
                ch->popx[o] = ch->xn[o] = 0;
                ch->xsc[o] = 0.0f;
                continue;
            }
            for (ki = 0, t = 0; ki < a->kh; ki++) {
                const int64_t iy = rw->y0 + ki * a->dh;
                for (kj = 0; kj < a->kw; kj++, t++) {
                    const int64_t ix = rw->x0 + kj * a->dw;
                    if (iy < 0 || iy >= a->H || ix < 0 || ix >= a->W) continue;
                    if (ps[(rw->b * a->H + iy) * a->W + ix] != HBNN_ST_FULL) continue;
                    trow[t * rp + tcnt[t]++] = (int32_t)rr;
                    n++;
                }
            }
            ch->popx[o] = n * (int32_t)a->C;
            ch->xn[o] = n * (int32_t)cw;
            ch->xsc[o] = a->x_scales[a->x_scale_per_row ? j * a->B + rw->b : j];
            words += n * cw;
        }
        ch->xsum[jm] = words;
        ch->xmsk[jm] = (uint8_t)(words ? HBNN_ST_MASKED : HBNN_ST_ABSENT);
        cost_m += !words ? 0 : hbnn_min64(HBNN_SP_UNIT * kwt, HBNN_SP_FIX_X + words * HBNN_SP_WORD);
    }
    for (t = 0; t < taps; t++)
        cost_t += (tcnt[t] + HBNN_NR - 1) / HBNN_NR * (HBNN_SP_FIX_T + HBNN_SP_UNIT * cw) + tcnt[t] * HBNN_SP_WORD;
    return cost_t < cost_m;
}

/* Tap words of pixel plane j (pix_lists): signs straight from the NHWC planes, masks the
 * valid-bit pattern (the pixels are FULL), 12 rows to a micro-panel, padding rows zero. */
static void FN(pix_words)(const hbnn_gemm_args *a, const hbnn_row *rows, hbnn_chunk *ch, int64_t j) {
    const int64_t taps = a->kh * a->kw, cw = a->cw, rp = ch->nmax * HBNN_NR;
    const uint64_t *xs = a->x_signs + j * a->B * a->H * a->W * cw, vlast = hbnn_valid_word(cw - 1, cw, a->C);
    int64_t t, e, c;
    for (t = 0; t < taps; t++) {
        const int64_t n = ch->tcnt[j * taps + t], np = (n + HBNN_NR - 1) / HBNN_NR * HBNN_NR;
        const int64_t dy = t / a->kw * a->dh, dx = t % a->kw * a->dw;
        const int32_t *tr = ch->trow + (j * taps + t) * rp;
        uint64_t *ds = ch->ts + (j * taps + t) * ch->nmax * cw * HBNN_NR, *dm = ch->tm + (ds - ch->ts);
        for (e = 0; e < np; e++) {
            const int64_t dst0 = (e / HBNN_NR) * cw * HBNN_NR + e % HBNN_NR;
            const hbnn_row *rw = e < n ? rows + ch->r0 + tr[e] : NULL;
            const uint64_t *src = rw ? xs + ((rw->b * a->H + rw->y0 + dy) * a->W + rw->x0 + dx) * cw : NULL;
            for (c = 0; c < cw; c++) {
                ds[dst0 + c * HBNN_NR] = src ? src[c] : 0;
                dm[dst0 + c * HBNN_NR] = !src ? 0 : c < cw - 1 ? ~0ULL : vlast;
            }
        }
    }
}

/* Tap path, lists: for each masked plane j and tap t, the chunk rows whose input pixel at tap
 * t has plane j (a nonzero mask word), in order; the plane takes the tap path when its cost
 * (HBNN_SP_FIX_T per compacted micro-panel and tap + the tap's words + HBNN_SP_WORD per row)
 * is below that of the micro-panels' own paths; then ts/tm hold the rows' tap words packed
 * 12 to a micro-panel (padding rows zero). */
static void FN(tap_lists)(const hbnn_gemm_args *a, const hbnn_row *rows, hbnn_chunk *ch, int64_t kwt) {
    const int64_t taps = a->kh * a->kw, cw = a->cw, nm = ch->nm, nrow = ch->r1 - ch->r0, rp = ch->nmax * HBNN_NR;
    int64_t j, t, rr, e, m, c;
    for (j = 0; j < a->nx; j++) {
        int64_t cost_t = 0, cost_m = 0;
        ch->xtap[j] = ch->xpix[j];
        if (ch->xpix[j]) {
            FN(pix_words)(a, rows, ch, j);
            continue;
        }
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

#ifndef HBNN_HAVE_UKT
/* The micro-kernel with row r's P (and T for MM) added to pa / ta + 16 rows[r] (generic: uk
 * into a tile, then one add per row). */
static void FN(ukt)(int mode, const uint64_t *ws, const uint64_t *wm, const uint64_t *xs, const uint64_t *xm,
                    int64_t kwt, int nr, const int32_t *rows, int32_t *pa, int32_t *ta) {
    int32_t P[HBNN_NR * HBNN_LANES], T[HBNN_NR * HBNN_LANES];
    int r;
    FN(uk)(mode, ws, wm, xs, xm, kwt, nr, P, T);
    for (r = 0; r < nr; r++) {
        FN(add16)(pa + rows[r] * HBNN_LANES, P + r * HBNN_LANES);
        if (mode == 3) FN(add16)(ta + rows[r] * HBNN_LANES, T + r * HBNN_LANES);
    }
}
#endif

/* Tap path, counts of weight panel q: for every pair (i, j) with j on the tap path, P (and T
 * for a masked panel) of every chunk row summed over taps: the dense micro-kernel on tap t's
 * cw words of the compacted micro-panels (modes FM / MM: their masks hold the exact active
 * entries), scatter-added into the rows.  Integer sums, so the order is free. */
static void FN(tap_counts)(const hbnn_gemm_args *a, hbnn_chunk *ch, int64_t kwt, int64_t nq, int64_t q) {
    const int64_t taps = a->kh * a->kw, cw = a->cw, rp = ch->nmax * HBNN_NR, nrow = ch->nm * HBNN_NR;
    int64_t i, j, t, c;
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
                    FN(ukt)(wm_on ? 3 : 1, a->p_ws + woff, wm_on ? a->p_wm + woff : NULL, ch->ts + xoff,
                            ch->tm + xoff, cw, nr, rows + c * HBNN_NR, pa, ta);
                }
            }
        }
    }
}

#undef FN
#undef HBNN_CAT
#undef HBNN_CAT2
