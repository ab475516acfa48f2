/* Algorithm 1 bit-map selection, compiled once per SIMD variant (included by
 * gemm_<variant>.c after pack_body.c, with HBNN_SUFFIX and HBNN_SEL_ISA defined:
 * 0 portable, 1 AVX2, 2 AVX-512).  The maths lives in hbnn/quant/bitmap.py; these are
 * its two data passes, fused with the heuristic key so the key is never materialised.
 *
 * Keys (float32, each a separately rounded IEEE operation, so bit-identical to torch's
 * ``heuristic_key``):  mode 0 middle-out |(|x| - mu)|,  1 bottom-up |x|,  2 top-down -|x|.
 *
 * sel_count: for each bracket j (lo_j <= hi_j), counts #key < lo, #key <= lo, #key < hi,
 *   #key <= hi, and copies the keys strictly inside (lo, hi) to buf + j*(cap+16) while
 *   at most cap of them were seen (the caller compares the count with cap).
 * sel_tie_pos: one past the index of the need-th entry whose key == v (need >= 1).
 * sel_map: out[i] = top - sum_j step_j * [key_i < t_j(i)], where t_j(i) = v_j for
 *   i >= p_j and nextafter(v_j, +inf) (i.e. key <= v_j) for i < p_j.
 * sel_sampled: thresholds from the sample's order statistics, then one map pass.
 * sel_exact: the whole exact selection (hbnn/quant/select_c.py explains the steps):
 *   brackets from the sample's order statistics, one count pass, the cut values from the
 *   small inside sets, tie positions, one map pass.
 */
#ifndef HBNN_SUFFIX
#error "select_body.c is included by gemm_<variant>.c"
#endif

#define HBNN_CAT2(a, b) a##_##b
#define HBNN_CAT(a, b) HBNN_CAT2(a, b)
#define FN(name) HBNN_CAT(name, HBNN_SUFFIX)
#define HBNN_SEL_BLOCK 256 /* entries whose keys are computed into a local array at once */

static inline __attribute__((always_inline)) float FN(sel_key)(float v, int mode, float mu) {
    const float a = __builtin_fabsf(v);
    if (mode == 0) return __builtin_fabsf(a - mu);
    if (mode == 1) return a;
    return -a;
}

/* Keys of x[0..n) (n <= HBNN_SEL_BLOCK) into k[]; a fixed-mode loop the compiler vectorizes. */
static inline __attribute__((always_inline)) void FN(sel_keys)(const float *x, int64_t n, int mode,
                                                               float mu, float *k) {
    int64_t i;
    switch (mode) {
    case 0: for (i = 0; i < n; i++) k[i] = FN(sel_key)(x[i], 0, mu); break;
    case 1: for (i = 0; i < n; i++) k[i] = FN(sel_key)(x[i], 1, mu); break;
    default: for (i = 0; i < n; i++) k[i] = FN(sel_key)(x[i], 2, mu); break;
    }
}

/* Append the keys of k[0..n) strictly inside (lo, hi) to dst[*m...]; dst has cap + 16
 * slots and *m counts all of them (the caller ignores dst once *m > cap). */
static inline void FN(sel_gather)(const float *k, int64_t n, float lo, float hi, float *dst,
                                  int64_t cap, int64_t *m) {
    int64_t i = 0, c = *m;
    /* Branch-free: every group is left-packed and stored at dst + min(c, cap); only the
     * count advances, so stores past cap land in the 16 slack slots and are ignored. */
#if HBNN_SEL_ISA == 2
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(k + i);
        const __mmask16 in = _mm512_cmp_ps_mask(v, vlo, _CMP_GT_OQ) & _mm512_cmp_ps_mask(v, vhi, _CMP_LT_OQ);
        _mm512_storeu_ps(dst + (c < cap ? c : cap), _mm512_maskz_compress_ps(in, v));
        c += __builtin_popcount((unsigned)in);
    }
#elif HBNN_SEL_ISA == 1
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(k + i);
        const int in = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(v, vlo, _CMP_GT_OQ),
                                                        _mm256_cmp_ps(v, vhi, _CMP_LT_OQ)));
        const __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)hbnn_compress_lut[in]));
        _mm256_storeu_ps(dst + (c < cap ? c : cap), _mm256_permutevar8x32_ps(v, perm));
        c += __builtin_popcount((unsigned)in);
    }
#endif
    for (; i < n; i++) {
        if (k[i] > lo && k[i] < hi) {
            if (c < cap) dst[c] = k[i];
            c++;
        }
    }
    *m = c;
}

/* q = (#k < l, #k <= l, #k < h, #k <= h) over k[0..len). */
static __attribute__((noinline)) void FN(sel_count4)(const float *k, int64_t len, float l, float h, int32_t *q) {
    int32_t a = 0, b = 0, c = 0, d = 0;
    int64_t i;
    for (i = 0; i < len; i++) {
        a += k[i] < l;
        b += k[i] <= l;
        c += k[i] < h;
        d += k[i] <= h;
    }
    q[0] = a;
    q[1] = b;
    q[2] = c;
    q[3] = d;
}

static void FN(sel_count)(const float *x, int64_t n, int mode, float mu, int64_t J, const float *lo,
                          const float *hi, int64_t *cnt, float *buf, int64_t cap) {
    float k[HBNN_SEL_BLOCK];
    int64_t s, j;
    for (j = 0; j < 5 * J; j++) cnt[j] = 0; /* [J][5]: lt_lo, le_lo, lt_hi, le_hi, inside */
    for (s = 0; s < n; s += HBNN_SEL_BLOCK) {
        const int64_t len = hbnn_min64(HBNN_SEL_BLOCK, n - s);
        FN(sel_keys)(x + s, len, mode, mu, k);
        for (j = 0; j < J; j++) {
            const float l = lo[j], h = hi[j];
            int32_t q[4];
            FN(sel_count4)(k, len, l, h, q);
            cnt[5 * j] += q[0];
            cnt[5 * j + 1] += q[1];
            cnt[5 * j + 2] += q[2];
            cnt[5 * j + 3] += q[3];
            if (q[2] > q[1]) FN(sel_gather)(k, len, l, h, buf + j * (cap + 16), cap, &cnt[5 * j + 4]);
        }
    }
}

static int64_t FN(sel_tie_pos)(const float *x, int64_t n, int mode, float mu, float v, int64_t need) {
    float k[HBNN_SEL_BLOCK];
    int64_t s, i, seen = 0;
    for (s = 0; s < n; s += HBNN_SEL_BLOCK) {
        const int64_t len = hbnn_min64(HBNN_SEL_BLOCK, n - s);
        int32_t e = 0;
        FN(sel_keys)(x + s, len, mode, mu, k);
        for (i = 0; i < len; i++) e += k[i] == v;
        if (seen + e < need) {
            seen += e;
            continue;
        }
        for (i = 0; i < len; i++) {
            seen += k[i] == v;
            if (seen == need) return s + i + 1;
        }
    }
    return n;
}

/* out[i] = top - sum over 3 cuts of step[j] * [key < t[j]] on [s, e) (step 0 = unused cut). */
static inline __attribute__((always_inline)) void FN(sel_map3)(const float *x, int64_t s, int64_t e,
                                                               int mode, float mu, const float *t,
                                                               const int8_t *step, int8_t top, int first,
                                                               int8_t *out) {
    const float t0 = t[0], t1 = t[1], t2 = t[2];
    const int8_t s0 = step[0], s1 = step[1], s2 = step[2];
    int64_t i;
    for (i = s; i < e; i++) {
        const float k = FN(sel_key)(x[i], mode, mu);
        const int8_t d = (int8_t)(s0 * (int8_t)(k < t0) + s1 * (int8_t)(k < t1) + s2 * (int8_t)(k < t2));
        out[i] = (int8_t)((first ? top : out[i]) - d);
    }
}

static void FN(sel_map)(const float *x, int64_t n, int mode, float mu, int64_t J, const float *v,
                        const int64_t *p, const int8_t *step, int8_t top, int8_t *out) {
    int64_t bounds[HBNN_SEL_MAXCUTS + 2], nb = 0, a, b, g, j;
    bounds[nb++] = 0;
    bounds[nb++] = n;
    for (j = 0; j < J; j++) {
        if (p[j] > 0 && p[j] < n) bounds[nb++] = p[j];
    }
    for (a = 1; a < nb; a++) { /* insertion sort of <= 9 segment bounds */
        const int64_t t = bounds[a];
        for (b = a; b > 0 && bounds[b - 1] > t; b--) bounds[b] = bounds[b - 1];
        bounds[b] = t;
    }
    for (a = 0; a + 1 < nb; a++) {
        const int64_t s = bounds[a], e = bounds[a + 1];
        if (s == e) continue;
        for (g = 0; g < J; g += 3) {
            float t[3] = {0.0f, 0.0f, 0.0f};
            int8_t st[3] = {0, 0, 0};
            for (j = g; j < J && j < g + 3; j++) {
                t[j - g] = s < p[j] ? __builtin_nextafterf(v[j], __builtin_inff()) : v[j];
                st[j - g] = step[j];
            }
            switch (mode) {
            case 0: FN(sel_map3)(x, s, e, 0, mu, t, st, top, g == 0, out); break;
            case 1: FN(sel_map3)(x, s, e, 1, mu, t, st, top, g == 0, out); break;
            default: FN(sel_map3)(x, s, e, 2, mu, t, st, top, g == 0, out); break;
            }
        }
        if (J == 0) memset(out + s, top, (size_t)(e - s));
    }
}

/* mean |x| in float64: 16 running sums, lane l adding x[i] for i = l (mod 16) in index
 * order, then added lane 0..15 and divided by n.  C fixes this order of float64 additions
 * (no -ffast-math), so every variant returns the same bits whatever it vectorizes. */
static double FN(sel_mean_abs)(const float *x, int64_t n) {
    double acc[16] = {0}, total = 0.0;
    int64_t i = 0, l;
    for (; i + 16 <= n; i += 16) {
        for (l = 0; l < 16; l++) acc[l] += (double)__builtin_fabsf(x[i + l]);
    }
    for (l = 0; i + l < n; l++) acc[l] += (double)__builtin_fabsf(x[i + l]);
    for (l = 0; l < 16; l++) total += acc[l];
    return n > 0 ? total / (double)n : 0.0;
}

/* Keys of x at the sorted positions idx[0..S) (all of x when idx == NULL) into k[]. */
static void FN(sel_gather_keys)(const float *x, const int64_t *idx, int64_t S, int mode, float mu, float *k) {
    int64_t i;
    if (idx == NULL) {
        for (i = 0; i < S; i += HBNN_SEL_BLOCK) FN(sel_keys)(x + i, hbnn_min64(HBNN_SEL_BLOCK, S - i), mode, mu, k + i);
        return;
    }
    for (i = 0; i < S; i++) k[i] = FN(sel_key)(x[idx[i]], mode, mu);
}

/* Exact selection; see hbnn_select_exact in hbnn_kernels.c for the contract. */
static int FN(sel_exact)(const float *x, int64_t n, int mode, float mu, int64_t J, const int64_t *cuts,
                         const int64_t *idx, int64_t S, const int64_t *lo_r, const int64_t *hi_r,
                         int64_t cap, const int8_t *step, int8_t top, int8_t *out, float *thr) {
    float lo[HBNN_SEL_MAXCUTS], hi[HBNN_SEL_MAXCUTS], v[HBNN_SEL_MAXCUTS];
    int64_t cnt[5 * HBNN_SEL_MAXCUTS], p[HBNN_SEL_MAXCUTS], j;
    const int64_t m = idx ? S : n;
    float *keys = (float *)malloc((size_t)(m > 0 ? m : 1) * sizeof(float));
    float *buf = NULL;
    int rc = 0;
    if (keys == NULL) return -2;
    FN(sel_gather_keys)(x, idx, m, mode, mu, keys);
    {
        int64_t r[2 * HBNN_SEL_MAXCUTS] = {0};
        float val[2 * HBNN_SEL_MAXCUTS];
        for (j = 0; j < J; j++) r[j] = lo_r[j], r[J + j] = hi_r[j];
        hbnn_kth_many(keys, m, r, 2 * J, val);
        for (j = 0; j < J; j++) lo[j] = val[j], hi[j] = val[J + j];
    }
    buf = (float *)malloc((size_t)J * (size_t)(cap + 16) * sizeof(float));
    if (buf == NULL) {
        free(keys);
        return -2;
    }
    FN(sel_count)(x, n, mode, mu, J, lo, hi, cnt, buf, cap);
    for (j = 0; j < J && rc == 0; j++) {
        const int64_t c = cuts[j], *q = cnt + 5 * j;
        int64_t n_lt, n_eq;
        if (!(q[0] < c && c <= q[3])) {
            rc = 1; /* the bracket missed the rank */
        } else if (c <= q[1]) {
            v[j] = lo[j], n_lt = q[0], n_eq = q[1] - q[0];
        } else if (c > q[2]) {
            v[j] = hi[j], n_lt = q[2], n_eq = q[3] - q[2];
        } else if (q[4] > cap) {
            rc = 1; /* too many keys inside the bracket */
        } else {
            float *in = buf + j * (cap + 16);
            int64_t i;
            v[j] = hbnn_kth(in, q[4], c - q[1] - 1);
            n_lt = q[1], n_eq = 0;
            for (i = 0; i < q[4]; i++) {
                n_lt += in[i] < v[j];
                n_eq += in[i] == v[j];
            }
        }
        if (rc == 0) {
            const int64_t need = c - n_lt;
            p[j] = need == n_eq ? n : FN(sel_tie_pos)(x, n, mode, mu, v[j], need);
            thr[j] = v[j];
        }
    }
    free(buf);
    free(keys);
    if (rc == 0) FN(sel_map)(x, n, mode, mu, J, v, p, step, top, out);
    return rc;
}

/* Sampled selection: thr[j] = the ranks[j]-th smallest (0-based) key of the
 * sample (idx[0..S), or all of x when idx == NULL), then out = the map of key <= thr[j]. */
static int FN(sel_sampled)(const float *x, int64_t n, int mode, float mu, int64_t J, const int64_t *idx,
                           int64_t S, const int64_t *ranks, const int8_t *step, int8_t top, int8_t *out,
                           float *thr) {
    int64_t p[HBNN_SEL_MAXCUTS], j;
    const int64_t m = idx ? S : n;
    float *keys = (float *)malloc((size_t)(m > 0 ? m : 1) * sizeof(float));
    if (keys == NULL) return -2;
    FN(sel_gather_keys)(x, idx, m, mode, mu, keys);
    hbnn_kth_many(keys, m, ranks, J, thr);
    free(keys);
    for (j = 0; j < J; j++) p[j] = n;
    FN(sel_map)(x, n, mode, mu, J, thr, p, step, top, out);
    return 0;
}

#undef HBNN_SEL_BLOCK
#undef FN
#undef HBNN_CAT
#undef HBNN_CAT2
