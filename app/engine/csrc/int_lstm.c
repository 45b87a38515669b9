/* One direction of the integer LSTM over a whole sequence, for the torch-op engine (app/engine/lstm.py).
 *
 * The same integers as run_direction (recurrent_gates + cell_step) for cells without layer norm and with
 * int8 recurrent weights: per step, the recurrent GEMV of every sequence at once (the runtime's tiled
 * kernels, qrnn_kernels.c), its per-channel requantization, the gate sum, the PWL activations as lookup
 * tables, the cell and hidden updates. Integer arithmetic only; round half up (qrnn_round_shift).
 *
 * x_proj: (B, T, 4H) int64, the input projection with bias (int32 range); w: the (4H, H) recurrent weight
 * (qrnn_weight_new);
 * m0, shift: (4H,) int64 recurrent requantization; luts: sigmoid, tanh (gate) and tanh (cell) tables
 * indexed by x - lut_min (they cover the int16 range); lengths: (B,) or NULL; h, c: (B, H) int64, the
 * initial state in, the final state out; out: (B, T, H) int64. Padded steps (t >= length) keep the state.
 * Returns 0, or 1 when its work buffers (this thread's, reused) could not be allocated (nothing written then).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "qrnn_internal.h"

int qrnn_lstm_direction(const int64_t *x_proj, const qrnn_weight *w, const int64_t *m0, const int64_t *shift,
                        int64_t req_lo, int64_t req_hi, const int64_t *lut_sig, const int64_t *lut_tanh_gate,
                        const int64_t *lut_tanh_cell, int64_t lut_min, int64_t ig_shift, int64_t h_shift,
                        int64_t h_lo, int64_t h_hi, const int64_t *lengths, int64_t *h, int64_t *c, int64_t *out,
                        int64_t B, int64_t T, int64_t H) {
    const int64_t G = 4 * H, ld = qrnn_pad64(H);
    int8_t *h8 = qrnn_scratch(1, (size_t)(B * ld));
    int32_t *acc = qrnn_scratch(2, (size_t)(B * w->np) * sizeof(int32_t));
    if (h8 == NULL || acc == NULL) return 1;
    memset(h8, 0, (size_t)(B * ld));
    const int isa = qrnn_cpu_isa();
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t b = 0; b < B; ++b)
            for (int64_t k = 0; k < H; ++k) h8[b * ld + k] = (int8_t)h[b * H + k];
        qrnn_matmul_rows(w, isa, h8, ld, (int)B, 0, (int)G, acc, w->np);
        for (int64_t b = 0; b < B; ++b) {
            int64_t *hb = h + b * H, *cb = c + b * H, *ob = out + (b * T + t) * H;
            if (lengths && t >= lengths[b]) { /* padding: the state is kept and repeated as the output */
                memcpy(ob, hb, (size_t)H * sizeof(int64_t));
                continue;
            }
            const int64_t *xp = x_proj + (b * T + t) * G;
            const int32_t *ab = acc + b * w->np;
            for (int64_t k = 0; k < H; ++k) {
                int64_t gate[4];
                for (int g = 0; g < 4; ++g) {
                    int64_t j = g * H + k;
                    int64_t hp = qrnn_clamp(qrnn_round_shift((int64_t)ab[j] * m0[j], shift[j]), req_lo, req_hi);
                    gate[g] = qrnn_clamp(xp[j] + hp, -32768, 32767) - lut_min;
                }
                int64_t i = lut_sig[gate[0]], f = lut_sig[gate[1]], g = lut_tanh_gate[gate[2]], o = lut_sig[gate[3]];
                int64_t cn = qrnn_clamp(qrnn_round_shift(f * cb[k], 15) + qrnn_round_shift(i * g, ig_shift), -32768, 32767);
                cb[k] = cn;
                hb[k] = qrnn_clamp(qrnn_round_shift(o * lut_tanh_cell[cn - lut_min], h_shift), h_lo, h_hi);
                ob[k] = hb[k];
            }
        }
    }
    return 0;
}
