/* Dense taps for narrow convolutions (C < 64), included by gemm_body.c once per variant.
 *
 * The implicit GEMM normally gives each (output pixel, kernel tap) one 64-bit word per
 * ceil(C/64), so for C = 16 three quarters of every word is padding.  With a->dense set,
 * the K = kh*kw*C entries of a row are packed densely in OHWI order:
 *   entry k = t*C + c  (tap t = ki*kw + kj, channel c)  ->  bit k % 64 of word k / 64,
 * kwt = ceil(K/64) words, and the weight is prepared from its (O, kh*kw*C) flatten packed
 * the same way (a conv weight's OHWI flatten is already this order).  The dot counts are
 * unchanged, c_ij = sum_k m_w m_x (+-1): only the grouping of the K entries into words
 * differs, and pad bits (k >= K) are zero on both sides.
 *
 * Zero padding: an out-of-image tap contributes zero words; on border micro-panels the
 * (full) activation plane is treated as masked with the valid-bit pattern (the C low bits
 * of each in-image tap), exactly as the word-per-tap layout does, so counts stay exact and
 * interior micro-panels run unmasked (FF).  A masked activation plane packs its C mask bits
 * per in-image tap the same way (mask popcount and present words per row, so x_status and
 * the word lists work unchanged); the tap-compacted paths of tap_body.c assume the
 * word-per-tap layout and are off under dense taps.
 */

/* Row rw of plane j (micro-panel slot jm, lane rr) packed densely: signs, and for a plane
 * treated as masked on this micro-panel its mask bits (a masked plane's masks, else the
 * valid bits of in-image taps), their popcount and present words. */
static inline __attribute__((always_inline)) void
FN(pack_row_dense_body)(const hbnn_gemm_args *a, const hbnn_row *rw, int interior, int64_t kwt, hbnn_chunk *ch,
                        int64_t j, int64_t jm, int64_t rr, const int64_t C, const int64_t kh, const int64_t kw) {
    /* Geometry in locals and the bit-stream state in registers: the stores below go through
     * restrict pointers, so nothing is reloaded from *a or *ch between taps.  With C, kh, kw
     * compile-time constants (pack_row_dense) the tap loops unroll and every shift is fixed. */
    const int64_t dh = a->dh, dw = a->dw, H = a->H, W = a->W;
    const int64_t y0 = rw->y0, x0 = rw->x0, base = jm * kwt;
    const int masked = ch->xmsk[jm] != HBNN_ST_FULL;
    const uint64_t valid = (1ULL << C) - 1; /* C < 64 */
    const int64_t pix0 = j * a->B * H * W + (rw->b * H + y0) * W + x0;
    const uint64_t *restrict xs = a->x_signs + pix0;
    const uint64_t *restrict xm = a->x_full[j] ? NULL : a->x_masks + pix0; /* a masked plane's masks */
    uint64_t *restrict dst = ch->xs + base * HBNN_NR + rr, *restrict dstm = ch->xm + base * HBNN_NR + rr;
    int32_t *idx = ch->xidx + (jm * HBNN_NR + rr) * kwt, ni = 0;
    uint64_t cs = 0, cm = 0; /* the open word of signs / valid bits, filled from bit pos up */
    int64_t ki, kj, k, pop = 0, pos = 0, w = 0;
    for (ki = 0; ki < kh; ki++) {
        const int64_t iy = y0 + ki * dh;
        const int row_in = interior || (iy >= 0 && iy < H);
        for (kj = 0; kj < kw; kj++) {
            const int64_t ix = x0 + kj * dw;
            const int inb = interior || (row_in && ix >= 0 && ix < W);
            const int64_t off = ki * dh * W + kj * dw;
            const uint64_t v = inb ? xs[off] : 0, mv = !inb ? 0 : xm ? xm[off] : valid;
            cs |= v << pos; /* pos < 64 */
            cm |= mv << pos;
            pop += xm ? HBNN_POP(mv) : inb ? C : 0;
            if (pos + C < 64) {
                pos += C;
                continue;
            }
            dst[w * HBNN_NR] = cs;
            if (masked) dstm[w * HBNN_NR] = cm;
            w++;
            cs = pos + C > 64 ? v >> (64 - pos) : 0; /* pos > 0 here, as C < 64 */
            cm = pos + C > 64 ? mv >> (64 - pos) : 0;
            pos += C - 64;
        }
    }
    for (; w < kwt; w++, cs = cm = 0) { /* the open word, then zero words up to kwt */
        dst[w * HBNN_NR] = cs;
        if (masked) dstm[w * HBNN_NR] = cm;
    }
    if (masked)
        for (k = 0; k < kwt; k++) {
            idx[ni] = (int32_t)k;
            ni += dstm[k * HBNN_NR] != 0;
        }
    ch->popx[jm * HBNN_NR + rr] = masked ? (int32_t)pop : 0;
    ch->xn[jm * HBNN_NR + rr] = ni;
    ch->xsc[jm * HBNN_NR + rr] = a->x_scales[a->x_scale_per_row ? j * a->B + rw->b : j];
}

/* The rows of an interior micro-panel of a full plane (status FULL: no bounds, no masks),
 * with the geometry as compile-time constants: tap t of a row reads CW words of its input
 * pixel and places word c at bit k = t*TB + 64 c of the row (word k / 64, shift k % 64, the
 * high part of a straddling word into the next one), all in registers, then stores the
 * row once.  Dense taps (a->dense, C < 64): TB = C, CW = 1, the same words as
 * pack_row_dense_body; word-per-tap rows: TB = 64 CW, a plain copy of each tap's words,
 * the same words as pack_row.  Border micro-panels and masked planes keep those. */
static inline __attribute__((always_inline)) void
FN(pack_panel_body)(const hbnn_gemm_args *a, const hbnn_row *rows, int nrow, hbnn_chunk *ch, int64_t j,
                    int64_t jm, const int64_t TB, const int64_t CW, const int64_t KH, const int64_t KW) {
    enum { MAXW = 18 };
    const int64_t nwd = (KH * KW * TB + 63) / 64, H = a->H, W = a->W, dh = a->dh, dw = a->dw;
    const uint64_t *restrict xs = a->x_signs + j * a->B * H * W * CW;
    uint64_t *restrict dst = ch->xs + jm * nwd * HBNN_NR;
    const float *sc = a->x_scales + (a->x_scale_per_row ? j * a->B : j);
    int r;
    for (r = 0; r < nrow; r++) {
        const hbnn_row *rw = rows + r;
        const uint64_t *restrict px = xs + ((rw->b * H + rw->y0) * W + rw->x0) * CW;
        uint64_t wd[MAXW] = {0};
        int64_t ki, kj, c, w;
#pragma GCC unroll 16
        for (ki = 0; ki < KH; ki++)
#pragma GCC unroll 16
            for (kj = 0; kj < KW; kj++)
#pragma GCC unroll 4
                for (c = 0; c < CW; c++) {
                    const int64_t k = (ki * KW + kj) * TB + 64 * c, sh = k % 64;
                    const uint64_t v = px[(ki * dh * W + kj * dw) * CW + c];
                    wd[k / 64] |= v << sh;
                    if (sh + TB > 64) wd[k / 64 + 1] |= v >> (64 - sh);
                }
#pragma GCC unroll 18
        for (w = 0; w < nwd; w++) dst[w * HBNN_NR + r] = wd[w];
        ch->popx[jm * HBNN_NR + r] = 0;
        ch->xn[jm * HBNN_NR + r] = 0;
        ch->xsc[jm * HBNN_NR + r] = sc[a->x_scale_per_row ? rw->b : 0];
    }
}

/* Packs the full planes of interior micro-panel m (rows[0..nrow)) of the 3x3 geometries with
 * a constant-offset packer (dense taps C 8/16/32; word-per-tap C 64/128, i.e. cw 1/2);
 * returns the bit set of planes packed (0: none, pack_row packs every plane row by row). */
static uint64_t FN(pack_panel)(const hbnn_gemm_args *a, const hbnn_row *rows, int nrow, hbnn_chunk *ch, int64_t m) {
    const int dense = a->dense && (a->C == 8 || a->C == 16 || a->C == 32);
    const int wide = !a->dense && (a->C == 64 || a->C == 128);
    uint64_t done = 0;
    int64_t j;
    if (a->kh != 3 || a->kw != 3 || !(dense || wide)) return 0;
    for (j = 0; j < a->nx; j++) {
        const int64_t jm = j * ch->nm + m;
        if (ch->xpix[j] || ch->xmsk[jm] != HBNN_ST_FULL) continue;
        switch (a->C) {
        case 8: FN(pack_panel_body)(a, rows, nrow, ch, j, jm, 8, 1, 3, 3); break;
        case 16: FN(pack_panel_body)(a, rows, nrow, ch, j, jm, 16, 1, 3, 3); break;
        case 32: FN(pack_panel_body)(a, rows, nrow, ch, j, jm, 32, 1, 3, 3); break;
        case 64: FN(pack_panel_body)(a, rows, nrow, ch, j, jm, 64, 1, 3, 3); break;
        default: FN(pack_panel_body)(a, rows, nrow, ch, j, jm, 128, 2, 3, 3); break;
        }
        done |= 1ULL << j;
    }
    return done;
}

/* pack_row_dense_body with the common narrow 3x3 geometries as constants. */
static void FN(pack_row_dense)(const hbnn_gemm_args *a, const hbnn_row *rw, int interior, int64_t kwt,
                               hbnn_chunk *ch, int64_t j, int64_t jm, int64_t rr) {
    if (a->kh == 3 && a->kw == 3) {
        switch (a->C) {
        case 8: FN(pack_row_dense_body)(a, rw, interior, kwt, ch, j, jm, rr, 8, 3, 3); return;
        case 16: FN(pack_row_dense_body)(a, rw, interior, kwt, ch, j, jm, rr, 16, 3, 3); return;
        case 32: FN(pack_row_dense_body)(a, rw, interior, kwt, ch, j, jm, rr, 32, 3, 3); return;
        default: FN(pack_row_dense_body)(a, rw, interior, kwt, ch, j, jm, rr, a->C, 3, 3); return;
        }
    }
    FN(pack_row_dense_body)(a, rw, interior, kwt, ch, j, jm, rr, a->C, a->kh, a->kw);
}
