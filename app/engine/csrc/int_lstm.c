/* One direction of the integer LSTM over a whole sequence, for the integer engine.
 *
 * The same integers as app/engine/lstm.py's run_direction (recurrent_gates + cell_step) for cells
 * without layer norm and with int8 recurrent weights: per step and sequence, the recurrent int8 GEMV,
 * its per-channel requantization, the gate sum, the PWL activations as lookup tables, the cell and
 * hidden updates. Integer arithmetic only. Rounding is round-half-up by an arithmetic right shift
 * (gcc's >> on negative int64), as in fixed_point.py.
 *
 * x_proj: (B, T, 4H) int64, the input projection with bias (int32 range); w_hh: (4H, H) int8 row-major;
 * m0, shift: (4H,) int64 recurrent requantization; luts: sigmoid, tanh (gate) and tanh (cell) tables of
 * lut_len entries each, indexed by x - lut_min (they cover the int16 range); lengths: (B,) or NULL;
 * h, c: (B, H) int64, the initial state in, the final state out; out: (B, T, H) int64.
 * Returns 0, or 1 when its two small work buffers could not be allocated (nothing written then).
 */
#include <stdint.h>
#include <stdlib.h>

static inline int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

static inline int64_t round_shift(int64_t x, int64_t s) { return (x + ((int64_t)1 << (s - 1))) >> s; }

int qrnn_lstm_direction(const int64_t *x_proj, const int8_t *w_hh, const int64_t *m0, const int64_t *shift,
                         int64_t req_lo, int64_t req_hi, const int64_t *lut_sig, const int64_t *lut_tanh_gate,
                         const int64_t *lut_tanh_cell, int64_t lut_min, int64_t ig_shift, int64_t h_shift,
                         int64_t h_lo, int64_t h_hi, const int64_t *lengths, int64_t *h, int64_t *c, int64_t *out,
                         int64_t B, int64_t T, int64_t H) {
    const int64_t G = 4 * H;
    int8_t *h8 = malloc((size_t)H);
    int64_t *gates = malloc((size_t)G * sizeof(int64_t));
    if (h8 == NULL || gates == NULL) {
        free(h8);
        free(gates);
        return 1;
    }
    for (int64_t b = 0; b < B; ++b) {
        int64_t *hb = h + b * H, *cb = c + b * H;
        int64_t steps = lengths ? lengths[b] : T;
        for (int64_t t = 0; t < T; ++t) {
            int64_t *ob = out + (b * T + t) * H;
            if (t >= steps) { /* padding: the state is kept and repeated as the output */
                for (int64_t k = 0; k < H; ++k) ob[k] = hb[k];
                continue;
            }
            const int64_t *xp = x_proj + (b * T + t) * G;
            for (int64_t k = 0; k < H; ++k) h8[k] = (int8_t)hb[k];
            for (int64_t j = 0; j < G; ++j) {
                const int8_t *w = w_hh + j * H;
                int64_t acc = 0;
                for (int64_t k = 0; k < H; ++k) acc += (int32_t)h8[k] * (int32_t)w[k];
                int64_t hp = clamp64((acc * m0[j] + ((int64_t)1 << (shift[j] - 1))) >> shift[j], req_lo, req_hi);
                gates[j] = clamp64(xp[j] + hp, -32768, 32767);
            }
            for (int64_t k = 0; k < H; ++k) {
                int64_t i = lut_sig[gates[k] - lut_min];
                int64_t f = lut_sig[gates[H + k] - lut_min];
                int64_t g = lut_tanh_gate[gates[2 * H + k] - lut_min];
                int64_t o = lut_sig[gates[3 * H + k] - lut_min];
                int64_t fc = round_shift(f * cb[k], 15);
                int64_t ig = round_shift(i * g, ig_shift);
                int64_t cn = clamp64(fc + ig, -32768, 32767);
                int64_t tc = lut_tanh_cell[cn - lut_min];
                cb[k] = cn;
                hb[k] = clamp64(round_shift(o * tc, h_shift), h_lo, h_hi);
                ob[k] = hb[k];
            }
        }
    }
    free(h8);
    free(gates);
    return 0;
}
