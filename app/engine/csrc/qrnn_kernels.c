/* Weight x activation kernels of the qrnn runtime: int8 and packed DenseShift weights, each as a portable
 * scalar loop (the reference), an AVX2 path and an AVX-512 VNNI path, chosen at run time by CPU feature.
 * All compute the exact int32 dot products w[r] . x[i]; tests/test_native.py compares every path.
 *
 * Layout: rows in blocks of 16, columns in steps of 4. One 64-byte tile holds 16 rows x 4 columns
 * (byte 4 * row + column), so one vector instruction accumulates 16 different output rows, with no
 * horizontal sums, and a tile loaded once serves every activation row of the batch.
 * AVX-512 VNNI (vpdpbusd: unsigned x signed bytes, no saturation): (w + 128) as the unsigned operand and x
 * as the signed one, then 128 * sum(x) subtracted.
 * AVX2 (vpmaddubsw saturates pairs to int16): |x| as the unsigned operand and w * sign(x) as the signed one
 * (vpsignb), so a pair is at most 2 * 128 * 127 < 2^15. It needs w != -128; such matrices run the scalar loop.
 * DenseShift tiles (w = s * 2^e, e in 0..3) are 24 bytes: 16 bytes of 2-bit exponents (tile byte p has its
 * exponent in bits 2 * (p / 16) of byte p % 16) and 8 bytes of sign bits (bit p of the little-endian word),
 * decoded in registers by byte shuffles: a step reads 3 bits per weight instead of 8.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "qrnn_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define QRNN_X86 1
#include <immintrin.h>
#endif

#define TILE_ROWS 16
#define TILE_COLS 4

/* ---- building weights ------------------------------------------------------------------------------ */

static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

static void *zalloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    memset(p, 0, bytes ? bytes : 64);
    return p;
}

void qrnn_weight_free(qrnn_weight *w) {
    free(w->q);
    free(w->planes);
    free(w->row_sum);
    memset(w, 0, sizeof *w);
}

/* tile index and byte position of weight (r, c) */
static inline int64_t tile_of(const qrnn_weight *w, int64_t r, int64_t c) {
    return (r / TILE_ROWS) * (w->kp / TILE_COLS) + c / TILE_COLS;
}
static inline int tile_pos(int64_t r, int64_t c) { return (int)(TILE_COLS * (r % TILE_ROWS) + c % TILE_COLS); }

static int init_weight(qrnn_weight *w, int kind, int32_t n, int32_t k) {
    memset(w, 0, sizeof *w);
    w->n = n, w->k = k, w->np = (int32_t)round_up(n, TILE_ROWS), w->kp = (int32_t)round_up(k, TILE_COLS), w->kind = kind;
    size_t tiles = (size_t)(w->np / TILE_ROWS) * (w->kp / TILE_COLS);
    if (kind == QRNN_W_INT8) w->q = zalloc(tiles * 64);
    else w->planes = zalloc(tiles * QRNN_SHIFT_TILE_BYTES);
    w->row_sum = zalloc((size_t)w->np * sizeof(int32_t));
    if ((!w->q && !w->planes) || !w->row_sum) {
        qrnn_weight_free(w);
        qrnn_set_error("out of memory for a %d x %d weight", n, k);
        return -1;
    }
    return 0;
}

/* the tiles of int8 values (n, k), into w->q and w->row_sum (zeroed, of the sizes init_weight gives) */
static void fill_int8(qrnn_weight *w, const int8_t *values) {
    const int64_t steps = w->kp / TILE_COLS, n = w->n, k = w->k;
    int8_t *q = w->q; /* locals: int8_t stores may alias any field of *w, which would be reloaded each time */
    int32_t *row_sum = w->row_sum;
    int has_min = 0;
    for (int64_t r = 0; r < n; ++r) {
        const int8_t *src = values + r * k;
        int8_t *dst = q + (r / TILE_ROWS) * steps * 64 + TILE_COLS * (r % TILE_ROWS);
        int32_t sum = 0;
        int64_t c = 0;
        for (; c + TILE_COLS <= k; c += TILE_COLS, dst += 64) memcpy(dst, src + c, TILE_COLS);
        if (c < k) memcpy(dst, src + c, (size_t)(k - c)); /* the rest of the tile stays zero */
        for (c = 0; c < k; ++c) {
            sum += src[c];
            has_min |= src[c] == -128;
        }
        row_sum[r] = sum;
    }
    w->has_min = has_min;
}

int qrnn_weight_from_int8(qrnn_weight *w, const int8_t *values, int32_t n, int32_t k) {
    if (init_weight(w, QRNN_W_INT8, n, k)) return -1;
    fill_int8(w, values);
    return 0;
}

size_t qrnn_weight_int8_bytes(int32_t n, int32_t k) {
    return (size_t)round_up(n, TILE_ROWS) * (size_t)round_up(k, TILE_COLS) + (size_t)round_up(n, TILE_ROWS) * sizeof(int32_t);
}

void qrnn_weight_int8_in(qrnn_weight *w, const int8_t *values, int32_t n, int32_t k, void *buffer) {
    memset(w, 0, sizeof *w);
    w->n = n, w->k = k, w->np = (int32_t)round_up(n, TILE_ROWS), w->kp = (int32_t)round_up(k, TILE_COLS);
    w->kind = QRNN_W_INT8;
    memset(buffer, 0, qrnn_weight_int8_bytes(n, k));
    w->q = buffer;
    w->row_sum = (int32_t *)((int8_t *)buffer + (size_t)w->np * w->kp);
    fill_int8(w, values);
}

qrnn_weight *qrnn_weight_new(const int8_t *values, int64_t n, int64_t k) {
    qrnn_weight *w = malloc(sizeof *w);
    if (w == NULL || qrnn_weight_from_int8(w, values, (int32_t)n, (int32_t)k)) {
        free(w);
        return NULL;
    }
    return w;
}

void qrnn_weight_delete(qrnn_weight *w) {
    if (w == NULL) return;
    qrnn_weight_free(w);
    free(w);
}

int qrnn_weight_matmul(const qrnn_weight *w, const int8_t *x, int64_t m, int32_t *y) {
    if (m == 0 || w->n == 0) return 0;
    const int64_t ld = w->kp;
    int8_t *xp = qrnn_scratch(1, (size_t)(m * ld));
    int32_t *acc = qrnn_scratch(2, (size_t)(m * w->np) * sizeof(int32_t));
    if (xp == NULL || acc == NULL) return 1;
    for (int64_t i = 0; i < m; ++i) { /* rows padded with zeros to the tiles' columns */
        memcpy(xp + i * ld, x + i * w->k, (size_t)w->k);
        memset(xp + i * ld + w->k, 0, (size_t)(ld - w->k));
    }
    qrnn_matmul_rows(w, qrnn_cpu_isa(), xp, ld, (int)m, 0, w->n, acc, w->np);
    for (int64_t i = 0; i < m; ++i) memcpy(y + i * w->n, acc + i * w->np, (size_t)w->n * sizeof(int32_t));
    return 0;
}

void *qrnn_scratch(int slot, size_t bytes) {
    static _Thread_local struct {
        void *p;
        size_t size;
    } scratch[4];
    if (scratch[slot].size < bytes) {
        free(scratch[slot].p);
        scratch[slot].p = NULL;
        scratch[slot].size = 0;
        if (posix_memalign(&scratch[slot].p, 64, bytes) != 0) return NULL;
        scratch[slot].size = bytes;
    }
    return scratch[slot].p;
}

int qrnn_weight_from_shift(qrnn_weight *w, const uint8_t *sign, const uint8_t *exponent, int32_t n, int32_t k) {
    if (init_weight(w, QRNN_W_SHIFT, n, k)) return -1;
    for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < k; ++c) {
            int e = exponent[r * k + c], s = sign[r * k + c];
            if (e > 3) {
                qrnn_set_error("DenseShift exponent %d does not fit the 3-bit runtime (codes of 2 or 3 bits)", e);
                qrnn_weight_free(w);
                return -1;
            }
            uint8_t *tile = w->planes + tile_of(w, r, c) * QRNN_SHIFT_TILE_BYTES;
            int p = tile_pos(r, c);
            tile[p % 16] |= (uint8_t)(e << (2 * (p / 16)));
            if (s) tile[16 + p / 8] |= (uint8_t)(1u << (p % 8));
            w->row_sum[r] += s ? -(1 << e) : (1 << e);
        }
    return 0; /* padding decodes as +1 (code 0) and always meets x = 0 */
}

int64_t qrnn_weight_stored_bytes(const qrnn_weight *w) {
    int64_t tiles = (int64_t)(w->np / TILE_ROWS) * (w->kp / TILE_COLS);
    return tiles * (w->kind == QRNN_W_SHIFT ? QRNN_SHIFT_TILE_BYTES : 64);
}

/* ---- scalar (reference) ----------------------------------------------------------------------------- */

static inline int32_t shift_value(const uint8_t *tile, int p) {
    int e = (tile[p % 16] >> (2 * (p / 16))) & 3;
    return ((tile[16 + p / 8] >> (p % 8)) & 1) ? -(1 << e) : (1 << e);
}

static void scalar_rows(const qrnn_weight *w, const int8_t *x, int64_t ldx, int m, int r0, int r1, int32_t *acc,
                        int64_t ldacc) {
    for (int r = r0; r < r1; ++r)
        for (int i = 0; i < m; ++i) {
            const int8_t *xi = x + i * ldx;
            int32_t s = 0;
            for (int64_t c = 0; c < w->k; ++c) {
                int p = tile_pos(r, c);
                int32_t v = w->kind == QRNN_W_SHIFT ? shift_value(w->planes + tile_of(w, r, c) * QRNN_SHIFT_TILE_BYTES, p)
                                                    : w->q[tile_of(w, r, c) * 64 + p];
                s += (int32_t)xi[c] * v; /* DenseShift: x * (+-2^e), a shift and a sign */
            }
            acc[i * ldacc + r] = s;
        }
}

#ifdef QRNN_X86
#define MAX_ROWS_AT_ONCE 8 /* activation rows sharing each loaded tile (registers) */

/* ---- AVX2 ----------------------------------------------------------------------------------------- */
#define QRNN_AVX2 __attribute__((target("avx2")))

/* one 32-byte half tile (8 rows x 4 columns) of DenseShift weights as int8 values +-2^e */
QRNN_AVX2 static inline __m256i shift_half_avx2(const uint8_t *tile, int half) {
    const __m256i lut = _mm256_setr_epi8(1, 2, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 0, 0, 0, 0, 0, 0,
                                         0, 0, 0, 0, 0, 0);
    __m256i e = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tile));
    __m256i counts = half ? _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6) : _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    __m256i mag = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srlv_epi32(e, counts), _mm256_set1_epi8(3)));
    uint32_t bits;
    memcpy(&bits, tile + 16 + 4 * half, 4);
    const __m256i select = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                            3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((int64_t)0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int32_t)bits), select);
    __m256i neg = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit); /* 0xff where the weight is negative */
    return _mm256_sub_epi8(_mm256_xor_si256(mag, neg), neg);
}

/* one half tile (8 rows) against MI activation rows; MI is a constant in each copy (accumulators in registers) */
#define AVX2_GROUP(MI)                                                                                            \
    QRNN_AVX2 static void avx2_group##MI(const qrnn_weight *w, int64_t tile0, int64_t steps, int half,          \
                                         const int8_t *x, int64_t ldx, int32_t *acc, int64_t ldacc) {            \
        const __m256i ones = _mm256_set1_epi16(1);                                                               \
        __m256i s[MI];                                                                                           \
        for (int i = 0; i < MI; ++i) s[i] = _mm256_setzero_si256();                                              \
        for (int64_t kk = 0; kk < steps; ++kk) {                                                                 \
            __m256i wv = w->kind == QRNN_W_SHIFT                                                                 \
                             ? shift_half_avx2(w->planes + (tile0 + kk) * QRNN_SHIFT_TILE_BYTES, half)           \
                             : _mm256_load_si256((const __m256i *)(w->q + (tile0 + kk) * 64 + 32 * half));       \
            for (int i = 0; i < MI; ++i) {                                                                       \
                int32_t four;                                                                                    \
                memcpy(&four, x + i * ldx + TILE_COLS * kk, 4);                                                  \
                __m256i xv = _mm256_set1_epi32(four);                                                            \
                __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv));             \
                s[i] = _mm256_add_epi32(s[i], _mm256_madd_epi16(pairs, ones));                                   \
            }                                                                                                    \
        }                                                                                                        \
        for (int i = 0; i < MI; ++i) _mm256_storeu_si256((__m256i *)(acc + i * ldacc), s[i]);                     \
    }
AVX2_GROUP(1)
AVX2_GROUP(2)
AVX2_GROUP(3)
AVX2_GROUP(4)
AVX2_GROUP(5)
AVX2_GROUP(6)
AVX2_GROUP(7)
AVX2_GROUP(8)
typedef void (*avx2_group_fn)(const qrnn_weight *, int64_t, int64_t, int, const int8_t *, int64_t, int32_t *, int64_t);
static const avx2_group_fn AVX2_GROUPS[MAX_ROWS_AT_ONCE + 1] = {
    NULL, avx2_group1, avx2_group2, avx2_group3, avx2_group4, avx2_group5, avx2_group6, avx2_group7, avx2_group8};

QRNN_AVX2 static void avx2_rows(const qrnn_weight *w, const int8_t *x, int64_t ldx, int m, int r0, int r1,
                                int32_t *acc, int64_t ldacc) {
    const int64_t steps = w->kp / TILE_COLS;
    for (int r = r0; r < r1; r += 8) { /* half tiles: 8 rows, every activation row against each while in L1 */
        const int64_t tile0 = (int64_t)(r / TILE_ROWS) * steps;
        for (int i0 = 0; i0 < m; i0 += MAX_ROWS_AT_ONCE) {
            const int mi = m - i0 < MAX_ROWS_AT_ONCE ? m - i0 : MAX_ROWS_AT_ONCE;
            AVX2_GROUPS[mi](w, tile0, steps, (r % TILE_ROWS) / 8, x + i0 * ldx, ldx, acc + i0 * ldacc + r, ldacc);
        }
    }
}

/* ---- AVX-512 VNNI --------------------------------------------------------------------------------- */
#define QRNN_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

/* one DenseShift tile as unsigned bytes w + 128 */
QRNN_VNNI static inline __m512i shift_tile_vnni(const uint8_t *tile) {
    const __m512i pos = _mm512_broadcast_i32x4(_mm_setr_epi8((char)129, (char)130, (char)132, (char)136, 0, 0, 0, 0,
                                                             0, 0, 0, 0, 0, 0, 0, 0));
    const __m512i neg = _mm512_broadcast_i32x4(_mm_setr_epi8(127, 126, 124, 120, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
    const __m512i counts = _mm512_setr_epi64(0, 0, 0x0002000200020002LL, 0x0002000200020002LL, 0x0004000400040004LL,
                                             0x0004000400040004LL, 0x0006000600060006LL, 0x0006000600060006LL);
    __m512i e = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)tile)); /* lane j: shifted by 2j */
    e = _mm512_and_si512(_mm512_srlv_epi16(e, counts), _mm512_set1_epi8(3));
    uint64_t bits;
    memcpy(&bits, tile + 16, 8);
    return _mm512_mask_shuffle_epi8(_mm512_shuffle_epi8(pos, e), (__mmask64)bits, neg, e);
}

QRNN_VNNI static inline __m512i vnni_tile(const qrnn_weight *w, int64_t tile) {
    return w->kind == QRNN_W_SHIFT ? shift_tile_vnni(w->planes + tile * QRNN_SHIFT_TILE_BYTES)
                                   : _mm512_xor_si512(_mm512_load_si512(w->q + tile * 64), _mm512_set1_epi8((char)0x80));
}

/* one activation row (a decoding step): four row tiles at once, so that four independent accumulation chains
 * hide vpdpbusd's latency and each broadcast of x serves four tiles */
QRNN_VNNI static void vnni_row(const qrnn_weight *w, const int8_t *x, int r0, int r1, int32_t *acc, int32_t x_sum) {
    const int64_t steps = w->kp / TILE_COLS;
    const __m512i correction = _mm512_set1_epi32(x_sum);
    int r = r0;
    for (; r + 4 * TILE_ROWS <= r1 + TILE_ROWS - 1 && r + 4 * TILE_ROWS <= w->np; r += 4 * TILE_ROWS) {
        const int64_t t0 = (int64_t)(r / TILE_ROWS) * steps;
        __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
        for (int64_t kk = 0; kk < steps; ++kk) {
            int32_t four;
            memcpy(&four, x + TILE_COLS * kk, 4);
            const __m512i xv = _mm512_set1_epi32(four);
            s0 = _mm512_dpbusd_epi32(s0, vnni_tile(w, t0 + kk), xv);
            s1 = _mm512_dpbusd_epi32(s1, vnni_tile(w, t0 + steps + kk), xv);
            s2 = _mm512_dpbusd_epi32(s2, vnni_tile(w, t0 + 2 * steps + kk), xv);
            s3 = _mm512_dpbusd_epi32(s3, vnni_tile(w, t0 + 3 * steps + kk), xv);
        }
        _mm512_storeu_si512(acc + r, _mm512_sub_epi32(s0, correction));
        _mm512_storeu_si512(acc + r + TILE_ROWS, _mm512_sub_epi32(s1, correction));
        _mm512_storeu_si512(acc + r + 2 * TILE_ROWS, _mm512_sub_epi32(s2, correction));
        _mm512_storeu_si512(acc + r + 3 * TILE_ROWS, _mm512_sub_epi32(s3, correction));
    }
    for (; r < r1; r += TILE_ROWS) {
        const int64_t t0 = (int64_t)(r / TILE_ROWS) * steps;
        __m512i s0 = _mm512_setzero_si512(), s1 = s0; /* two chains over even and odd steps */
        int64_t kk = 0;
        for (; kk + 2 <= steps; kk += 2) {
            int32_t four[2];
            memcpy(four, x + TILE_COLS * kk, 8);
            s0 = _mm512_dpbusd_epi32(s0, vnni_tile(w, t0 + kk), _mm512_set1_epi32(four[0]));
            s1 = _mm512_dpbusd_epi32(s1, vnni_tile(w, t0 + kk + 1), _mm512_set1_epi32(four[1]));
        }
        if (kk < steps) {
            int32_t four;
            memcpy(&four, x + TILE_COLS * kk, 4);
            s0 = _mm512_dpbusd_epi32(s0, vnni_tile(w, t0 + kk), _mm512_set1_epi32(four));
        }
        _mm512_storeu_si512(acc + r, _mm512_sub_epi32(_mm512_add_epi32(s0, s1), correction));
    }
}

/* one row tile against MI activation rows; MI is a constant in each copy, so the accumulators stay in registers */
#define VNNI_GROUP(MI)                                                                                           \
    QRNN_VNNI static void vnni_group##MI(const qrnn_weight *w, int64_t tile0, int64_t steps, const int8_t *x,    \
                                         int64_t ldx, const int32_t *x_sum, int32_t *acc, int64_t ldacc) {       \
        __m512i s[MI];                                                                                           \
        for (int i = 0; i < MI; ++i) s[i] = _mm512_setzero_si512();                                              \
        for (int64_t kk = 0; kk < steps; ++kk) {                                                                 \
            __m512i wu = vnni_tile(w, tile0 + kk);                                                               \
            for (int i = 0; i < MI; ++i) {                                                                       \
                int32_t four;                                                                                    \
                memcpy(&four, x + i * ldx + TILE_COLS * kk, 4);                                                  \
                s[i] = _mm512_dpbusd_epi32(s[i], wu, _mm512_set1_epi32(four));                                   \
            }                                                                                                    \
        }                                                                                                        \
        for (int i = 0; i < MI; ++i)                                                                             \
            _mm512_storeu_si512(acc + i * ldacc, _mm512_sub_epi32(s[i], _mm512_set1_epi32(x_sum[i])));          \
    }
VNNI_GROUP(1)
VNNI_GROUP(2)
VNNI_GROUP(3)
VNNI_GROUP(4)
VNNI_GROUP(5)
VNNI_GROUP(6)
VNNI_GROUP(7)
VNNI_GROUP(8)
typedef void (*vnni_group_fn)(const qrnn_weight *, int64_t, int64_t, const int8_t *, int64_t, const int32_t *, int32_t *,
                              int64_t);
static const vnni_group_fn VNNI_GROUPS[MAX_ROWS_AT_ONCE + 1] = {
    NULL, vnni_group1, vnni_group2, vnni_group3, vnni_group4, vnni_group5, vnni_group6, vnni_group7, vnni_group8};

QRNN_VNNI static void vnni_rows(const qrnn_weight *w, const int8_t *x, int64_t ldx, int m, int r0, int r1,
                                int32_t *acc, int64_t ldacc) {
    const int64_t steps = w->kp / TILE_COLS;
    int32_t stack_sums[64], *x_sum = m <= 64 ? stack_sums : malloc((size_t)m * sizeof(int32_t));
    if (!x_sum) { /* no memory for the row sums: the scalar loop needs none */
        scalar_rows(w, x, ldx, m, r0, r1, acc, ldacc);
        return;
    }
    for (int i = 0; i < m; ++i) { /* padding columns of x are zero, so sum over kp */
        int32_t s = 0;
        for (int64_t c = 0; c < w->kp; ++c) s += x[i * ldx + c];
        x_sum[i] = 128 * s;
    }
    if (m == 1) {
        vnni_row(w, x, r0, r1, acc, x_sum[0]);
        return;
    }
    /* a row tile at a time, every activation row against it while it sits in L1: weights are read once */
    for (int r = r0; r < r1; r += TILE_ROWS) {
        const int64_t tile0 = (int64_t)(r / TILE_ROWS) * steps;
        for (int i0 = 0; i0 < m; i0 += MAX_ROWS_AT_ONCE) {
            const int mi = m - i0 < MAX_ROWS_AT_ONCE ? m - i0 : MAX_ROWS_AT_ONCE;
            VNNI_GROUPS[mi](w, tile0, steps, x + i0 * ldx, ldx, x_sum + i0, acc + i0 * ldacc + r, ldacc);
        }
    }
    if (x_sum != stack_sums) free(x_sum);
}
#endif /* QRNN_X86 */

/* ---- requantization ------------------------------------------------------------------------------- */

static void requantize_scalar(const int32_t *acc, const int64_t *bias, const int64_t *m0, const int64_t *shift,
                              int64_t lo, int64_t hi, int v0, int v1, int32_t *out) {
    for (int v = v0; v < v1; ++v) {
        int64_t a = (int64_t)acc[v] + (bias ? bias[v] : 0);
        out[v] = (int32_t)qrnn_clamp(qrnn_round_shift(a * m0[v], shift[v]), lo, hi);
    }
}

#ifdef QRNN_X86
__attribute__((target("avx512f,avx512dq"))) static void requantize_avx512(const int32_t *acc, const int64_t *bias,
                                                                          const int64_t *m0, const int64_t *shift,
                                                                          int64_t lo, int64_t hi, int v0, int v1,
                                                                          int32_t *out) {
    const __m512i one = _mm512_set1_epi64(1), vlo = _mm512_set1_epi64(lo), vhi = _mm512_set1_epi64(hi);
    int v = v0;
    for (; v + 8 <= v1; v += 8) {
        __m512i a = _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(acc + v)));
        if (bias) a = _mm512_add_epi64(a, _mm512_loadu_si512(bias + v));
        __m512i s = _mm512_loadu_si512(shift + v);
        __m512i half = _mm512_sllv_epi64(one, _mm512_sub_epi64(s, one));
        __m512i y = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mullo_epi64(a, _mm512_loadu_si512(m0 + v)), half), s);
        y = _mm512_min_epi64(_mm512_max_epi64(y, vlo), vhi);
        _mm256_storeu_si256((__m256i *)(out + v), _mm512_cvtepi64_epi32(y));
    }
    requantize_scalar(acc, bias, m0, shift, lo, hi, v, v1, out);
}
#endif

void qrnn_requantize_rows(int isa, const int32_t *acc, const int64_t *bias, const int64_t *m0, const int64_t *shift,
                          int64_t lo, int64_t hi, int v0, int v1, int32_t *out) {
#ifdef QRNN_X86
    if (isa == QRNN_ISA_AVX512VNNI) {
        requantize_avx512(acc, bias, m0, shift, lo, hi, v0, v1, out);
        return;
    }
#else
    (void)isa;
#endif
    requantize_scalar(acc, bias, m0, shift, lo, hi, v0, v1, out);
}

/* ---- dispatch ------------------------------------------------------------------------------------- */

int qrnn_cpu_isa(void) {
#ifdef QRNN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni"))
        return QRNN_ISA_AVX512VNNI;
    if (__builtin_cpu_supports("avx2")) return QRNN_ISA_AVX2;
#endif
    return QRNN_ISA_SCALAR;
}

int qrnn_isa_supported(int isa) {
    int best = qrnn_cpu_isa();
    if (isa == QRNN_ISA_AUTO || isa == QRNN_ISA_SCALAR) return 1;
    if (isa == QRNN_ISA_AVX2 || isa == QRNN_ISA_AVX512VNNI) return best >= isa;
    return 0;
}

const char *qrnn_isa_name(int isa) {
    switch (isa) {
    case QRNN_ISA_SCALAR: return "scalar";
    case QRNN_ISA_AVX2: return "avx2";
    case QRNN_ISA_AVX512VNNI: return "avx512vnni";
    default: return "auto";
    }
}

void qrnn_matmul_rows(const qrnn_weight *w, int isa, const int8_t *x, int64_t ldx, int m, int r0, int r1,
                      int32_t *acc, int64_t ldacc) {
    if (r0 >= r1 || m <= 0) return;
#ifdef QRNN_X86
    if (isa == QRNN_ISA_AVX512VNNI) {
        vnni_rows(w, x, ldx, m, r0, r1, acc, ldacc);
        return;
    }
    if (isa == QRNN_ISA_AVX2 && !w->has_min) {
        avx2_rows(w, x, ldx, m, r0, r1, acc, ldacc);
        return;
    }
#else
    (void)isa;
#endif
    scalar_rows(w, x, ldx, m, r0, r1, acc, ldacc);
}
