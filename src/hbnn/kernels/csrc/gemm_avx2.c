/* AVX2 variant: 256-bit xor/and, nibble-table popcount (vpshufb) summed per 64-bit lane
 * with vpsadbw.  Included by hbnn_kernels.c; see gemm_body.c for the micro-kernel contract. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
#endif

#define HBNN_SUFFIX avx2
#define HBNN_POP(v) ((int64_t)__builtin_popcountll(v))

/* Per-64-bit-lane popcount of v (as 4 int64 lanes). */
static inline __m256i hbnn_pop256(__m256i v, __m256i lut, __m256i low) {
    const __m256i lo = _mm256_and_si256(v, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    const __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
    return _mm256_sad_epu8(c, _mm256_setzero_si256());
}

/* Rows rb..rb+3 (the panel is zero-padded to HBNN_NR rows) x lanes 4g..4g+3. */
static inline __attribute__((always_inline)) void
hbnn_uk2_block(const int MODE, const uint64_t *ws, const uint64_t *wm, const uint64_t *xs,
               const uint64_t *xm, int64_t kwt, int g, int rb, int32_t *P, int32_t *T) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i acc[4], tac[4];
    int64_t k;
    int r, l;
    for (r = 0; r < 4; r++) acc[r] = tac[r] = _mm256_setzero_si256();
    for (k = 0; k < kwt; k++) {
        const __m256i w = _mm256_load_si256((const __m256i *)(ws + k * HBNN_LANES + 4 * g));
        const __m256i mw = MODE >= 2 ? _mm256_load_si256((const __m256i *)(wm + k * HBNN_LANES + 4 * g))
                                     : w;
#pragma GCC unroll 4
        for (r = 0; r < 4; r++) {
            const __m256i xb = _mm256_set1_epi64x((long long)xs[k * HBNN_NR + rb + r]);
            __m256i d = _mm256_xor_si256(w, xb);
            if (MODE == 1) d = _mm256_and_si256(d, _mm256_set1_epi64x((long long)xm[k * HBNN_NR + rb + r]));
            if (MODE == 2) d = _mm256_and_si256(d, mw);
            if (MODE == 3) {
                const __m256i t = _mm256_and_si256(mw, _mm256_set1_epi64x((long long)xm[k * HBNN_NR + rb + r]));
                d = _mm256_and_si256(d, t);
                tac[r] = _mm256_add_epi64(tac[r], hbnn_pop256(t, lut, low));
            }
            acc[r] = _mm256_add_epi64(acc[r], hbnn_pop256(d, lut, low));
        }
    }
    for (r = 0; r < 4; r++) {
        int64_t a8[4], t8[4];
        _mm256_storeu_si256((__m256i *)a8, acc[r]);
        _mm256_storeu_si256((__m256i *)t8, tac[r]);
        for (l = 0; l < 4; l++) {
            P[(rb + r) * HBNN_LANES + 4 * g + l] = (int32_t)a8[l];
            T[(rb + r) * HBNN_LANES + 4 * g + l] = (int32_t)t8[l];
        }
    }
}

static void uk_avx2(int mode, const uint64_t *ws, const uint64_t *wm, const uint64_t *xs,
                    const uint64_t *xm, int64_t kwt, int nr, int32_t *P, int32_t *T) {
    int g, rb;
    for (g = 0; g < 4; g++) {
        for (rb = 0; rb < nr; rb += 4) {
            switch (mode) {
            case 0: hbnn_uk2_block(0, ws, wm, xs, xm, kwt, g, rb, P, T); break;
            case 1: hbnn_uk2_block(1, ws, wm, xs, xm, kwt, g, rb, P, T); break;
            case 2: hbnn_uk2_block(2, ws, wm, xs, xm, kwt, g, rb, P, T); break;
            default: hbnn_uk2_block(3, ws, wm, xs, xm, kwt, g, rb, P, T); break;
            }
        }
    }
}

#include "prep_body.c"
#include "tap_body.c"
#include "gemm_body.c"
/* One row of up to 64 channels (S = 1), eight 8-float vectors: the scalar residual64 with
 * compare + blend (the same float32 e - mu / e + mu per active entry, so the same bits). */
static inline void row64_avx2(const float *x, const int8_t *bitmap, int64_t base, int64_t k1, int n,
                              const float *mu, uint64_t *sw, uint64_t *mw) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const uint64_t valid = k1 >= 64 ? ~0ULL : (1ULL << k1) - 1;
    __m256 e[8];
    __m256i lv[2];
    int q, p, k;
    for (q = 0; q < 8; q++) {
        const int64_t rem = k1 - 8 * q;
        if (rem >= 8) {
            e[q] = _mm256_loadu_ps(x + base + 8 * q);
        } else {
            float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (k = 0; k < rem; k++) t[k] = x[base + 8 * q + k];
            e[q] = _mm256_loadu_ps(t);
        }
    }
    if (bitmap) {
        int8_t t[64];
        for (k = 0; k < 64; k++) t[k] = k < k1 ? bitmap[base + k] : 0;
        lv[0] = _mm256_loadu_si256((const __m256i *)t);
        lv[1] = _mm256_loadu_si256((const __m256i *)(t + 32));
    }
    for (p = 0; p < n; p++) {
        const __m256 m = _mm256_set1_ps(mu[p]);
        uint64_t s = 0, a = valid;
        if (bitmap && p > 0) { /* plane p > 0 where the level exceeds p (plane 0: every entry) */
            const __m256i pp = _mm256_set1_epi8((char)p);
            a = (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpgt_epi8(lv[0], pp)) |
                (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpgt_epi8(lv[1], pp)) << 32;
            a &= valid;
        }
        for (q = 0; q < 8; q++) {
            const uint32_t on = (uint32_t)(a >> (8 * q)) & 0xFFu;
            const __m256 pos = _mm256_cmp_ps(e[q], _mm256_setzero_ps(), _CMP_GT_OQ);
            const __m256i ov = _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_set1_epi32((int)on), lane_bit),
                                                  _mm256_setzero_si256());
            const __m256 stepped = _mm256_blendv_ps(_mm256_add_ps(e[q], m), _mm256_sub_ps(e[q], m), pos);
            e[q] = _mm256_blendv_ps(e[q], stepped, _mm256_castsi256_ps(ov));
            s |= (uint64_t)((uint32_t)_mm256_movemask_ps(pos) & on) << (8 * q);
        }
        sw[p] = s;
        mw[p] = a;
    }
}
#define HBNN_HAVE_ROW64 1

#include "pack_body.c"
#undef HBNN_HAVE_ROW64
#define HBNN_SEL_ISA 1
#include "select_body.c"
#undef HBNN_SEL_ISA

#undef HBNN_SUFFIX
#undef HBNN_POP

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
