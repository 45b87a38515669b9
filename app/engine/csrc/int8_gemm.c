/* int8 x int8 -> int32 matrix product, y = x w^T, for the torch-op engine (registered as qrnn::int8_gemm_nt).
 *
 * x: (M, K) int8 row-major, w: (N, K) int8 row-major (the nn.Linear layout), y: (M, N) int32, exact for
 * K < 2^16. The weight is laid out in the runtime's tiles (in this thread's reused work buffers) and multiplied by its kernels (qrnn_kernels.c:
 * scalar, AVX2 or AVX-512 VNNI, chosen by CPU feature); the copies cost O(NK + MK) next to O(MNK).
 * Returns 0, or 1 when the work buffers could not be allocated (y untouched).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "qrnn_internal.h"

int qrnn_int8_gemm_nt(const int8_t *x, const int8_t *w, int32_t *y, int64_t M, int64_t N, int64_t K) {
    qrnn_weight tiles;
    if (N == 0 || M == 0) return 0;
    void *buffer = qrnn_scratch(0, qrnn_weight_int8_bytes((int32_t)N, (int32_t)K));
    if (buffer == NULL) return 1;
    qrnn_weight_int8_in(&tiles, w, (int32_t)N, (int32_t)K, buffer);
    const int64_t ld = tiles.kp;
    int8_t *xp = qrnn_scratch(1, (size_t)(M * ld)); /* rows padded with zeros to the tiles' columns */
    int32_t *acc = qrnn_scratch(2, (size_t)(M * tiles.np) * sizeof(int32_t));
    if (xp == NULL || acc == NULL) return 1;
    for (int64_t m = 0; m < M; ++m) {
        memcpy(xp + m * ld, x + m * K, (size_t)K);
        memset(xp + m * ld + K, 0, (size_t)(ld - K));
    }
    qrnn_matmul_rows(&tiles, qrnn_cpu_isa(), xp, ld, (int)M, 0, (int)N, acc, tiles.np);
    for (int64_t m = 0; m < M; ++m) memcpy(y + m * N, acc + m * tiles.np, (size_t)N * sizeof(int32_t));
    return 0;
}
