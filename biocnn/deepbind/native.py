"""Native (C) kernels for CPU genome scans, compiled on first use with the system C compiler.

Why C and not numba: the scan's inner loop adds ``motif_len / 4`` table rows of ``channels``
floats per position and keeps a running max per channel. numba vectorises the row additions,
but cannot keep the per-channel accumulators in registers (they live in an array it cannot
prove distinct from the tables), so every position pays pointer set-up and aliasing checks;
measured on the 2-core dev machine (AMD EPYC, AVX-512): 31 M positions/s per core with
numba against 96 M with the same loop in C. The C source below is compiled once per machine
(``-O3 -march=native``, no fast-math: additions keep IEEE semantics) into a cache directory;
when no compiler is available :func:`load` returns ``None`` and the scan falls back to the
numba kernels in :mod:`biocnn.deepbind.fastscan` (same results, slower).

Kernels (all single-threaded; the caller runs one batch per thread or splits a batch's windows
over threads; ctypes releases the GIL). Vectors are 16 floats wide with AVX-512, 8 otherwise.

* ``biocnn_encode``: ASCII bases -> codes 0-4 through a 256-entry table (64 bytes per byte
  permute with AVX-512 VBMI); returns the index of the first invalid character or -1.
* ``biocnn_pool``: max (and sum) of the rectified detector outputs over every DeepBind-padded
  window, from 4-mer look-up tables (see :func:`biocnn.deepbind.fastscan.quad_tables`).
* ``biocnn_score``: ``biocnn_pool`` then DeepBind's head (hidden layer, output) on each strand.
* ``biocnn_bedgraph``: formats bedGraph lines (``%.4f`` scores rounded half-to-even from the
  exact value, as Python's ``format`` does).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdio.h>

#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

/* `lut` (256 entries) maps every byte >= 128 to an invalid code (with the top bit set). */
long biocnn_encode(const uint8_t *ascii, long n, const uint8_t *lut, uint8_t *codes) {
    uint8_t seen = 0;  /* invalid characters map to 255: no branch per base in the common case */
    long i = 0;
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
    /* 64 bases per step: one two-register byte permute looks up the table's ASCII half; a byte
       with its top bit set stays invalid through the OR (about 10x the scalar loop). */
    const __m512i lo = _mm512_loadu_si512(lut), hi = _mm512_loadu_si512(lut + 64), top = _mm512_set1_epi8((char)0x80);
    __m512i any = _mm512_setzero_si512();
    for (; i + 64 <= n; i += 64) {
        const __m512i x = _mm512_loadu_si512(ascii + i);
        const __m512i c = _mm512_or_si512(_mm512_permutex2var_epi8(lo, x, hi), _mm512_and_si512(x, top));
        _mm512_storeu_si512(codes + i, c);
        any = _mm512_or_si512(any, c);
    }
    if (_mm512_test_epi8_mask(any, top)) seen = 0x80;
#endif
    for (; i < n; i++) { uint8_t c = lut[ascii[i]]; codes[i] = c; seen |= c; }
    if (seen & 0x80)
        for (long i = 0; i < n; i++) if (lut[ascii[i]] > 4) return i;
    return -1;
}

/* Channels are handled VW at a time in vector registers (GCC/Clang vector extensions): 16 with
   AVX-512, 8 otherwise (AVX2 registers; 16-wide vectors split in two spilled and ran 7x slower);
   the caller pads the channel count to a multiple of 16. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
#else
#if defined(__AVX__)
#include <immintrin.h>
#endif
#define VW 8
#endif
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
static inline vf fadd(vf a, vf b) { return (vf)_mm512_fmadd_ps((__m512)a, _mm512_set1_ps(1.0f), (__m512)b); }
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
static inline vf fadd(vf a, vf b) { return (vf)_mm256_fmadd_ps((__m256)a, _mm256_set1_ps(1.0f), (__m256)b); }
static inline vf fmav(float a, vf b, vf c) { return (vf)_mm256_fmadd_ps(_mm256_set1_ps(a), (__m256)b, (__m256)c); }
#else
static inline vf fadd(vf a, vf b) { return a + b; }
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
                if (t & 1) u[c] = fadd(u[c], LD(row + VW * c)); else v[c] += LD(row + VW * c); } \
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
 * Cost (k = 24, stride 50, window 101): 50 track positions x 6 look-ups plus 2 x 78 edge look-ups
 * per window, each look-up a 128-byte row (32 channels). Not bound by the cache: with 8 distinct
 * 4-mers (every row in L1) it ran only 11 % faster; what paid was fewer instructions per look-up
 * (row offsets precomputed, constant column displacements, no prefetch: +10 %) and the head
 * without copies (+4 %). (Edges from the unpadded track minus the outside columns need 90
 * look-ups instead of 156, but make a window's score depend on the bases beyond it.)
 */
static inline __attribute__((always_inline)) void pool_impl(
        const uint8_t *codes, const float *ztab, const float *bias, const float *pad_left,
        const float *pad_right, int k_, int w, int S, long i0, long i1, float *out_max, float *out_sum,
        const int NV, const int KC, const int SUM) {
    const int k = KC ? KC : k_;  /* KC: a compile-time detector width (constant trip counts), or 0 */
    const int C = VW * NV, inner = w - k + 1, nq = (k + 3) / 4;
    const int m = inner / S, r = inner % S;
    const long j0 = i0, j1 = i1 - 1 + m + (r ? 1 : 0);   /* segments [j0, j1) */
    const long nseg = j1 - j0;
    const long lo = i0 * S - 3, hi = (i1 - 1) * S + w + 4 * nq + 4;   /* 4-mers for bases [lo, hi) */
    const int32_t rows = (k + 3) * C;  /* floats per 4-mer (its k + 3 rows) */
    int32_t *q = malloc(sizeof(int32_t) * (hi - lo));
    /* max whole | max prefix | sums per segment; every entry read is written first */
    float *seg = malloc((size_t)(nseg + 1) * 4 * C * sizeof(float));
    const uint8_t *cb = codes + lo;
    for (long p = 0; p < hi - lo; p++)
        q[p] = (cb[p] * 125 + cb[p + 1] * 25 + cb[p + 2] * 5 + cb[p + 3]) * rows;  /* 5**4 codes */
    q -= lo;  /* q[b] = offset of the rows of the 4-mer starting at base b */
    const float *zt = ztab + 3 * C;  /* zt + q[b] + j * C: the row of start column j (-3 .. k - 1) */
    const vf zero = {0};
    vf v[MAXV], u[MAXV], mx[MAXV], sm[MAXV], b[MAXV];
    for (int c = 0; c < NV; c++) b[c] = LD(bias + VW * c);
    /* Detectors fully inside windows, pooled per segment. */
    for (long j = j0; j < j1; j++) {
        const int len = (j < i1 - 1 + m) ? S : r;   /* the last segment is only needed as a prefix */
        float *out = seg + (j - j0) * 4 * C;
        const long g0 = j * S;
        for (int c = 0; c < NV; c++) { mx[c] = zero; sm[c] = zero; }
        int p = 0;
        for (; p < r; p++) { TRACK(g0 + p); FOLD(NV) }
        for (int c = 0; c < NV; c++) { ST(out + C + VW * c, mx[c]); if (SUM) ST(out + 3 * C + VW * c, sm[c]); }
        for (; p < len; p++) { TRACK(g0 + p); FOLD(NV) }
        for (int c = 0; c < NV; c++) { ST(out + VW * c, mx[c]); if (SUM) ST(out + 2 * C + VW * c, sm[c]); }
    }
    for (long i = i0; i < i1; i++) {
        const long s = i * S;
        for (int c = 0; c < NV; c++) { mx[c] = zero; sm[c] = zero; }
        for (long j = i; j < i + m + (r ? 1 : 0); j++) {
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
    free(q + lo);
    free(seg);
}

/* Windows [i0, i1) in blocks of `block` windows (bounded scratch memory); outputs are indexed
   from i0. C must be a multiple of 16 (at most 256). */
void biocnn_pool(const uint8_t *codes, const float *ztab, const float *bias, const float *pad_left,
                 const float *pad_right, int C, int k, int w, int S, long i0, long i1, long block,
                 float *out_max, float *out_sum) {
    for (long b = i0; b < i1; b += block) {
        long e = b + block < i1 ? b + block : i1;
        float *om = out_max + (b - i0) * C, *os = out_sum ? out_sum + (b - i0) * C : NULL;
        /* Constant vector counts (and for DeepBind's default, 16 motifs x 24 bp on both strands, a
           constant width) let the compiler keep the accumulators in registers and unroll. */
#define POOL(NV, KC) do { if (os) pool_impl(codes, ztab, bias, pad_left, pad_right, k, w, S, b, e, om, os, NV, KC, 1); \
                          else pool_impl(codes, ztab, bias, pad_left, pad_right, k, w, S, b, e, om, os, NV, KC, 0); } while (0)
        switch (C / VW) {
            case 1: POOL(1, 0); break;
            case 2: if (k == 24 && VW == 16) POOL(2, 24); else POOL(2, 0); break;
            case 3: POOL(3, 0); break;
            case 4: if (k == 24 && VW == 8) POOL(4, 24); else POOL(4, 0); break;
            default: POOL(C / VW, 0);
        }
#undef POOL
    }
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
            const vf wj = LD(w1t + (long)j * H + VW * c);
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
void biocnn_score(const uint8_t *codes, const float *ztab, const float *bias, const float *pad_left,
                  const float *pad_right, int C, int k, int w, int S, long i0, long i1, long block,
                  int m, int strands, int avg, const float *w1t, const float *b1, int H,
                  const float *w2, float b2, float *scores) {
    float *om = malloc(sizeof(float) * block * C), *os = avg ? malloc(sizeof(float) * block * C) : NULL;
    const int F = avg ? 2 * m : m, NV = H / VW;
    float *f = malloc(sizeof(float) * ROWS * F), *y = malloc(sizeof(float) * block * strands);
    const float inv = 1.0f / (float)(w + k - 1);
    for (long b = i0; b < i1; b += block) {
        const long e = b + block < i1 ? b + block : i1;
        const long rows = (e - b) * strands;
        biocnn_pool(codes, ztab, bias, pad_left, pad_right, C, k, w, S, b, e, block, om, os);
        for (long r0 = 0; r0 < rows; r0 += ROWS) {
            const int nr = rows - r0 < ROWS ? (int)(rows - r0) : ROWS;
            const float *fr[ROWS];  /* features of rows r0 .. r0 + ROWS - 1 (the last group may repeat a row) */
            for (int q = 0; q < ROWS; q++) {
                const long r = r0 + (q < nr ? q : 0), i = r / strands;
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
        for (long i = b; i < e; i++) {
            float best = y[(i - b) * strands];
            for (int t = 1; t < strands; t++) best = y[(i - b) * strands + t] > best ? y[(i - b) * strands + t] : best;
            scores[i - i0] = best;
        }
    }
    free(om); free(os); free(f); free(y);
}

static const char DIGITS2[201] =  /* "00" .. "99": two digits per division */
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Decimal digits of u, written straight to their place (no scratch copy: a variable-length
   memcpy per number was most of the cost). */
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
long biocnn_bedgraph(const char *chrom, long chrom_len, const int64_t *lo, const int64_t *hi,
                     const float *score, long n, char *out) {
    char *p = out;
    char name[32];  /* short names are copied as one fixed-size block (the tab is written over) */
    const int short_name = chrom_len < 32;
    if (short_name) { memset(name, 0, 32); memcpy(name, chrom, chrom_len); }
    for (long i = 0; i < n; i++) {
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
    return (long)(p - out);
}
"""

MAX_CHANNELS = 256  # detector channels (both strands) and hidden units: MAXV vectors of VW
MAX_MOTIF_LEN = 253  # MAXQ 4-mers per detector

_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off"]
_LIB: ctypes.CDLL | None = None
_TRIED = False


def _cache_dir() -> Path:
    root = os.environ.get("BIOCNN_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "biocnn"


def _machine_key() -> str:
    """Source, flags and CPU features: ``-march=native`` code must not run on another CPU."""
    try:
        cpu = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), "")
    except OSError:
        cpu = platform.processor()
    text = "\n".join([SOURCE, " ".join(_FLAGS), platform.machine(), cpu, sys.platform])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _compile(target: Path, extra_flags: tuple[str, ...] = ()) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc/gcc) found")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "scan.c"
        src.write_text(SOURCE)
        lib = Path(tmp) / target.name
        subprocess.run([compiler, *_FLAGS, *extra_flags, str(src), "-o", str(lib), "-lm"], check=True,
                       capture_output=True)
        os.replace(lib, target)  # atomic: concurrent processes never load a half-written library


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The kernels' C signatures, for ctypes."""
    p, i64 = ctypes.c_void_p, ctypes.c_long
    lib.biocnn_encode.argtypes = [p, i64, p, p]
    lib.biocnn_encode.restype = i64
    lib.biocnn_pool.argtypes = [p, p, p, p, p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64,
                                i64, p, p]
    lib.biocnn_pool.restype = None
    f32, i32 = ctypes.c_float, ctypes.c_int
    lib.biocnn_score.argtypes = [p, p, p, p, p, i32, i32, i32, i32, i64, i64, i64, i32, i32, i32, p, p, i32, p, f32,
                                 p]
    lib.biocnn_score.restype = None
    lib.biocnn_bedgraph.argtypes = [p, i64, p, p, p, i64, p]
    lib.biocnn_bedgraph.restype = i64
    return lib


def build(target: str | Path, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile the kernels with extra compiler flags into ``target`` and load them (tests use it
    to check the code paths this CPU does not pick, e.g. ``-mno-avx512f``)."""
    _compile(Path(target), tuple(extra_flags))
    return _declare(ctypes.CDLL(str(target)))


def load() -> ctypes.CDLL | None:
    """The compiled kernels (compiling them on first use), or ``None`` without a C compiler."""
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    target = _cache_dir() / f"scan-{_machine_key()}.so"
    try:
        if not target.is_file():
            _compile(target)
        lib = _declare(ctypes.CDLL(str(target)))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        log.warning("native scan kernels unavailable (%s %s); using the numba kernels", err,
                    detail.decode(errors="replace")[:200])
        return None
    _LIB = lib
    return lib
