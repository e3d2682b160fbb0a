/*
 * CPU kernels of the genome scan (biocnn.deepbind.scan_scorer): base encoding, DeepBind's detectors
 * pooled over every window from 4-mer tables, the binding head, bedGraph formatting.
 *
 * Built at install time (ffibuild.py) once per instruction set, from this one source: baseline,
 * AVX2 + FMA and AVX-512; biocnn.deepbind.native picks the build at import from
 * biocnn_cpu_level(). Compiled without fast-math and with -ffp-contract=off, so additions keep
 * IEEE semantics. All kernels are single-threaded; the caller splits work over threads.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdio.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BIOCNN_X86 1
#endif

#include "scan.h"

int biocnn_cpu_level(void) {
#if defined(BIOCNN_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

/* Scalar look-up from i on; the index of the first invalid byte (code > 4), or -1. */
static int64_t encode_tail(const uint8_t *ascii, int64_t i, int64_t n, const uint8_t *lut, uint8_t *codes,
                           uint8_t seen) {
    for (; i < n; i++) { uint8_t c = lut[ascii[i]]; codes[i] = c; seen |= c; }
    if (seen & 0x80)  /* invalid bytes map to codes >= 128: no branch per base in the common case */
        for (int64_t j = 0; j < n; j++) if (lut[ascii[j]] > 4) return j;
    return -1;
}

#if defined(__AVX512BW__)
/* 64 bases per step: one two-register byte permute looks up the table's ASCII half; a byte
   with its top bit set stays invalid through the OR. VBMI is not part of the AVX-512 build's
   baseline (Skylake-X lacks it), hence the target attribute and the run-time check. */
__attribute__((target("avx512vbmi,avx512bw,avx512f")))
static int64_t encode_vbmi(const uint8_t *ascii, int64_t n, const uint8_t *lut, uint8_t *codes) {
    const __m512i lo = _mm512_loadu_si512(lut), hi = _mm512_loadu_si512(lut + 64), top = _mm512_set1_epi8((char)0x80);
    __m512i any = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512i x = _mm512_loadu_si512(ascii + i);
        const __m512i c = _mm512_or_si512(_mm512_permutex2var_epi8(lo, x, hi), _mm512_and_si512(x, top));
        _mm512_storeu_si512(codes + i, c);
        any = _mm512_or_si512(any, c);
    }
    return encode_tail(ascii, i, n, lut, codes, _mm512_test_epi8_mask(any, top) ? 0x80 : 0);
}
#endif

/* `lut` (256 entries) maps every byte >= 128 to an invalid code (with the top bit set). */
int64_t biocnn_encode(const uint8_t *ascii, int64_t n, const uint8_t *lut, uint8_t *codes) {
#if defined(__AVX512BW__)
    if (__builtin_cpu_supports("avx512vbmi")) return encode_vbmi(ascii, n, lut, codes);
#endif
    return encode_tail(ascii, 0, n, lut, codes, 0);
}

/* Channels are handled VW at a time in vector registers (GCC/Clang vector extensions): 16 with
   AVX-512, 8 otherwise (without AVX-512, 16-wide vectors split in two and spill); the caller pads
   the channel count to a multiple of 16. */
#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif

int biocnn_vector_width(void) { return VW; }
typedef float vf __attribute__((vector_size(4 * VW)));
typedef float vfu __attribute__((vector_size(4 * VW), aligned(4)));  /* unaligned loads/stores */
#define LD(p) (*(const vfu *)(p))
#define ST(p, x) (*(vfu *)(p) = (x))
typedef int32_t vfi __attribute__((vector_size(4 * VW)));
#define MAXV (256 / VW)  /* at most 256 channels */
#define MAXQ 64  /* 4-mers per detector: motif_len <= 256 */

/* max, a + b as a fused multiply-add by 1 (bit-identical to the addition: additions then share
   the FMA pipes with the add pipes), a * b + c fused, horizontal sum */
#if defined(__AVX512F__)
static inline vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
static inline vf vaddf(vf a, vf b) { return (vf)_mm512_fmadd_ps((__m512)a, _mm512_set1_ps(1.0f), (__m512)b); }
static inline vf fmav(float a, vf b, vf c) { return (vf)_mm512_fmadd_ps(_mm512_set1_ps(a), (__m512)b, (__m512)c); }
static inline float hsum(vf x) { return _mm512_reduce_add_ps((__m512)x); }
#else
#if defined(__AVX__)
static inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
#else
static inline vf vmax(vf a, vf b) {  /* a > b ? a : b per lane (C has no vector ?:) */
    vfi m = a > b;
    return (vf)(((vfi)a & m) | ((vfi)b & ~m));
}
#endif
#if defined(__FMA__)
static inline vf vaddf(vf a, vf b) { return (vf)_mm256_fmadd_ps((__m256)a, _mm256_set1_ps(1.0f), (__m256)b); }
static inline vf fmav(float a, vf b, vf c) { return (vf)_mm256_fmadd_ps(_mm256_set1_ps(a), (__m256)b, (__m256)c); }
#else
static inline vf vaddf(vf a, vf b) { return a + b; }
static inline vf fmav(float a, vf b, vf c) { return a * b + c; }
#endif
static inline float hsum(vf x) {  /* balanced tree: short dependency chains */
    float t[VW];
    ST(t, x);
    for (int n = VW / 2; n >= 1; n /= 2)
        for (int i = 0; i < n; i++) t[i] += t[i + n];
    return t[0];
}
#endif

/* pool the rectified v into mx (and sm when summing) */
#define FOLD(NV) for (int c = 0; c < (NV); c++) { \
        mx[c] = vmax(mx[c], v[c]);  /* mx starts at 0, so max(mx, v) = max(mx, relu(v)) */ \
        if (SUM) sm[c] += vmax(v[c], zero); }

/* v = detector outputs at base g: bias + one table row per 4 columns; even and odd rows summed
   apart (two short dependency chains, one of them on the FMA pipes) */
#define TRACK(g) do { \
        for (int c = 0; c < NV; c++) { v[c] = b[c]; u[c] = zero; } \
        for (int t = 0; t < nq; t++) { \
            const float *row = zt + q[(g) + 4 * t] + 4 * t * C; \
            for (int c = 0; c < NV; c++) { \
                if (t & 1) u[c] = vaddf(u[c], LD(row + VW * c)); else v[c] += LD(row + VW * c); } \
        } \
        for (int c = 0; c < NV; c++) v[c] += u[c]; \
    } while (0)

/*
 * Windows i0 .. i1-1 of a chunk; window i covers bases [i*S, i*S + w). `codes` points at base 0;
 * codes[-3 .. -1] and the bases after the last window (4 * ceil(k / 4) + 4 of them) must be
 * readable (any code: they only meet zero table columns).
 * ztab (625, k + 3, VW * NV): ztab[q][j + 3] = sum of detector columns j .. j+3 (zero outside
 * 0 .. k-1) for the 4-mer q; code-major, so the rows one 4-mer needs for the edge detectors (all
 * start columns) are adjacent. pad_left[o] / pad_right[e] (k, VW * NV): contribution of o (e)
 * columns of 0.25 padding at the detector's start (end).
 * A detector fully inside window i starts at a position in [s, s + inner), inner = w - k + 1;
 * those positions are pooled per stride-long segment (segment j = positions [j*S, j*S + S)):
 * window i = segments i .. i+m-1 whole plus the first r positions of segment i+m
 * (m = inner / S, r = inner % S). The k - 1 detectors at each end overlapping the padding are
 * summed from the window's own first / last bases plus the padding constant, so a window's score
 * depends on its own bases only.
 * The loop is bound by instructions per look-up rather than by the cache, hence row offsets
 * precomputed per base and constant column displacements. (Edges taken from the unpadded track
 * minus the outside columns would need fewer look-ups, but would make a window's score depend on
 * the bases beyond it.) Scratch: qs (pool_scratch's first count) and seg (its second).
 */
static inline __attribute__((always_inline)) void pool_impl(
        const uint8_t *codes, const float *ztab, const float *bias, const float *pad_left,
        const float *pad_right, int k_, int w, int S, int64_t i0, int64_t i1, float *out_max, float *out_sum,
        int32_t *qs, float *seg, const int NV, const int KC, const int SUM) {
    const int k = KC ? KC : k_;  /* KC: a compile-time detector width (constant trip counts), or 0 */
    const int C = VW * NV, inner = w - k + 1, nq = (k + 3) / 4;
    const int m = inner / S, r = inner % S;
    const int64_t j0 = i0, j1 = i1 - 1 + m + (r ? 1 : 0);   /* segments [j0, j1) */
    const int64_t lo = i0 * S - 3, hi = (i1 - 1) * S + w + 4 * nq + 4;   /* 4-mers for bases [lo, hi) */
    const int32_t rows = (k + 3) * C;  /* floats per 4-mer (its k + 3 rows) */
    const uint8_t *cb = codes + lo;
    for (int64_t p = 0; p < hi - lo; p++)
        qs[p] = (cb[p] * 125 + cb[p + 1] * 25 + cb[p + 2] * 5 + cb[p + 3]) * rows;  /* 5**4 codes */
    const int32_t *q = qs - lo;  /* q[b] = offset of the rows of the 4-mer starting at base b */
    /* seg: max whole | max prefix | sums per segment; every entry read is written first */
    const float *zt = ztab + 3 * C;  /* zt + q[b] + j * C: the row of start column j (-3 .. k - 1) */
    const vf zero = {0};
    vf v[MAXV], u[MAXV], mx[MAXV], sm[MAXV], b[MAXV];
    for (int c = 0; c < NV; c++) b[c] = LD(bias + VW * c);
    /* Detectors fully inside windows, pooled per segment. */
    for (int64_t j = j0; j < j1; j++) {
        const int len = (j < i1 - 1 + m) ? S : r;   /* the last segment is only needed as a prefix */
        float *out = seg + (j - j0) * 4 * C;
        const int64_t g0 = j * S;
        for (int c = 0; c < NV; c++) { mx[c] = zero; sm[c] = zero; }
        int p = 0;
        for (; p < r; p++) { TRACK(g0 + p); FOLD(NV) }
        for (int c = 0; c < NV; c++) { ST(out + C + VW * c, mx[c]); if (SUM) ST(out + 3 * C + VW * c, sm[c]); }
        for (; p < len; p++) { TRACK(g0 + p); FOLD(NV) }
        for (int c = 0; c < NV; c++) { ST(out + VW * c, mx[c]); if (SUM) ST(out + 2 * C + VW * c, sm[c]); }
    }
    for (int64_t i = i0; i < i1; i++) {
        const int64_t s = i * S;
        for (int c = 0; c < NV; c++) { mx[c] = zero; sm[c] = zero; }
        for (int64_t j = i; j < i + m + (r ? 1 : 0); j++) {
            const float *in = seg + (j - j0) * 4 * C + (j < i + m ? 0 : C);  /* whole, or prefix */
            for (int c = 0; c < NV; c++) {
                mx[c] = vmax(mx[c], LD(in + VW * c));
                if (SUM) sm[c] += LD(in + 2 * C + VW * c);
            }
        }
        /* Left edge: the detector starts o columns before the window (o columns of padding); its
           columns o .. k-1 meet bases s .. s+k-1-o: the 4-mer at s + 4t gives start column o + 4t.
           The nq 4-mers' row blocks are found once per window. */
        const float *pl[MAXQ], *pr[MAXQ];
        for (int t = 0; t < nq; t++) {
            pl[t] = zt + q[s + 4 * t] + 4 * t * C;
            pr[t] = zt + q[s + w - 4 - 4 * t] - (4 + 4 * t) * C;
        }
        for (int o = 1; o < k; o++) {
            for (int c = 0; c < NV; c++) v[c] = b[c] + LD(pad_left + o * C + VW * c);
            const int nt = (k - o + 3) / 4;
            for (int t = 0; t < nt; t++)
                for (int c = 0; c < NV; c++) v[c] += LD(pl[t] + o * C + VW * c);
            FOLD(NV)
        }
        /* Right edge: the detector ends e columns after the window; its k - e real columns are
           summed backwards from the window's last base (4-mers may start at column -3..-1: zero). */
        for (int e = 1; e < k; e++) {
            for (int c = 0; c < NV; c++) v[c] = b[c] + LD(pad_right + e * C + VW * c);
            const int cols = k - e, nt = (cols + 3) / 4;
            for (int t = 0; t < nt; t++)
                for (int c = 0; c < NV; c++) v[c] += LD(pr[t] + cols * C + VW * c);
            FOLD(NV)
        }
        for (int c = 0; c < NV; c++) {
            ST(out_max + (i - i0) * C + VW * c, mx[c]);
            if (SUM) ST(out_sum + (i - i0) * C + VW * c, sm[c]);
        }
    }
}

/* Scratch sizes of pool_impl for up to `block` windows: 4-mer offsets (int32) and segment floats. */
static void pool_scratch(int C, int k, int w, int S, int64_t block, size_t *n_q, size_t *n_seg) {
    const int inner = w - k + 1, nq = (k + 3) / 4;
    *n_q = (size_t)((block - 1) * S + w + 4 * nq + 7);
    *n_seg = (size_t)(block + inner / S + 2) * 4 * C;
}

/* Windows [i0, i1) (at most the scratch's `block`); outputs are indexed from i0. C must be a
   multiple of 16 (at most 256). */
static void pool_block(const uint8_t *codes, const float *ztab, const float *bias, const float *pad_left,
                       const float *pad_right, int C, int k, int w, int S, int64_t i0, int64_t i1,
                       float *om, float *os, int32_t *qs, float *seg) {
    /* Constant vector counts (and for DeepBind's default, 16 motifs x 24 bp on both strands, a
       constant width) let the compiler keep the accumulators in registers and unroll. */
#define POOL(NV, KC) do { \
        if (os) pool_impl(codes, ztab, bias, pad_left, pad_right, k, w, S, i0, i1, om, os, qs, seg, NV, KC, 1); \
        else pool_impl(codes, ztab, bias, pad_left, pad_right, k, w, S, i0, i1, om, os, qs, seg, NV, KC, 0); \
    } while (0)
    switch (C / VW) {
        case 1: POOL(1, 0); break;
        case 2: if (k == 24 && VW == 16) POOL(2, 24); else POOL(2, 0); break;
        case 3: POOL(3, 0); break;
        case 4: if (k == 24 && VW == 8) POOL(4, 24); else POOL(4, 0); break;
        default: POOL(C / VW, 0);
    }
#undef POOL
}


#define ROWS 4  /* (window, strand) rows through the head together: 4 * NV independent accumulators */

/* The hidden layer and output of ROWS feature rows fr[q] (F features each; rows q >= nr are
   computed but not stored): y[q] += w2 . relu(b1 + fr[q] @ w1t), H = VW * NV hidden units. */
static inline __attribute__((always_inline)) void hidden_rows(
        const float *const *fr, int nr, int F, const float *w1t, const float *b1, const float *w2, float *y,
        const int NV) {
    const int H = VW * NV;
    const vf zero = {0};
    vf acc[ROWS][MAXV];
    for (int q = 0; q < ROWS; q++)
        for (int c = 0; c < NV; c++) acc[q][c] = LD(b1 + VW * c);
    for (int j = 0; j < F; j++)
        for (int c = 0; c < NV; c++) {
            const vf wj = LD(w1t + (int64_t)j * H + VW * c);
            for (int q = 0; q < ROWS; q++) acc[q][c] = fmav(fr[q][j], wj, acc[q][c]);
        }
    for (int q = 0; q < nr; q++) {
        vf out = zero;
        for (int c = 0; c < NV; c++) out += vmax(acc[q][c], zero) * LD(w2 + VW * c);
        y[q] += hsum(out);
    }
}

/*
 * Scores of windows [i0, i1) (scores indexed from i0): pooled features from biocnn_pool, then
 * DeepBind's head per strand, the larger score kept. Strand t's features are channels
 * [t*m, t*m + m) of the pooled max (with avg: mean = sum / (w + k - 1) first, then max).
 * Head: features (F) -> H hidden units (w1t (F, H), b1, ReLU) -> 1 output (w2 (H), b2); H = 0:
 * features -> 1 output directly (w2 (F)). H must be a multiple of 16 (the caller pads with zero
 * units). Windows are pooled `block` at a time, their features used while in cache; the head
 * runs ROWS (window, strand) rows at a time so that each weight row loaded serves ROWS rows.
 */
int biocnn_score(const uint8_t *codes, const float *ztab, const float *bias, const float *pad_left,
                 const float *pad_right, int C, int k, int w, int S, int64_t i0, int64_t i1, int64_t block,
                 int m, int strands, int avg, const float *w1t, const float *b1, int H,
                 const float *w2, float b2, float *scores) {
    const int F = avg ? 2 * m : m, NV = H / VW;
    size_t n_q, n_seg;
    pool_scratch(C, k, w, S, block, &n_q, &n_seg);
    float *om = malloc(sizeof(float) * (size_t)(block * C)), *os = avg ? malloc(sizeof(float) * (size_t)(block * C)) : NULL;
    float *f = malloc(sizeof(float) * ROWS * F), *y = malloc(sizeof(float) * (size_t)(block * strands));
    int32_t *qs = malloc(sizeof(int32_t) * n_q);
    float *seg = malloc(sizeof(float) * n_seg);
    if (!om || (avg && !os) || !f || !y || !qs || !seg) {
        free(om); free(os); free(f); free(y); free(qs); free(seg);
        return -1;
    }
    const float inv = 1.0f / (float)(w + k - 1);
    for (int64_t b = i0; b < i1; b += block) {
        const int64_t e = b + block < i1 ? b + block : i1;
        const int64_t rows = (e - b) * strands;
        pool_block(codes, ztab, bias, pad_left, pad_right, C, k, w, S, b, e, om, os, qs, seg);
        for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
            const int nr = rows - r0 < ROWS ? (int)(rows - r0) : ROWS;
            const float *fr[ROWS];  /* features of rows r0 .. r0 + ROWS - 1 (the last group may repeat a row) */
            for (int q = 0; q < ROWS; q++) {
                const int64_t r = r0 + (q < nr ? q : 0), i = r / strands;
                const int t = (int)(r % strands);
                const float *mx = om + i * C + t * m;
                if (avg) {  /* [mean | max]: the mean from the sum */
                    const float *sm = os + i * C + t * m;
                    float *fq = f + q * F;
                    for (int c = 0; c < m; c++) { fq[c] = sm[c] * inv; fq[m + c] = mx[c]; }
                    fr[q] = fq;
                } else {
                    fr[q] = mx;  /* the pooled maxima themselves, no copy */
                }
            }
            for (int q = 0; q < nr; q++) y[r0 + q] = b2;
            if (H) {
                switch (NV) {  /* a constant count keeps the ROWS x NV accumulators in registers */
                    case 1: hidden_rows(fr, nr, F, w1t, b1, w2, y + r0, 1); break;
                    case 2: hidden_rows(fr, nr, F, w1t, b1, w2, y + r0, 2); break;
                    case 3: hidden_rows(fr, nr, F, w1t, b1, w2, y + r0, 3); break;
                    case 4: hidden_rows(fr, nr, F, w1t, b1, w2, y + r0, 4); break;
                    default: hidden_rows(fr, nr, F, w1t, b1, w2, y + r0, NV);
                }
            } else {
                for (int q = 0; q < nr; q++)
                    for (int j = 0; j < F; j++) y[r0 + q] += fr[q][j] * w2[j];
            }
        }
        for (int64_t i = b; i < e; i++) {
            float best = y[(i - b) * strands];
            for (int t = 1; t < strands; t++) best = y[(i - b) * strands + t] > best ? y[(i - b) * strands + t] : best;
            scores[i - i0] = best;
        }
    }
    free(om); free(os); free(f); free(y); free(qs); free(seg);
    return 0;
}

static const char DIGITS2[201] =  /* "00" .. "99": two digits per division */
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Decimal digits of u, written straight to their place (no variable-length scratch copy). */
static inline char *put_uint(char *p, uint64_t u) {
    int n = 1;
    for (uint64_t t = u; t >= 10; t /= 10) n++;
    char *q = p + n;
    while (u >= 100) { q -= 2; memcpy(q, DIGITS2 + 2 * (u % 100), 2); u /= 100; }
    if (u >= 10) memcpy(q - 2, DIGITS2 + 2 * u, 2); else q[-1] = (char)('0' + u);
    return p + n;
}

static inline char *put_int(char *p, int64_t x) {
    if (x < 0) { *p++ = '-'; return put_uint(p, -(uint64_t)x); }
    return put_uint(p, (uint64_t)x);
}

/* "chrom\tlo\thi\tscore\n" per window; returns the bytes written (out: n * (chrom_len + 128)
   bytes: a line takes at most chrom_len + 92, the rest is room for the fixed-size copies). */
int64_t biocnn_bedgraph(const char *chrom, int64_t chrom_len, const int64_t *lo, const int64_t *hi,
                        const float *score, int64_t n, char *out) {
    char *p = out;
    char name[32];  /* short names are copied as one fixed-size block (the tab is written over) */
    const int short_name = chrom_len < 32;
    if (short_name) { memset(name, 0, 32); memcpy(name, chrom, chrom_len); }
    for (int64_t i = 0; i < n; i++) {
        if (short_name) memcpy(p, name, 32); else memcpy(p, chrom, chrom_len);
        p += chrom_len; *p++ = '\t';
        p = put_int(p, lo[i]); *p++ = '\t';
        p = put_int(p, hi[i]); *p++ = '\t';
        const double v = score[i];
        if (isnan(v)) { memcpy(p, "nan", 3); p += 3; }
        else if (isinf(v)) { if (v < 0) *p++ = '-'; memcpy(p, "inf", 3); p += 3; }
        else if (fabs(v) >= 1e14) p += snprintf(p, 64, "%.4f", v);  /* past the fixed-point path */
        else {
            /* float32 * 1e4 is exact in double, so rint (half to even) rounds the exact value as
               Python's "%.4f" does. */
            const double a = fabs(v);
            if (signbit(v)) *p++ = '-';
            const int64_t x = (int64_t)rint(a * 10000.0);
            p = put_uint(p, (uint64_t)(x / 10000)); *p++ = '.';
            const int64_t f = x % 10000;
            memcpy(p, DIGITS2 + 2 * (f / 100), 2); memcpy(p + 2, DIGITS2 + 2 * (f % 100), 2); p += 4;
        }
        *p++ = '\n';
    }
    return (int64_t)(p - out);
}
