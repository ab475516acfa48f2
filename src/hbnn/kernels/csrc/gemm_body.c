/* Bit-serial GEMM / implicit-GEMM convolution driver, compiled once per SIMD variant.
 *
 * Included (never compiled on its own) by gemm_<variant>.c, which first defines
 *   HBNN_SUFFIX               the name suffix of this variant (portable, avx2, avx512);
 *   HBNN_POP(v)               a 64-bit popcount;
 *   uk_<suffix>(mode, ws, wm, xs, xm, kwt, nr, P, T)
 *                             the micro-kernel: for r < nr (<= HBNN_NR) and the 16 lanes l
 *                             of a weight panel, P[r*16+l] = popcount over the kwt words of
 *                               FF: ws ^ xs           FM: (ws ^ xs) & xm
 *                               MF: (ws ^ xs) & wm    MM: (ws ^ xs) & wm & xm
 *                             and for MM also T[r*16+l] = popcount(wm & xm);
 *   uksx_<suffix>, uksw_<suffix> (optional, HBNN_HAVE_UKS; else the generic C below)
 *                             the word-list kernels: one sparse row's present words
 *                             broadcast against the dense side's lanes (contracts below).
 *
 * Maths.  For weight plane i (rows o) and activation plane j (rows b) the dot count is
 *   c_ij[b,o] = sum_k m_w[o,k] m_x[b,k] (+1 if s_w == s_x else -1) = base - 2 P
 * with base = K (both planes full), popcount(m_x) (weight full), popcount(m_w)
 * (activation full) or popcount(m_w & m_x) (both masked); pad bits are zero in both
 * operands so they never count.  The float output accumulates, in this exact order,
 *   y = 0;  for i: for j: y = y + (a_w_i[o] * a_x_j[b]) * (float)c_ij[b,o]
 * which reference.py repeats, so results are bit-identical.
 *
 * Convolution is an implicit GEMM: output pixel p = (b, oy, ox) is a row whose K words are
 * the kh*kw input positions' cw-word channel vectors (OHWI order for the weights).  A
 * position outside the image is inactive in every plane: its words are zero, and a full
 * activation plane is treated as masked (valid-bit pattern) on rows that touch the border.
 * Rows are processed interior-first so only the few micro-panels holding border rows pay
 * for masks.
 *
 * Blocking: weights are prepared once (prep_body.c) into 16-row panels ([k][16]
 * interleaved) with a status per (plane, panel); activation rows are processed in chunks
 * (hbnn_chunk_rows) repacked into 12-row micro-panels ([k][12]) with a status per (plane,
 * micro-panel); OpenMP distributes (chunk, group of weight panels) items dynamically; each
 * item streams its weight panels from L2/L3 against an L2-resident chunk.  Per tile group
 * (one panel x up to 4 micro-panels) and plane pair the cheapest path runs (hbnn_path, the
 * HBNN_SP_* cost model): skip (a side ABSENT), dense micro-kernel, weight- or activation-side
 * word lists, or the tap-compacted sums of tap_body.c; the epilogue is the same for all.
 */
#ifndef HBNN_SUFFIX
#error "gemm_body.c is included by gemm_<variant>.c"
#endif

#define HBNN_CAT2(a, b) a##_##b
#define HBNN_CAT(a, b) HBNN_CAT2(a, b)
#define FN(name) HBNN_CAT(name, HBNN_SUFFIX)

#include "dense_body.c"

/* One output row of the panel: its words (and masks) for every plane not in done (packed
 * per micro-panel by pack_panel), gathered from the input pixels it sees;
 * out-of-image positions (border rows only) are zero words.  For a plane treated as
 * masked, also its mask popcount and its present (nonzero-mask) words. */
static void FN(pack_row)(const hbnn_gemm_args *a, const hbnn_row *rw, int interior,
                         int64_t kwt, hbnn_chunk *ch, int64_t m, int64_t rr, uint64_t done) {
    const int64_t cw = a->cw, rin = a->B * a->H * a->W, nm = ch->nm;
    const int64_t pix0 = (rw->b * a->H + rw->y0) * a->W + rw->x0;
    int64_t ki, kj, j, c;
    for (j = 0; j < a->nx; j++) {
        const int64_t jm = j * nm + m, base = jm * kwt;
        const int masked = ch->xmsk[jm] != HBNN_ST_FULL, full = a->x_full[j];
        if (ch->xpix[j]) continue; /* packed per tap by tap_lists (pix_lists set its row data) */
        if (done >> j & 1) continue;
        if (a->dense) {
            FN(pack_row_dense)(a, rw, interior, kwt, ch, j, jm, rr);
            continue;
        }
        const uint64_t *xs = a->x_signs + j * rin * cw, *xm = full ? NULL : a->x_masks + j * rin * cw;
        int32_t *idx = ch->xidx + (jm * HBNN_NR + rr) * kwt, ni = 0;
        int64_t pop = 0;
        for (ki = 0; ki < a->kh; ki++) {
            const int64_t iy = rw->y0 + ki * a->dh;
            for (kj = 0; kj < a->kw; kj++) {
                const int64_t ix = rw->x0 + kj * a->dw, k0 = (ki * a->kw + kj) * cw;
                const int inb = interior || (iy >= 0 && iy < a->H && ix >= 0 && ix < a->W);
                const int64_t src = (pix0 + ki * a->dh * a->W + kj * a->dw) * cw;
                uint64_t *dst = ch->xs + (base + k0) * HBNN_NR + rr;
                uint64_t *dstm = ch->xm + (base + k0) * HBNN_NR + rr;
                if (!inb) {
                    for (c = 0; c < cw; c++) dst[c * HBNN_NR] = 0;
                    if (masked)
                        for (c = 0; c < cw; c++) dstm[c * HBNN_NR] = 0;
                    continue;
                }
                for (c = 0; c < cw; c++) dst[c * HBNN_NR] = xs[src + c];
                if (!masked) continue;
                for (c = 0; c < cw; c++) {
                    const uint64_t mv = full ? hbnn_valid_word(c, cw, a->C) : xm[src + c];
                    dstm[c * HBNN_NR] = mv;
                    pop += HBNN_POP(mv);
                    idx[ni] = (int32_t)(k0 + c);
                    ni += mv != 0;
                }
            }
        }
        ch->popx[jm * HBNN_NR + rr] = (int32_t)pop;
        ch->xn[jm * HBNN_NR + rr] = ni;
        ch->xsc[jm * HBNN_NR + rr] = a->x_scales[a->x_scale_per_row ? j * a->B + rw->b : j];
    }
}

/* Status of masked plane j on micro-panel m from its live rows first..last: ABSENT (no
 * active entry), FULL (every entry active), SPARSE (word lists cheaper: HBNN_SP_*) or MASKED. */
static void FN(x_status)(hbnn_chunk *ch, int64_t jm, int nlive, int64_t kwt, int32_t kfull) {
    int r, nabs = 0, nfull = 0;
    int64_t xsum = 0;
    for (r = 0; r < nlive; r++) {
        const int32_t pop = ch->popx[jm * HBNN_NR + r];
        nabs += pop == 0;
        nfull += pop == kfull;
        xsum += ch->xn[jm * HBNN_NR + r];
    }
    ch->xsum[jm] = xsum;
    ch->xmsk[jm] = (uint8_t)(nabs == nlive ? HBNN_ST_ABSENT : nfull == nlive ? HBNN_ST_FULL
                             : HBNN_SP_FIX_X + xsum * HBNN_SP_WORD < HBNN_SP_UNIT * kwt ? HBNN_ST_SPARSE
                                                                                        : HBNN_ST_MASKED);
}

/* Activation micro-panels of output rows rows[r0..r1) into ch: plane j, micro-panel m,
 * word k, row r at ((j*nm + m)*kwt + k)*12 + r; missing rows are zero.  A plane is packed
 * masked on micro-panel m when it is a masked plane or m holds a border row; then xm holds
 * its masks, popx[(j*nm + m)*12 + r] their popcounts, xidx/xn the present words, and
 * xmsk[j*nm + m] its status (x_status).  xsc[(j*nm + m)*12 + r] is the row's scale. */
static void FN(pack_x)(const hbnn_gemm_args *a, const hbnn_row *rows, int64_t n_int,
                       int64_t r0, int64_t r1, int64_t kwt, hbnn_chunk *ch) {
    const int64_t nm = (r1 - r0 + HBNN_NR - 1) / HBNN_NR;
    const int32_t kfull = (int32_t)(a->kh * a->kw * a->C);
    const uint64_t all = a->nx >= 64 ? ~0ULL : (1ULL << a->nx) - 1;
    uint64_t done;
    int64_t m, rr, j, k;
    ch->nm = nm;
    ch->r0 = r0;
    ch->r1 = r1;
    for (j = 0; j < a->nx; j++) ch->xpix[j] = ch->pixp && ch->pixp[j] && FN(pix_lists)(a, rows, ch, j, kwt);
    for (m = 0; m < nm; m++) {
        const int64_t first = r0 + m * HBNN_NR, last = hbnn_min64(r1, first + HBNN_NR) - 1;
        const int border = last >= n_int;
        for (j = 0; j < a->nx; j++)
            if (!ch->xpix[j]) ch->xmsk[j * nm + m] = !a->x_full[j] || border ? HBNN_ST_MASKED : HBNN_ST_FULL;
        done = border ? 0 : FN(pack_panel)(a, rows + first, (int)(last - first + 1), ch, m);
        for (rr = 0; rr < HBNN_NR; rr++) {
            const int64_t idx = first + rr;
            if (idx <= last) {
                if (done != all) FN(pack_row)(a, rows + idx, idx < n_int, kwt, ch, m, rr, done);
                continue;
            }
            for (j = 0; j < a->nx; j++) { /* padding row of the last micro-panel */
                const int64_t jm = j * nm + m;
                if (ch->xpix[j]) continue;
                for (k = 0; k < kwt; k++) {
                    ch->xs[(jm * kwt + k) * HBNN_NR + rr] = 0;
                    if (ch->xmsk[jm] != HBNN_ST_FULL) ch->xm[(jm * kwt + k) * HBNN_NR + rr] = 0;
                }
                ch->popx[jm * HBNN_NR + rr] = 0;
                ch->xn[jm * HBNN_NR + rr] = 0;
                ch->xsc[jm * HBNN_NR + rr] = 0.0f;
            }
        }
        for (j = 0; j < a->nx; j++)
            if (!ch->xpix[j]) ch->xsum[j * nm + m] = 0;
        for (j = 0; j < a->nx; j++)
            if (!ch->xpix[j] && ch->xmsk[j * nm + m] != HBNN_ST_FULL) FN(x_status)(ch, j * nm + m, (int)(last - first + 1), kwt, kfull);
    }
}

#ifndef HBNN_HAVE_UKS
/* Word-list kernel, activation side (generic C): P[l] = sum over the row's n present words
 * k = idx[t] of popcount((ws[k*16+l] ^ s) & m (& wm[k*16+l])) with s = ss[k*sst], m = sm[k*sst];
 * with wm also T[l] = popcount(m & wm[k*16+l]); l < 16. */
static void FN(uksx)(int64_t n, const int32_t *idx, const uint64_t *ss, const uint64_t *sm, int64_t sst,
                     const uint64_t *ws, const uint64_t *wm, int32_t *P, int32_t *T) {
    int64_t acc[HBNN_LANES], tac[HBNN_LANES], t;
    int l;
    memset(acc, 0, sizeof(acc));
    memset(tac, 0, sizeof(tac));
    for (t = 0; t < n; t++) {
        const int64_t k = idx[t];
        const uint64_t s = ss[k * sst], mk = sm[k * sst], *d = ws + k * HBNN_LANES;
        if (wm) {
            const uint64_t *e = wm + k * HBNN_LANES;
            for (l = 0; l < HBNN_LANES; l++) {
                acc[l] += HBNN_POP((d[l] ^ s) & mk & e[l]);
                tac[l] += HBNN_POP(mk & e[l]);
            }
        } else {
            for (l = 0; l < HBNN_LANES; l++) acc[l] += HBNN_POP((d[l] ^ s) & mk);
        }
    }
    for (l = 0; l < HBNN_LANES; l++) {
        P[l] = (int32_t)acc[l];
        if (wm) T[l] = (int32_t)tac[l];
    }
}

/* Word-list kernel, weight side (generic C): one weight lane's n present words against G <= 4
 * activation micro-panels xs[g] (masks xm[g] when mm): P[g][r*16] = sum_t popcount((xs[g][k*12+r]
 * ^ s) & m (& xm[g][k*12+r])), T[g][r*16] = popcount(m & xm[g][k*12+r]) (mm), r < 12. */
static void FN(uksw)(int G, int mm, int64_t n, const int32_t *idx, const uint64_t *ss, const uint64_t *sm,
                     const uint64_t *const *xs, const uint64_t *const *xm, int32_t *const *P, int32_t *const *T) {
    int64_t acc[4][HBNN_NR], tac[4][HBNN_NR], t;
    int g, r;
    memset(acc, 0, sizeof(acc));
    memset(tac, 0, sizeof(tac));
    for (t = 0; t < n; t++) {
        const int64_t k = idx[t];
        const uint64_t s = ss[k * HBNN_LANES], mk = sm[k * HBNN_LANES];
        for (g = 0; g < G; g++) {
            const uint64_t *d = xs[g] + k * HBNN_NR;
            if (mm) {
                const uint64_t *e = xm[g] + k * HBNN_NR;
                for (r = 0; r < HBNN_NR; r++) {
                    acc[g][r] += HBNN_POP((d[r] ^ s) & mk & e[r]);
                    tac[g][r] += HBNN_POP(mk & e[r]);
                }
            } else {
                for (r = 0; r < HBNN_NR; r++) acc[g][r] += HBNN_POP((d[r] ^ s) & mk);
            }
        }
    }
    for (g = 0; g < G; g++)
        for (r = 0; r < HBNN_NR; r++) {
            P[g][r * HBNN_LANES] = (int32_t)acc[g][r];
            if (mm) T[g][r * HBNN_LANES] = (int32_t)tac[g][r];
        }
}
#endif

/* c = base - 2 P for one (i, j) pair of a tile, with base = K, popcount(m_x), popcount(m_w)
 * or T by mode, written as c = bs + bv[l] - 2 p[l]; then y = (first ? 0 : y) + (a_w a_x) c.
 * One 16-lane loop per row with restrict pointers (vectorizes; no partial stores that
 * would defeat store forwarding). */
static inline void FN(epilogue)(int mode, int nr, int32_t kfull, const int32_t *restrict P,
                                const int32_t *restrict T, const int32_t *restrict popx,
                                const int32_t *restrict popw, const float *restrict swl,
                                const float *restrict sxr, int first, float *restrict yt,
                                int32_t *restrict ct) {
    static const int32_t zeros[HBNN_LANES] = {0};
    int r, l;
    for (r = 0; r < nr; r++) {
        const int32_t *restrict p = P + r * HBNN_LANES;
        const int32_t *restrict bv = mode == 2 ? popw : mode == 3 ? T + r * HBNN_LANES : zeros;
        const int32_t bs = mode == 0 ? kfull : mode == 1 ? popx[r] : 0;
        if (ct) {
            int32_t *restrict c = ct + r * HBNN_LANES;
            for (l = 0; l < HBNN_LANES; l++) c[l] = bs + bv[l] - 2 * p[l];
        }
        if (yt) {
            float *restrict y = yt + r * HBNN_LANES;
            const float sx = sxr[r];
            if (first) {
                for (l = 0; l < HBNN_LANES; l++)
                    y[l] = 0.0f + (swl[l] * sx) * (float)(bs + bv[l] - 2 * p[l]);
            } else {
                for (l = 0; l < HBNN_LANES; l++)
                    y[l] = y[l] + (swl[l] * sx) * (float)(bs + bv[l] - 2 * p[l]);
            }
        }
    }
}

#define HBNN_G 4 /* activation micro-panels per tile group (weight-side word lists share them) */

/* P (and T) of pair (i, j) on micro-panel jm by the dense micro-kernel or the activation-side
 * word lists; returns the epilogue mode (0 FF, 1 FM, 2 MF, 3 MM: the base of c = base - 2P). */
static int FN(pair)(const hbnn_gemm_args *a, int wst, int xst, int path, int64_t kwt, int64_t pan,
                    const hbnn_chunk *ch, int64_t jm, int nr, int32_t *P, int32_t *T) {
    const int64_t xp = jm * kwt * HBNN_NR;
    const int wm_on = wst >= HBNN_ST_MASKED, xm_on = xst >= HBNN_ST_MASKED;
    const uint64_t *ws = a->p_ws + pan, *wm = wm_on ? a->p_wm + pan : NULL;
    const uint64_t *xs = ch->xs + xp, *xm = xm_on ? ch->xm + xp : NULL;
    int r;
    if (path == HBNN_PATH_XLIST) {
        for (r = 0; r < nr; r++)
            FN(uksx)(ch->xn[jm * HBNN_NR + r], ch->xidx + (jm * HBNN_NR + r) * kwt, xs + r, xm + r, HBNN_NR, ws, wm,
                     P + r * HBNN_LANES, T + r * HBNN_LANES);
        return wm_on ? 3 : 1;
    }
    FN(uk)(wm_on * 2 + xm_on, ws, wm, xs, xm, kwt, nr, P, T);
    return wm_on * 2 + xm_on;
}

/* Weight-side word lists of pair (i, j) for the g micro-panels list[0..g) of a group, all
 * full (mm = 0) or all masked (mm = 1): each live lane's present words against them. */
static void FN(wlist)(const hbnn_gemm_args *a, int64_t kwt, int64_t pan, int64_t lane0, int64_t ov,
                      const hbnn_chunk *ch, int64_t j, int64_t m0, const int *list, int g, int mm,
                      int32_t (*P)[HBNN_NR * HBNN_LANES], int32_t (*T)[HBNN_NR * HBNN_LANES]) {
    const uint64_t *xs[HBNN_G], *xm[HBNN_G];
    int32_t *pp[HBNN_G], *tp[HBNN_G];
    int64_t l;
    int e;
    if (g == 0) return;
    for (e = 0; e < g; e++) {
        const int64_t xp = (j * ch->nm + m0 + list[e]) * kwt * HBNN_NR;
        xs[e] = ch->xs + xp;
        xm[e] = ch->xm + xp;
        if (ov < HBNN_LANES) {
            memset(P[list[e]], 0, sizeof(P[0]));
            memset(T[list[e]], 0, sizeof(T[0]));
        }
    }
    for (l = 0; l < ov; l++) {
        for (e = 0; e < g; e++) {
            pp[e] = P[list[e]] + l;
            tp[e] = T[list[e]] + l;
        }
        FN(uksw)(g, mm, a->p_wn[lane0 + l], a->p_widx + (lane0 + l) * kwt, a->p_ws + pan + l, a->p_wm + pan + l,
                 xs, xm, pp, tp);
    }
}

/* Tiles of panel q (panel rows 16q..16q+15) x micro-panels m0..m0+gn-1 (gn <= HBNN_G) of ch,
 * all plane pairs in the order i (weights) outer, j (activations) inner for every output
 * element.  A pair with an ABSENT side is skipped: its counts are 0 and y + (a_w a_x) * 0 == y
 * exactly (y starts at +0.0 and round-to-nearest never makes it -0.0; scales are finite). */
static void FN(tiles)(const hbnn_gemm_args *a, const hbnn_row *rows, int64_t R, int64_t kwt,
                      int64_t nq, int64_t q, const hbnn_chunk *ch, int64_t m0, int gn, const hbnn_plan *pl) {
    int32_t P[HBNN_G][HBNN_NR * HBNN_LANES], T[HBNN_G][HBNN_NR * HBNN_LANES], ct[HBNN_NR * HBNN_LANES];
    float yt[HBNN_G][HBNN_NR * HBNN_LANES];
    const int64_t o0 = q * HBNN_LANES, ov = hbnn_min64(HBNN_LANES, a->O - o0), Op = nq * HBNN_LANES;
    const int64_t nm = ch->nm;
    const int32_t kfull = (int32_t)(a->kh * a->kw * a->C);
    const hbnn_blk *blk = pl->blk + pl->bstart[q];
    const int nblk = pl->bstart[q + 1] - pl->bstart[q];
    int nr[HBNN_G], yinit[HBNN_G], mode[HBNN_G], lf[HBNN_G], lm[HBNN_G];
    const int32_t *pp[HBNN_G], *tp[HBNN_G]; /* P / T of micro-panel e: P[e] or the tap sums */
    const hbnn_gemm_args *epi; /* a when y has an epilogue (put_row), else NULL */
    int64_t i, j, r;
    int e;
    for (e = 0; e < gn; e++) {
        nr[e] = (int)hbnn_min64(HBNN_NR, ch->r1 - (ch->r0 + (m0 + e) * HBNN_NR));
        yinit[e] = 0;
    }
    for (i = 0; i < a->nw; i++) {
        const int wst = a->p_wst[i * nq + q];
        const int64_t pan = (i * nq + q) * kwt * HBNN_LANES;
        int64_t wsum = 0, l;
        if (wst == HBNN_ST_SPARSE)
            for (l = 0; l < ov; l++) wsum += a->p_wn[i * Op + o0 + l];
        for (j = 0; j < a->nx; j++) {
            int nf = 0, nmk = 0;
            for (e = 0; e < gn; e++) {
                const int64_t jm = j * nm + m0 + e;
                const int xst = ch->xmsk[jm];
                int path;
                mode[e] = -1;
                pp[e] = P[e];
                tp[e] = T[e];
                if (wst == HBNN_ST_ABSENT || xst == HBNN_ST_ABSENT) continue;
                if (ch->xtap[j] && xst != HBNN_ST_FULL) { /* summed over taps by tap_counts */
                    const int64_t off = ((i * a->nx + j) * ch->nmax * HBNN_NR + (m0 + e) * HBNN_NR) * HBNN_LANES;
                    pp[e] = ch->pacc + off;
                    tp[e] = ch->tacc + off;
                    mode[e] = wst >= HBNN_ST_MASKED ? 3 : 1;
                    continue;
                }
                path = hbnn_path(wst, xst, wsum, ch->xsum[jm]);
                if (path == HBNN_PATH_WLIST) {
                    const int masked = xst >= HBNN_ST_MASKED;
                    if (masked) lm[nmk++] = e;
                    else lf[nf++] = e;
                    mode[e] = masked ? 3 : 2;
                    continue;
                }
                mode[e] = FN(pair)(a, wst, xst, path, kwt, pan, ch, jm, nr[e], P[e], T[e]);
            }
            FN(wlist)(a, kwt, pan, i * Op + o0, ov, ch, j, m0, lf, nf, 0, P, T);
            FN(wlist)(a, kwt, pan, i * Op + o0, ov, ch, j, m0, lm, nmk, 1, P, T);
            for (e = 0; e < gn; e++) {
                const int64_t jm = j * nm + m0 + e, first = ch->r0 + (m0 + e) * HBNN_NR;
                if (mode[e] < 0) {
                    if (a->counts) memset(ct, 0, sizeof(ct));
                } else {
                    FN(epilogue)(mode[e], nr[e], kfull, pp[e], tp[e], ch->popx + jm * HBNN_NR,
                                 a->p_popw + (i * nq + q) * HBNN_LANES, a->p_wsc + i * Op + o0, ch->xsc + jm * HBNN_NR,
                                 !yinit[e], a->y ? yt[e] : NULL, a->counts ? ct : NULL);
                    yinit[e] = 1;
                }
                if (a->counts)
                    for (r = 0; r < nr[e]; r++)
                        FN(put_row)(a->counts + ((i * a->nx + j) * R + rows[first + r].p) * a->O, ct + r * HBNN_LANES,
                                    blk, nblk, NULL, NULL);
            }
        }
    }
    if (!a->y) return;
    epi = a->e_bias || a->e_res || a->e_clamp ? a : NULL;
    for (e = 0; e < gn; e++) {
        const int64_t first = ch->r0 + (m0 + e) * HBNN_NR;
        if (!yinit[e]) memset(yt[e], 0, sizeof(yt[e]));
        for (r = 0; r < nr[e]; r++) {
            if (ch->stg) /* staged in panel order; unpermuted once the chunk is done */
                memcpy(ch->stg + (first + r - ch->r0) * Op + o0, yt[e] + r * HBNN_LANES, HBNN_LANES * sizeof(float));
            else
                FN(put_row)(a->y + rows[first + r].p * a->O, yt[e] + r * HBNN_LANES, blk, nblk, epi,
                            a->e_res ? a->e_res + rows[first + r].p * a->O : NULL);
        }
    }
}

static int FN(hbnn_gemm)(const hbnn_gemm_args *a) {
    const int64_t kwt = a->dense ? (a->kh * a->kw * a->C + 63) / 64 : a->kh * a->kw * a->cw;
    const int64_t R = a->B * a->oh * a->ow;
    const int64_t nq = (a->O + HBNN_LANES - 1) / HBNN_LANES;
    const int nt = a->nthreads > 0 ? (int)a->nthreads : 1;
    const int64_t chunk = hbnn_chunk_rows(kwt, a->nx, R, nt);
    int64_t nch, og, n_int;
    int failed = 0;
    hbnn_row *rows;
    hbnn_plan plan;
    uint8_t *ps = NULL, pixp[8] = {0};
    int64_t j;
    int any_masked = 0, stage, rslot, rhit;
    if (R == 0) return 0;
    nch = (R + chunk - 1) / chunk;
    og = nch >= 2 * nt ? 1 : hbnn_min64(nq, nt);
    /* Permuted weights with a whole chunk per item: stage y in panel order when the chunk's
     * rows fit in L2 (HBNN_STAGE_BYTES) and unpermute each finished row (AVX-512 only). */
    stage = HBNN_UNPERM && a->y && a->p_permuted && og == 1 && chunk * nq * HBNN_LANES * 4 <= HBNN_STAGE_BYTES;
    rows = hbnn_rows(a, R, &n_int, &rslot, &rhit);
    if (!rows) return -2;
    if (FN(out_plan)(a, nq, &plan) != 0) return -2;
    if (!rhit) {
        n_int = FN(row_order)(a, rows);
        hbnn_rows_built(a, rslot, n_int);
    }
    for (j = 0; j < a->nx; j++) any_masked |= !a->x_full[j];
    if (any_masked) {
        ps = (uint8_t *)hbnn_alloc((size_t)(a->nx * a->B * a->H * a->W));
        if (ps) FN(pixel_states)(a, ps, pixp);
    }
    if (any_masked) hbnn_rows_forget(rslot); /* x_sort may reorder the list for this call's maps */
    if ((any_masked && !ps) || FN(x_sort)(a, ps, rows, n_int, R) != 0) {
        hbnn_plan_free(&plan);
        free(ps);
        return -2;
    }
    /* No taps to compact in a GEMM; dense taps pack whole receptive fields, not taps. */
    if (a->kh * a->kw == 1 || a->dense) memset(pixp, 0, sizeof(pixp));
    /* One parallel region with no barrier but its end: on a busy machine every barrier
     * waits for a descheduled thread. */
#pragma omp parallel num_threads(nt)
    {
        const int64_t nm_max = chunk / HBNN_NR;
        const size_t panel = (size_t)(a->nx * nm_max * kwt * HBNN_NR) * 8;
        hbnn_chunk ch;
        int64_t item;
        int bad;
        ch.xs = (uint64_t *)hbnn_scratch(HBNN_SCR_XS, panel);
        ch.xm = (uint64_t *)hbnn_scratch(HBNN_SCR_XM, panel);
        ch.xidx = (int32_t *)hbnn_scratch(HBNN_SCR_XIDX, panel / 2);
        ch.popx = (int32_t *)hbnn_scratch(HBNN_SCR_POPX, (size_t)(a->nx * nm_max * HBNN_NR) * 4);
        ch.xn = (int32_t *)hbnn_scratch(HBNN_SCR_XN, (size_t)(a->nx * nm_max * HBNN_NR) * 4);
        ch.xsc = (float *)hbnn_scratch(HBNN_SCR_XSC, (size_t)(a->nx * nm_max * HBNN_NR) * 4);
        ch.xsum = (int64_t *)hbnn_scratch(HBNN_SCR_XSUM, (size_t)(a->nx * nm_max) * 8);
        ch.xmsk = (uint8_t *)hbnn_scratch(HBNN_SCR_XMSK, (size_t)(a->nx * nm_max));
        ch.nmax = nm_max;
        ch.ps = ps;
        ch.pixp = pixp;
        ch.xpix = (uint8_t *)hbnn_scratch(HBNN_SCR_XPIX, (size_t)a->nx);
        ch.stg = stage ? (float *)hbnn_scratch(HBNN_SCR_STG, (size_t)((chunk + 1) * nq * HBNN_LANES) * sizeof(float)) : NULL;
        ch.xtap = (uint8_t *)hbnn_scratch(HBNN_SCR_XTAP, (size_t)a->nx);
        ch.trow = (int32_t *)hbnn_scratch(HBNN_SCR_TROW, (size_t)(a->nx * a->kh * a->kw * nm_max * HBNN_NR) * 4);
        ch.tcnt = (int32_t *)hbnn_scratch(HBNN_SCR_TCNT, (size_t)(a->nx * a->kh * a->kw) * 4);
        ch.ts = (uint64_t *)hbnn_scratch(HBNN_SCR_TS, panel); /* kwt = taps * cw words per row, as xs */
        ch.tm = (uint64_t *)hbnn_scratch(HBNN_SCR_TM, panel);
        ch.pacc = (int32_t *)hbnn_scratch(HBNN_SCR_PACC, (size_t)(a->nw * a->nx * nm_max * HBNN_NR * HBNN_LANES) * 4);
        ch.tacc = (int32_t *)hbnn_scratch(HBNN_SCR_TACC, (size_t)(a->nw * a->nx * nm_max * HBNN_NR * HBNN_LANES) * 4);
        bad = !ch.xs || !ch.xm || !ch.xidx || !ch.popx || !ch.xn || !ch.xsc || !ch.xsum || !ch.xmsk || !ch.xtap ||
              !ch.trow || !ch.tcnt || !ch.ts || !ch.tm || !ch.pacc || !ch.tacc || !ch.xpix || (stage && !ch.stg);
        if (bad) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1) nowait
        for (item = 0; item < nch * og; item++) {
            const int64_t c = item / og, g = item % og;
            const int64_t r0 = c * chunk, r1 = hbnn_min64(R, r0 + chunk);
            int64_t q, m, j;
            int any_tap = 0;
            if (bad) continue; /* reported through `failed` */
            FN(pack_x)(a, rows, n_int, r0, r1, kwt, &ch);
            if (a->dense) memset(ch.xtap, 0, (size_t)a->nx); /* the tap path needs word-per-tap rows */
            else FN(tap_lists)(a, rows, &ch, kwt);
            for (j = 0; j < a->nx; j++) any_tap |= ch.xtap[j];
            for (q = g * nq / og; q < (g + 1) * nq / og; q++) {
                const int64_t qq = plan.qord[q];
                if (any_tap) FN(tap_counts)(a, &ch, kwt, nq, qq);
                for (m = 0; m < ch.nm; m += HBNN_G)
                    FN(tiles)(a, rows, R, kwt, nq, qq, &ch, m, (int)hbnn_min64(HBNN_G, ch.nm - m), &plan);
            }
            if (ch.stg) FN(unperm)(a, rows, &ch, &plan, nq * HBNN_LANES);
        }
        /* ch's buffers are the thread's scratch (hbnn_scratch): kept for the next call */
    }
    hbnn_plan_free(&plan);
    free(ps);
    return failed ? -2 : 0;
}

#undef HBNN_G
#undef HBNN_UNPERM /* defined by gemm_avx512.c (1) or prep_body.c (0) */
#undef FN
#undef HBNN_CAT
#undef HBNN_CAT2
