/* int8 x int8 -> int32 matrix product, y = x w^T, for the integer engine.
 *
 * x: (M, K) int8 row-major, w: (N, K) int8 row-major (the nn.Linear layout), y: (M, N) int32.
 * Integer arithmetic only: products are widened to int16 x int16 -> int32 pairs (AVX2
 * vpmaddwd) and summed in int32, exact for K < 2^17. Rows of w are taken four at a time so each
 * widened load of x feeds four dot products. A portable scalar loop covers other CPUs and tails.
 */
#include <stdint.h>
#if defined(__x86_64__) || defined(__i386__)
#define QRNN_GEMM_X86 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))

AVX2 static inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

AVX2 static inline __m256i widen(const int8_t *p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
}
#endif

#ifdef QRNN_GEMM_X86
AVX2 static void dot4_avx2(const int8_t *x, const int8_t *w, int64_t K, int32_t *out) {
    const int8_t *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t k = 0;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (; k + 16 <= K; k += 16) {
        __m256i xv = widen(x + k);
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(xv, widen(w0 + k)));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(xv, widen(w1 + k)));
        s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(xv, widen(w2 + k)));
        s3 = _mm256_add_epi32(s3, _mm256_madd_epi16(xv, widen(w3 + k)));
    }
    a0 = hsum(s0); a1 = hsum(s1); a2 = hsum(s2); a3 = hsum(s3);
    for (; k < K; ++k) {
        int32_t xv = x[k];
        a0 += xv * w0[k]; a1 += xv * w1[k]; a2 += xv * w2[k]; a3 += xv * w3[k];
    }
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;
}

#endif

static void dot4_scalar(const int8_t *x, const int8_t *w, int64_t K, int32_t *out) {
    const int8_t *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t k = 0;
    for (; k < K; ++k) {
        int32_t xv = x[k];
        a0 += xv * w0[k]; a1 += xv * w1[k]; a2 += xv * w2[k]; a3 += xv * w3[k];
    }
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;
}

static int32_t dot1(const int8_t *x, const int8_t *w, int64_t K) {
    int32_t acc = 0;
    for (int64_t k = 0; k < K; ++k) acc += (int32_t)x[k] * (int32_t)w[k];
    return acc;
}

void qrnn_int8_gemm_nt(const int8_t *x, const int8_t *w, int32_t *y, int64_t M, int64_t N, int64_t K,
                       int threads) {
    (void)threads; /* single-threaded: a second OpenMP runtime beside torch's only spins */
    void (*dot4)(const int8_t *, const int8_t *, int64_t, int32_t *) = dot4_scalar;
#ifdef QRNN_GEMM_X86
    if (__builtin_cpu_supports("avx2")) dot4 = dot4_avx2; /* the kernel is chosen at run time */
#endif
    int64_t blocks = N / 4;
    for (int64_t b = 0; b < blocks; ++b) {
        int64_t n = 4 * b;
        for (int64_t m = 0; m < M; ++m) dot4(x + m * K, w + n * K, K, y + m * N + n);
    }
    for (int64_t n = 4 * blocks; n < N; ++n) {
        for (int64_t m = 0; m < M; ++m) y[m * N + n] = dot1(x + m * K, w + n * K, K);
    }
}
