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
 *                             and for MM also T[r*16+l] = popcount(wm & xm).
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
 * Blocking: weights are repacked once per call into 16-row panels ([k][16] interleaved);
 * activation rows are processed in chunks (hbnn_chunk_rows) repacked into 12-row
 * micro-panels ([k][12]); OpenMP distributes (chunk, group of weight panels) items
 * dynamically; each item streams its weight panels from L2/L3 against an L2-resident chunk.
 */
#ifndef HBNN_SUFFIX
#error "gemm_body.c is included by gemm_<variant>.c"
#endif

#define HBNN_CAT2(a, b) a##_##b
#define HBNN_CAT(a, b) HBNN_CAT2(a, b)
#define FN(name) HBNN_CAT(name, HBNN_SUFFIX)

/* Weight panels: plane i, panel q (rows 16q..16q+15), word k, lane l at
 * ((i*nq + q)*kwt + k)*16 + l; rows >= O are zero.  popw[(i*nq + q)*16 + l] is the mask
 * popcount of a masked plane's row.  An orphaned `omp for`: serial when called outside a
 * parallel region. */
static void FN(pack_w)(const hbnn_gemm_args *a, int64_t kwt, int64_t nq, uint64_t *ws,
                       uint64_t *wm, int32_t *popw) {
    int64_t t;
#pragma omp for schedule(guided)
    for (t = 0; t < a->nw * nq; t++) {
        const int64_t i = t / nq, q = t % nq;
        const int masked = !a->w_full[i];
        int64_t l, k;
        for (l = 0; l < HBNN_LANES; l++) {
            const int64_t row = q * HBNN_LANES + l;
            const int live = row < a->O;
            const uint64_t *s = a->w_signs + (i * a->O + row) * kwt;
            const uint64_t *m = masked ? a->w_masks + (i * a->O + row) * kwt : NULL;
            int64_t pop = 0;
            for (k = 0; k < kwt; k++) {
                ws[(t * kwt + k) * HBNN_LANES + l] = live ? s[k] : 0;
                if (masked) {
                    const uint64_t mv = live ? m[k] : 0;
                    wm[(t * kwt + k) * HBNN_LANES + l] = mv;
                    pop += HBNN_POP(mv);
                }
            }
            popw[t * HBNN_LANES + l] = (int32_t)pop;
        }
    }
}

/* One output row of the panel: its words (and masks) for every plane, gathered from the
 * input pixels it sees; out-of-image positions (border rows only) are zero words. */
static void FN(pack_row)(const hbnn_gemm_args *a, const hbnn_row *rw, int interior,
                         int64_t kwt, hbnn_chunk *ch, int64_t m, int64_t rr) {
    const int64_t cw = a->cw, rin = a->B * a->H * a->W, nm = ch->nm;
    const int64_t pix0 = (rw->b * a->H + rw->y0) * a->W + rw->x0;
    int64_t ki, kj, j, c;
    for (j = 0; j < a->nx; j++) {
        const int64_t jm = j * nm + m, base = jm * kwt;
        const int masked = ch->xmsk[jm], full = a->x_full[j];
        const uint64_t *xs = a->x_signs + j * rin * cw, *xm = full ? NULL : a->x_masks + j * rin * cw;
        int64_t pop = 0;
        for (ki = 0; ki < a->kh; ki++) {
            const int64_t iy = rw->y0 + ki * a->dh;
            for (kj = 0; kj < a->kw; kj++) {
                const int64_t ix = rw->x0 + kj * a->dw;
                const int inb = interior || (iy >= 0 && iy < a->H && ix >= 0 && ix < a->W);
                const int64_t src = (pix0 + ki * a->dh * a->W + kj * a->dw) * cw;
                uint64_t *dst = ch->xs + (base + (ki * a->kw + kj) * cw) * HBNN_NR + rr;
                uint64_t *dstm = ch->xm + (base + (ki * a->kw + kj) * cw) * HBNN_NR + rr;
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
                }
            }
        }
        ch->popx[jm * HBNN_NR + rr] = (int32_t)pop;
        ch->xsc[jm * HBNN_NR + rr] = a->x_scales[a->x_scale_per_row ? j * a->B + rw->b : j];
    }
}

/* Activation micro-panels of output rows rows[r0..r1) into ch: plane j, micro-panel m,
 * word k, row r at ((j*nm + m)*kwt + k)*12 + r; missing rows are zero.  xmsk[j*nm + m]
 * says whether plane j is treated as masked on micro-panel m (masked plane, or a border
 * row in it); then xm holds its masks and popx[(j*nm + m)*12 + r] their popcounts.
 * xsc[(j*nm + m)*12 + r] is the row's scale of plane j. */
static void FN(pack_x)(const hbnn_gemm_args *a, const hbnn_row *rows, int64_t n_int,
                       int64_t r0, int64_t r1, int64_t kwt, hbnn_chunk *ch) {
    const int64_t nm = (r1 - r0 + HBNN_NR - 1) / HBNN_NR;
    int64_t m, rr, j, k;
    ch->nm = nm;
    ch->r0 = r0;
    ch->r1 = r1;
    for (m = 0; m < nm; m++) {
        const int64_t first = r0 + m * HBNN_NR, last = hbnn_min64(r1, first + HBNN_NR) - 1;
        const int border = last >= n_int;
        for (j = 0; j < a->nx; j++) ch->xmsk[j * nm + m] = !a->x_full[j] || border;
        for (rr = 0; rr < HBNN_NR; rr++) {
            const int64_t idx = first + rr;
            if (idx <= last) {
                FN(pack_row)(a, rows + idx, idx < n_int, kwt, ch, m, rr);
                continue;
            }
            for (j = 0; j < a->nx; j++) { /* padding row of the last micro-panel */
                const int64_t jm = j * nm + m;
                for (k = 0; k < kwt; k++) {
                    ch->xs[(jm * kwt + k) * HBNN_NR + rr] = 0;
                    if (ch->xmsk[jm]) ch->xm[(jm * kwt + k) * HBNN_NR + rr] = 0;
                }
                ch->popx[jm * HBNN_NR + rr] = 0;
                ch->xsc[jm * HBNN_NR + rr] = 0.0f;
            }
        }
    }
}

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

/* One tile: output rows rows[first..first+nr) (micro-panel m of ch) x weight rows
 * 16q..16q+15, all plane pairs in the order i (weights) outer, j (activations) inner. */
static void FN(tile)(const hbnn_gemm_args *a, const hbnn_row *rows, int64_t R, int64_t kwt,
                     int64_t nq, int64_t q, const uint64_t *ws, const uint64_t *wm,
                     const int32_t *popw, const hbnn_chunk *ch, int64_t m) {
    int32_t P[HBNN_NR * HBNN_LANES], T[HBNN_NR * HBNN_LANES], ct[HBNN_NR * HBNN_LANES];
    float yt[HBNN_NR * HBNN_LANES], swl[HBNN_LANES];
    const int64_t o0 = q * HBNN_LANES, ov = hbnn_min64(HBNN_LANES, a->O - o0);
    const int64_t first = ch->r0 + m * HBNN_NR, nm = ch->nm;
    const int nr = (int)hbnn_min64(HBNN_NR, ch->r1 - first);
    const int32_t kfull = (int32_t)(a->kh * a->kw * a->C);
    int64_t i, j, r, l;
    for (i = 0; i < a->nw; i++) {
        const int64_t pan = (i * nq + q) * kwt * HBNN_LANES;
        const int wmasked = !a->w_full[i];
        for (l = 0; l < HBNN_LANES; l++)
            swl[l] = l >= ov ? 0.0f : a->w_scales[a->w_scale_per_row ? i * a->O + o0 + l : i];
        for (j = 0; j < a->nx; j++) {
            const int64_t jm = j * nm + m, xp = jm * kwt * HBNN_NR;
            const int xmasked = ch->xmsk[jm], mode = wmasked * 2 + xmasked;
            FN(uk)(mode, ws + pan, wmasked ? wm + pan : NULL, ch->xs + xp,
                   xmasked ? ch->xm + xp : NULL, kwt, nr, P, T);
            FN(epilogue)(mode, nr, kfull, P, T, ch->popx + jm * HBNN_NR,
                         popw + (i * nq + q) * HBNN_LANES, swl, ch->xsc + jm * HBNN_NR,
                         i == 0 && j == 0, a->y ? yt : NULL, a->counts ? ct : NULL);
            if (a->counts) {
                for (r = 0; r < nr; r++) {
                    int32_t *dst = a->counts + ((i * a->nx + j) * R + rows[first + r].p) * a->O + o0;
                    memcpy(dst, ct + r * HBNN_LANES, (size_t)ov * sizeof(int32_t));
                }
            }
        }
    }
    if (a->y) {
        for (r = 0; r < nr; r++)
            memcpy(a->y + rows[first + r].p * a->O + o0, yt + r * HBNN_LANES,
                   (size_t)ov * sizeof(float));
    }
}

/* Output rows, interior pixels (every input position inside the image) first; each with
 * its sample b and the top-left input position (y0, x0) of its receptive field. */
static int64_t FN(row_order)(const hbnn_gemm_args *a, hbnn_row *rows) {
    int64_t b, oy, ox, n_int = 0, nb = 0, pass;
    for (pass = 0; pass < 2; pass++) {
        int64_t p = 0;
        for (b = 0; b < a->B; b++) {
            for (oy = 0; oy < a->oh; oy++) {
                const int64_t y0 = oy * a->sh - a->ph;
                const int yin = y0 >= 0 && y0 + (a->kh - 1) * a->dh < a->H;
                for (ox = 0; ox < a->ow; ox++, p++) {
                    const int64_t x0 = ox * a->sw - a->pw;
                    const int in = yin && x0 >= 0 && x0 + (a->kw - 1) * a->dw < a->W;
                    hbnn_row *rw;
                    if (pass == 0) {
                        n_int += in;
                        continue;
                    }
                    rw = in ? rows + (p - nb) : rows + n_int + nb++;
                    rw->p = p;
                    rw->b = b;
                    rw->y0 = y0;
                    rw->x0 = x0;
                }
            }
        }
    }
    return n_int;
}

static int FN(hbnn_gemm)(const hbnn_gemm_args *a) {
    const int64_t kwt = a->kh * a->kw * a->cw, R = a->B * a->oh * a->ow;
    const int64_t nq = (a->O + HBNN_LANES - 1) / HBNN_LANES;
    const int nt = a->nthreads > 0 ? (int)a->nthreads : 1;
    const int64_t chunk = hbnn_chunk_rows(kwt, a->nx, R, nt);
    int64_t nch, og, n_int, i;
    int any_wm = 0, failed = 0;
    hbnn_row *rows;
    uint64_t *ws, *wm = NULL;
    int32_t *popw;
    if (R == 0) return 0;
    for (i = 0; i < a->nw; i++) any_wm |= !a->w_full[i];
    nch = (R + chunk - 1) / chunk;
    og = nch >= 2 * nt ? 1 : hbnn_min64(nq, nt);
    rows = (hbnn_row *)hbnn_alloc((size_t)R * sizeof(hbnn_row));
    ws = (uint64_t *)hbnn_alloc((size_t)(a->nw * nq * kwt * HBNN_LANES) * 8);
    if (any_wm) wm = (uint64_t *)hbnn_alloc((size_t)(a->nw * nq * kwt * HBNN_LANES) * 8);
    popw = (int32_t *)hbnn_alloc((size_t)(a->nw * nq * HBNN_LANES) * 4);
    if (!rows || !ws || (any_wm && !wm) || !popw) {
        free(rows); free(ws); free(wm); free(popw);
        return -2;
    }
    n_int = FN(row_order)(a, rows);
    /* Weight panels: serially unless large.  Every barrier waits for the slowest thread,
     * and on a busy machine a descheduled thread costs a whole time slice, so the compute
     * region below has no barrier but its end. */
    if (a->nw * nq * kwt * HBNN_LANES * 8 * (any_wm ? 2 : 1) > (8 << 20)) {
#pragma omp parallel num_threads(nt)
        FN(pack_w)(a, kwt, nq, ws, wm, popw);
    } else {
        FN(pack_w)(a, kwt, nq, ws, wm, popw);
    }
#pragma omp parallel num_threads(nt)
    {
        const int64_t nm_max = chunk / HBNN_NR;
        const size_t panel = (size_t)(a->nx * nm_max * kwt * HBNN_NR) * 8;
        hbnn_chunk ch;
        int64_t item;
        int bad;
        ch.xs = (uint64_t *)hbnn_alloc(panel);
        ch.xm = (uint64_t *)hbnn_alloc(panel);
        ch.popx = (int32_t *)hbnn_alloc((size_t)(a->nx * nm_max * HBNN_NR) * 4);
        ch.xsc = (float *)hbnn_alloc((size_t)(a->nx * nm_max * HBNN_NR) * 4);
        ch.xmsk = (uint8_t *)hbnn_alloc((size_t)(a->nx * nm_max));
        bad = !ch.xs || !ch.xm || !ch.popx || !ch.xsc || !ch.xmsk;
        if (bad) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1) nowait
        for (item = 0; item < nch * og; item++) {
            const int64_t c = item / og, g = item % og;
            const int64_t r0 = c * chunk, r1 = hbnn_min64(R, r0 + chunk);
            int64_t q, m;
            if (bad) continue; /* reported through `failed` */
            FN(pack_x)(a, rows, n_int, r0, r1, kwt, &ch);
            for (q = g * nq / og; q < (g + 1) * nq / og; q++)
                for (m = 0; m < ch.nm; m++) FN(tile)(a, rows, R, kwt, nq, q, ws, wm, popw, &ch, m);
        }
        free(ch.xs); free(ch.xm); free(ch.popx); free(ch.xsc); free(ch.xmsk);
    }
    free(rows); free(ws); free(wm); free(popw);
    return failed ? -2 : 0;
}

#undef FN
#undef HBNN_CAT
#undef HBNN_CAT2
