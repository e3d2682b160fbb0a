/* The scan kernels' interface: the one declaration of each function. scan.c includes this file
   and the cffi build (ffibuild.py) reads it as its cdef, with the lines starting with '#' removed. */
#ifndef BIOCNN_SCAN_H
#define BIOCNN_SCAN_H
#include <stdint.h>

/* 0: baseline (x86-64 SSE2, or any other architecture), 1: AVX2 + FMA, 2: AVX-512 (F, BW, DQ, VL):
   the best build this CPU (and its operating system) can run. */
int biocnn_cpu_level(void);

/* Floats per vector register in this build (16 with AVX-512, else 8). */
int biocnn_vector_width(void);

/* ASCII bases -> codes through a 256-entry table (invalid bytes map to a code with its top bit
   set); returns the index of the first invalid byte, or -1. */
int64_t biocnn_encode(const uint8_t *ascii, int64_t n, const uint8_t *lut, uint8_t *codes);

/* Scores of windows [i0, i1) (see scan.c); returns 0, or -1 when scratch memory cannot be had. */
int biocnn_score(const uint8_t *codes, const float *ztab, const float *bias, const float *pad_left,
                 const float *pad_right, int C, int k, int w, int S, int64_t i0, int64_t i1, int64_t block,
                 int m, int strands, int avg, const float *w1t, const float *b1, int H,
                 const float *w2, float b2, float *scores);

/* bedGraph lines "chrom\tlo\thi\tscore\n" into out (n * (chrom_len + 128) bytes); returns the
   bytes written. */
int64_t biocnn_bedgraph(const char *chrom, int64_t chrom_len, const int64_t *lo, const int64_t *hi,
                        const float *score, int64_t n, char *out);

#endif
