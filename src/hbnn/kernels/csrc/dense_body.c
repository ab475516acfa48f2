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
 * interior micro-panels run unmasked (FF).  Only full activation planes take this path
 * (the tap-compacted paths of tap_body.c assume the word-per-tap layout).
 */

/* A bit-stream writer over the strided row dst[k * HBNN_NR]: C-bit fields appended in order
 * (entry k = t*C + c), whole words written once (no read-modify-write chains through memory). */
typedef struct {
    uint64_t *dst, cur;
    int64_t w, pos;
} FN(bitw);

static inline void FN(bitw_put)(FN(bitw) *s, int64_t C, uint64_t v) {
    s->cur |= v << s->pos; /* pos < 64 */
    if (s->pos + C < 64) {
        s->pos += C;
        return;
    }
    s->dst[s->w++ * HBNN_NR] = s->cur;
    s->cur = s->pos + C > 64 ? v >> (64 - s->pos) : 0; /* pos > 0 here, as C < 64 */
    s->pos += C - 64;
}

/* Flush the open word and zero the row's remaining words up to kwt. */
static inline void FN(bitw_end)(FN(bitw) *s, int64_t kwt) {
    if (s->pos) s->dst[s->w++ * HBNN_NR] = s->cur;
    for (; s->w < kwt; s->w++) s->dst[s->w * HBNN_NR] = 0;
}

/* Row rw of plane j (micro-panel slot jm, lane rr) packed densely: signs, and for a plane
 * treated as masked on this micro-panel its valid bits, their popcount and present words. */
static void FN(pack_row_dense)(const hbnn_gemm_args *a, const hbnn_row *rw, int interior, int64_t kwt,
                               hbnn_chunk *ch, int64_t j, int64_t jm, int64_t rr) {
    const int64_t C = a->C, rin = a->B * a->H * a->W, base = jm * kwt;
    const int64_t pix0 = (rw->b * a->H + rw->y0) * a->W + rw->x0;
    const int masked = ch->xmsk[jm] != HBNN_ST_FULL;
    const uint64_t valid = C == 64 ? ~0ULL : (1ULL << C) - 1;
    const uint64_t *xs = a->x_signs + j * rin;
    FN(bitw) ws = {ch->xs + base * HBNN_NR + rr, 0, 0, 0}, wm = {ch->xm + base * HBNN_NR + rr, 0, 0, 0};
    const uint64_t *dstm = wm.dst;
    int32_t *idx = ch->xidx + (jm * HBNN_NR + rr) * kwt, ni = 0;
    int64_t ki, kj, k, pop = 0;
    for (ki = 0; ki < a->kh; ki++) {
        const int64_t iy = rw->y0 + ki * a->dh;
        for (kj = 0; kj < a->kw; kj++) {
            const int64_t ix = rw->x0 + kj * a->dw;
            const int inb = interior || (iy >= 0 && iy < a->H && ix >= 0 && ix < a->W);
            FN(bitw_put)(&ws, C, inb ? xs[pix0 + ki * a->dh * a->W + kj * a->dw] : 0);
            if (masked) {
                FN(bitw_put)(&wm, C, inb ? valid : 0);
                pop += inb ? C : 0;
            }
        }
    }
    FN(bitw_end)(&ws, kwt);
    if (masked) FN(bitw_end)(&wm, kwt);
    if (masked)
        for (k = 0; k < kwt; k++) {
            idx[ni] = (int32_t)k;
            ni += dstm[k * HBNN_NR] != 0;
        }
    ch->popx[jm * HBNN_NR + rr] = (int32_t)pop;
    ch->xn[jm * HBNN_NR + rr] = ni;
    ch->xsc[jm * HBNN_NR + rr] = a->x_scales[a->x_scale_per_row ? j * a->B + rw->b : j];
}
