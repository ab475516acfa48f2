/* Prepared weights and the output-row order, compiled once per SIMD variant (included by
 * gemm_<variant>.c before gemm_body.c, with HBNN_SUFFIX and HBNN_POP defined).
 *
 * Prepared weight (hbnn_prepare_weight): the 16-row panels the micro-kernels read, built once
 * per weight instead of once per call, plus what lets the GEMM skip work:
 *  - the state of every (plane i, row o): ABSENT (mask all zero), FULL (mask = valid pattern)
 *    or MASKED, and its present words (nonzero mask words);
 *  - a row permutation: when every row is ABSENT or FULL in every plane (one bitwidth per
 *    output channel), rows are sorted stably by their set of present planes, so panels are
 *    uniform (the GEMM writes panel row r to output column p_perm[r]);
 *  - the status of every (plane, panel): ABSENT (skipped), FULL (no mask reads), MASKED
 *    (dense masked micro-kernel) or SPARSE (per-row word lists, when cheaper by HBNN_SP_*).
 *
 * Output-row order (row_order, x_sort): interior pixels first (no border masks), and within
 * the interior and the border, rows sorted stably by their activation-plane states when at
 * least half of the rows are uniform (every plane absent or full on every input pixel the row
 * reads: per-sample bitwidths), so micro-panels are uniform too.
 */
#ifndef HBNN_SUFFIX
#error "prep_body.c is included by gemm_<variant>.c"
#endif

#define HBNN_CAT2(a, b) a##_##b
#define HBNN_CAT(a, b) HBNN_CAT2(a, b)
#define FN(name) HBNN_CAT(name, HBNN_SUFFIX)

/* State of row o of weight plane i; *present = its words with a nonzero mask. */
static int FN(w_row_state)(const hbnn_gemm_args *a, int64_t i, int64_t o, int64_t kwt, int32_t *present) {
    const uint64_t *m;
    int64_t k, nz = 0;
    int full = 1;
    if (a->w_full[i]) {
        *present = (int32_t)kwt;
        return HBNN_ST_FULL;
    }
    m = a->w_masks + (i * a->O + o) * kwt;
    for (k = 0; k < kwt; k++) {
        nz += m[k] != 0;
        full &= m[k] == hbnn_valid_word(k % a->cw, a->cw, a->C);
    }
    *present = (int32_t)nz;
    return full ? HBNN_ST_FULL : nz ? HBNN_ST_MASKED : HBNN_ST_ABSENT;
}

/* perm[0..Op): rows sorted stably by present-plane set (most planes first) when every row is
 * all-or-nothing in every plane and the sets differ; else the identity.  Returns 1 if sorted. */
static int FN(w_perm)(const hbnn_gemm_args *a, const uint8_t *st, int64_t Op, int64_t *perm) {
    int64_t start[257], o, i, first_key = -1;
    int differ = 0, ok = 1;
    for (o = 0; o < Op; o++) perm[o] = o < a->O ? o : -1;
    memset(start, 0, sizeof(start));
    for (o = 0; o < a->O && ok; o++) {
        int64_t key = 0;
        for (i = 0; i < a->nw; i++) {
            const int s = st[i * a->O + o];
            ok &= s != HBNN_ST_MASKED;
            key |= (int64_t)(s == HBNN_ST_FULL) << i;
        }
        differ |= first_key >= 0 && key != first_key;
        if (first_key < 0) first_key = key;
        start[256 - key]++; /* bucket 255 - key, counted one slot up for the prefix sum */
    }
    if (!ok || !differ) return 0;
    for (i = 1; i < 257; i++) start[i] += start[i - 1];
    differ = 0;
    for (o = 0; o < a->O; o++) {
        int64_t key = 0, r;
        for (i = 0; i < a->nw; i++) key |= (int64_t)(st[i * a->O + o] == HBNN_ST_FULL) << i;
        r = start[255 - key]++;
        perm[r] = o;
        differ |= r != o;
    }
    return differ; /* already in order: the identity */
}

/* Panel t = i*nq + q of the prepared weight: words, masks, popcounts, scales, status and
 * (SPARSE) the rows' present-word lists. */
static void FN(w_panel)(hbnn_gemm_args *a, const uint8_t *st, const int32_t *np, int64_t kwt,
                        int64_t nq, int64_t t) {
    const int64_t i = t / nq, q = t % nq, Op = nq * HBNN_LANES;
    const int masked = !a->w_full[i];
    const int32_t kfull = (int32_t)(a->kh * a->kw * a->C);
    int64_t l, k, wsum = 0, nlive = 0, nabs = 0, nfull = 0;
    int status;
    for (l = 0; l < HBNN_LANES; l++) {
        const int64_t row = q * HBNN_LANES + l, o = a->p_perm[row];
        const uint64_t *s = o >= 0 ? a->w_signs + (i * a->O + o) * kwt : NULL;
        const uint64_t *m = o >= 0 && masked ? a->w_masks + (i * a->O + o) * kwt : NULL;
        int64_t pop = 0;
        for (k = 0; k < kwt; k++) a->p_ws[(t * kwt + k) * HBNN_LANES + l] = s ? s[k] : 0;
        if (masked) {
            for (k = 0; k < kwt; k++) {
                const uint64_t mv = m ? m[k] : 0;
                a->p_wm[(t * kwt + k) * HBNN_LANES + l] = mv;
                pop += HBNN_POP(mv);
            }
        }
        a->p_popw[t * HBNN_LANES + l] = o < 0 ? 0 : masked ? (int32_t)pop : kfull;
        a->p_wsc[i * Op + row] = o < 0 ? 0.0f : a->w_scales[a->w_scale_per_row ? i * a->O + o : i];
        a->p_wn[i * Op + row] = 0;
        if (o < 0) continue;
        nlive++;
        nabs += st[i * a->O + o] == HBNN_ST_ABSENT;
        nfull += st[i * a->O + o] == HBNN_ST_FULL;
        wsum += np[i * a->O + o];
    }
    status = nabs == nlive ? HBNN_ST_ABSENT : nfull == nlive ? HBNN_ST_FULL
           : HBNN_SP_FIX_W + wsum * HBNN_SP_WORD < HBNN_SP_UNIT * kwt ? HBNN_ST_SPARSE : HBNN_ST_MASKED;
    a->p_wst[t] = (uint8_t)status;
    if (status != HBNN_ST_SPARSE) return;
    for (l = 0; l < HBNN_LANES; l++) {
        const int64_t row = q * HBNN_LANES + l;
        int32_t *idx = a->p_widx + (i * Op + row) * kwt, n = 0;
        for (k = 0; k < kwt; k++)
            if (a->p_wm[(t * kwt + k) * HBNN_LANES + l]) idx[n++] = (int32_t)k;
        a->p_wn[i * Op + row] = n;
    }
}

static int FN(hbnn_prepare_w)(hbnn_gemm_args *a) {
    const int64_t kwt = a->kh * a->kw * a->cw, nq = (a->O + HBNN_LANES - 1) / HBNN_LANES;
    const int nt = a->nthreads > 0 ? (int)a->nthreads : 1;
    int64_t i, o, t;
    int any_masked = 0;
    uint8_t *st = (uint8_t *)hbnn_alloc((size_t)(a->nw * a->O));
    int32_t *np = (int32_t *)hbnn_alloc((size_t)(a->nw * a->O) * 4);
    for (i = 0; i < a->nw; i++) any_masked |= !a->w_full[i];
    if (!st || !np || (any_masked && (!a->w_masks || !a->p_wm || !a->p_widx))) {
        free(st); free(np);
        return st && np ? -3 : -2;
    }
    for (i = 0; i < a->nw; i++)
        for (o = 0; o < a->O; o++) st[i * a->O + o] = (uint8_t)FN(w_row_state)(a, i, o, kwt, np + i * a->O + o);
    a->p_permuted = FN(w_perm)(a, st, nq * HBNN_LANES, a->p_perm);
#pragma omp parallel for schedule(guided) num_threads(nt) if (a->nw * nq * kwt > 65536)
    for (t = 0; t < a->nw * nq; t++) FN(w_panel)(a, st, np, kwt, nq, t);
    free(st);
    free(np);
    return 0;
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

/* State (ABSENT / FULL / MASKED) of every input pixel in each masked activation plane;
 * pixp[j] = 1 when no pixel of masked plane j is MASKED (a pixel plane). */
static void FN(pixel_states)(const hbnn_gemm_args *a, uint8_t *ps, uint8_t *pixp) {
    const int64_t rin = a->B * a->H * a->W, cw = a->cw;
    int64_t j, p, c;
    for (j = 0; j < a->nx; j++) {
        pixp[j] = 0;
        if (a->x_full[j]) continue;
        pixp[j] = 1;
        for (p = 0; p < rin; p++) {
            const uint64_t *m = a->x_masks + (j * rin + p) * cw;
            int nz = 0, full = 1;
            for (c = 0; c < cw; c++) {
                nz |= m[c] != 0;
                full &= m[c] == hbnn_valid_word(c, cw, a->C);
            }
            ps[j * rin + p] = (uint8_t)(full ? HBNN_ST_FULL : nz ? HBNN_ST_MASKED : HBNN_ST_ABSENT);
            pixp[j] &= full || !nz;
        }
    }
}

/* Key of an output row: sum_j 3^j (state of masked plane j over the in-image pixels the row
 * reads: all ABSENT -> 0, all FULL -> 1, else 2); *uniform = no plane in state 2. */
static int64_t FN(row_key)(const hbnn_gemm_args *a, const uint8_t *ps, const hbnn_row *rw, int *uniform) {
    const int64_t rin = a->B * a->H * a->W;
    int64_t j, ki, kj, key = 0, mult = 1;
    *uniform = 1;
    for (j = 0; j < a->nx; j++) {
        int s = -1;
        if (a->x_full[j]) continue;
        for (ki = 0; ki < a->kh; ki++) {
            const int64_t iy = rw->y0 + ki * a->dh;
            for (kj = 0; kj < a->kw; kj++) {
                const int64_t ix = rw->x0 + kj * a->dw;
                int v;
                if (iy < 0 || iy >= a->H || ix < 0 || ix >= a->W) continue;
                v = ps[j * rin + (rw->b * a->H + iy) * a->W + ix];
                v = v == HBNN_ST_ABSENT ? 0 : v == HBNN_ST_FULL ? 1 : 2;
                s = s < 0 ? v : s == v ? s : 2;
            }
        }
        s = s < 0 ? 0 : s;
        *uniform &= s != 2;
        key += s * mult;
        mult *= 3;
    }
    return key;
}

/* Stable counting sort of rows[r0..r1) by key[] (keys < nkeys); tmp holds r1 - r0 rows. */
static void FN(sort_range)(hbnn_row *rows, const int64_t *key, int64_t r0, int64_t r1, int64_t nkeys,
                           int64_t *start, hbnn_row *tmp) {
    int64_t r, k;
    for (k = 0; k <= nkeys; k++) start[k] = 0;
    for (r = r0; r < r1; r++) start[key[r] + 1]++;
    for (k = 1; k <= nkeys; k++) start[k] += start[k - 1];
    for (r = r0; r < r1; r++) tmp[start[key[r]]++] = rows[r];
    memcpy(rows + r0, tmp, (size_t)(r1 - r0) * sizeof(hbnn_row));
}

/* Sort interior and border rows by row_key when at least half of the rows are uniform and
 * the keys differ (see the file comment; a 64-row sample with under a quarter uniform rows
 * stops early); ps: the pixel states (pixel_states).  Returns 0 or -2 (out of memory). */
static int FN(x_sort)(const hbnn_gemm_args *a, const uint8_t *ps, hbnn_row *rows, int64_t n_int, int64_t R) {
    int64_t j, r, nkeys = 1, nuni = 0;
    int any = 0, differ = 0, uni;
    int64_t *key, *start;
    hbnn_row *tmp;
    for (j = 0; j < a->nx; j++) {
        any |= !a->x_full[j];
        if (!a->x_full[j]) nkeys *= 3;
    }
    if (!any) return 0;
    if (R >= 256) { /* a sample of 64 rows first: most inputs (per-entry maps) stop here */
        int64_t nu = 0;
        for (r = 0; r < 64; r++) {
            FN(row_key)(a, ps, rows + r * (R / 64), &uni);
            nu += uni;
        }
        if (4 * nu < 64) return 0;
    }
    key = (int64_t *)hbnn_alloc((size_t)R * 8);
    start = (int64_t *)hbnn_alloc((size_t)(nkeys + 1) * 8);
    tmp = (hbnn_row *)hbnn_alloc((size_t)R * sizeof(hbnn_row));
    if (!key || !start || !tmp) {
        free(key); free(start); free(tmp);
        return -2;
    }
    for (r = 0; r < R; r++) {
        key[r] = FN(row_key)(a, ps, rows + r, &uni);
        nuni += uni;
        differ |= key[r] != key[0];
    }
    if (differ && 2 * nuni >= R) {
        FN(sort_range)(rows, key, 0, n_int, nkeys, start, tmp);
        FN(sort_range)(rows, key, n_int, R, nkeys, start, tmp);
    }
    free(key); free(start); free(tmp);
    return 0;
}

static int FN(cmp_key)(const void *x, const void *y) {
    const int64_t *u = (const int64_t *)x, *v = (const int64_t *)y;
    return u[0] != v[0] ? (u[0] < v[0] ? -1 : 1) : (u[1] < v[1] ? -1 : u[1] > v[1]);
}

/* Pads every block's runs to the largest count with empty runs (mask 0: no-ops), so the
 * unpermute loop has one trip count per call (no mispredicted exits).  Returns 0 or -2. */
static int FN(pad_runs)(int64_t nn, hbnn_plan *pl) {
    int32_t most = 0, n, k;
    for (n = 0; n < nn; n++) most = pl->rstart[n + 1] - pl->rstart[n] > most ? pl->rstart[n + 1] - pl->rstart[n] : most;
    {
        void *run = hbnn_alloc((size_t)(nn * most) * sizeof(pl->run[0]));
        if (!run) return -2;
        memset(run, 0, (size_t)(nn * most) * sizeof(pl->run[0]));
        for (n = 0; n < nn; n++)
            for (k = pl->rstart[n]; k < pl->rstart[n + 1]; k++)
                memcpy((char *)run + (n * most + k - pl->rstart[n]) * sizeof(pl->run[0]), &pl->run[k], sizeof(pl->run[0]));
        free(pl->run);
        pl->run = run;
    }
    for (n = 0; n <= nn; n++) pl->rstart[n] = n * most;
    return 0;
}

/* Runs of the plan (hbnn_plan rstart / run) from p_perm: a run is a stretch of consecutive
 * panel rows whose columns rise within one 16-column output block.  Returns 0 or -2. */
static int FN(out_runs)(const hbnn_gemm_args *a, int64_t nq, hbnn_plan *pl) {
    const int64_t Op = nq * HBNN_LANES, nn = (a->O + HBNN_LANES - 1) / HBNN_LANES;
    int64_t *inv = (int64_t *)hbnn_alloc((size_t)a->O * 8), n, o, r;
    int32_t nr = 0;
    pl->rstart = (int32_t *)hbnn_alloc((size_t)(nn + 1) * 4);
    pl->run = hbnn_alloc((size_t)(a->O + 1) * sizeof(pl->run[0]));
    if (!inv || !pl->rstart || !pl->run) {
        free(inv); free(pl->rstart); free(pl->run);
        pl->rstart = NULL;
        pl->run = NULL;
        return -2;
    }
    for (r = 0; r < Op; r++)
        if (a->p_perm[r] >= 0) inv[a->p_perm[r]] = r;
    for (n = 0; n < nn; n++) { /* columns in ascending order: a run's staged rows rise too */
        pl->rstart[n] = nr;
        for (o = n * HBNN_LANES; o < hbnn_min64(a->O, (n + 1) * HBNN_LANES); o++) {
            int64_t k;
            for (k = pl->rstart[n]; k < nr; k++) /* the run this staged row extends, if any */
                if (pl->run[k].start + __builtin_popcount(pl->run[k].mask) == inv[o]) break;
            if (k == nr) {
                pl->run[nr].start = (int32_t)inv[o];
                pl->run[nr].mask = 0;
                nr++;
            }
            pl->run[k].mask |= 1u << (o % HBNN_LANES);
        }
    }
    pl->rstart[nn] = nr;
    free(inv);
    return FN(pad_runs)(nn, pl);
}

/* The output plan of a call (hbnn_plan, hbnn_kernels.c): panel order and per-panel blocks from p_perm (or
 * the identity).  Returns 0 or -2 (out of memory; nothing to free then). */
static int FN(out_plan)(const hbnn_gemm_args *a, int64_t nq, hbnn_plan *pl) {
    int64_t *key = (int64_t *)hbnn_alloc((size_t)nq * 16), q;
    int32_t nb = 0;
    pl->qord = (int64_t *)hbnn_alloc((size_t)nq * 8);
    pl->bstart = (int32_t *)hbnn_alloc((size_t)(nq + 1) * 4);
    pl->blk = (hbnn_blk *)hbnn_alloc((size_t)nq * HBNN_LANES * sizeof(hbnn_blk));
    if (!key || !pl->qord || !pl->bstart || !pl->blk) {
        free(key); free(pl->qord); free(pl->bstart); free(pl->blk);
        return -2;
    }
    for (q = 0; q < nq; q++) {
        int64_t l, first = a->O;
        pl->bstart[q] = nb;
        for (l = 0; l < HBNN_LANES; l++) {
            const int64_t row = q * HBNN_LANES + l;
            const int64_t o = a->p_permuted ? a->p_perm[row] : row < a->O ? row : -1;
            int32_t b;
            if (o < 0) continue;
            first = o < first ? o : first;
            for (b = pl->bstart[q]; b < nb && pl->blk[b].base != o / HBNN_LANES * HBNN_LANES; b++) {}
            if (b == nb) {
                pl->blk[nb].base = o / HBNN_LANES * HBNN_LANES;
                pl->blk[nb].mask = 0;
                memset(pl->blk[nb].idx, 0, sizeof(pl->blk[nb].idx));
                nb++;
            }
            pl->blk[b].mask |= 1u << (o % HBNN_LANES);
            pl->blk[b].idx[o % HBNN_LANES] = (int32_t)l;
        }
        key[2 * q] = a->p_permuted ? first : q;
        key[2 * q + 1] = q;
    }
    pl->bstart[nq] = nb;
    pl->rstart = NULL;
    pl->run = NULL;
    if (a->p_permuted && FN(out_runs)(a, nq, pl) != 0) {
        free(key);
        hbnn_plan_free(pl);
        return -2;
    }
    qsort(key, (size_t)nq, 16, FN(cmp_key));
    for (q = 0; q < nq; q++) pl->qord[q] = key[2 * q + 1];
    free(key);
    return 0;
}

#ifndef HBNN_HAVE_PUT
/* One tile row src[0..16) (32-bit floats or counts) into the output row dst by the panel's
 * blocks b[0..nb) (hbnn_blk): dst[base + c] = src[idx[c]] for each bit c of mask.  With epi
 * (floats only) each value first gets the epilogue of hbnn_gemm_args at its column col:
 * + e_bias[col], + res[col] (res: the residual's row, or NULL), then the clamp. */
static inline void FN(put_row)(void *dst, const void *src, const hbnn_blk *b, int nb, const hbnn_gemm_args *epi,
                               const float *res) {
    int e;
    for (e = 0; e < nb; e++) {
        uint32_t m = b[e].mask;
        while (m) {
            const int c = __builtin_ctz(m);
            const int64_t col = b[e].base + c;
            if (epi) {
                float v = ((const float *)src)[b[e].idx[c]];
                if (epi->e_bias) v = v + epi->e_bias[col];
                if (res) v = v + res[col];
                if (epi->e_clamp) {
                    v = v < epi->e_lo ? epi->e_lo : v;
                    v = v > epi->e_hi ? epi->e_hi : v;
                }
                ((float *)dst)[col] = v;
            } else {
                memcpy((char *)dst + col * 4, (const char *)src + b[e].idx[c] * 4, 4);
            }
            m &= m - 1;
        }
    }
}
#endif

#ifndef HBNN_HAVE_UNPERM
#define HBNN_UNPERM 0
static void FN(unperm)(const hbnn_gemm_args *a, const hbnn_row *rows, const hbnn_chunk *ch, const hbnn_plan *pl,
                       int64_t Op) {
    (void)a; (void)rows; (void)ch; (void)pl; (void)Op; /* staging is AVX-512 only */
}
#endif

#undef FN
#undef HBNN_CAT
#undef HBNN_CAT2
