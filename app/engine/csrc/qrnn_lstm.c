/* The integer LSTM step, layer norm and linear layer of the qrnn runtime (app/engine/lstm.py, layernorm.py,
 * layers.py, integer for integer):
 *   x_proj  = requant32(W_x x + b)                          or  LN_x(requant16(W_x x))   (Q3.12)
 *   h_proj  = requant32(W_h h)                              or  LN_h(requant16(W_h h)) + b_q12
 *   gates   = sat16(x_proj + h_proj);  i, f, o = sigmoid_lut, g = tanh_lut            (Q0.15)
 *   c'      = sat16(round(f * c / 2^15) + round(i * g / 2^(30 - cell_frac)))
 *   h'      = sat(round(o * tanh_lut(c' or LN(c')) / 2^(30 - h_frac)))
 * Rounding is round half up everywhere (qrnn_round_shift).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "qrnn_internal.h"

#define LN_EXTRA_BITS 8
#define LN_GAMMA_FRAC 12
#define SHL(x, s) ((x) * ((int64_t)1 << (s))) /* x * 2^s without shifting a negative value */

static int64_t isqrt64(uint64_t n) { /* floor(sqrt(n)), digit by digit */
    uint64_t result = 0, bit = (uint64_t)1 << 62;
    while (bit > n) bit >>= 2;
    while (bit) {
        if (n >= result + bit) {
            n -= result + bit;
            result = (result >> 1) + bit;
        } else {
            result >>= 1;
        }
        bit >>= 2;
    }
    return (int64_t)result;
}

/* layer_norm_int over x[0..n): statistics of all n, outputs y[k] for k in [k0, k1) (gamma/beta at off + k) */
static void layer_norm(const int64_t *x, int64_t n, const qrnn_ln *ln, int64_t off, int64_t *y, int64_t k0, int64_t k1) {
    int64_t total = 0;
    for (int64_t i = 0; i < n; ++i) total += x[i];
    int64_t mean_s = qrnn_floor_div(2 * SHL(total, LN_EXTRA_BITS) + n, 2 * n);
    int64_t var = 0;
    for (int64_t i = 0; i < n; ++i) {
        int64_t d = SHL(x[i], LN_EXTRA_BITS) - mean_s;
        var += d * d;
    }
    int64_t std_s = isqrt64((uint64_t)(var / n + ln->eps_s));
    for (int64_t i = k0; i < k1; ++i) {
        int64_t d = SHL(x[i], LN_EXTRA_BITS) - mean_s;
        int64_t x_hat = qrnn_floor_div(2 * SHL(d, ln->out_frac) + std_s, 2 * std_s);
        y[i] = qrnn_clamp(qrnn_round_shift(ln->gamma[off + i] * x_hat, LN_GAMMA_FRAC) + ln->beta[off + i], -32768, 32767);
    }
}

int qrnn_lstm_io_alloc(qrnn_lstm_io *io, int B, int H) {
    memset(io, 0, sizeof *io);
    size_t b = (size_t)B, h = (size_t)H, g = 4 * h;
    io->B = B, io->gp = (int64_t)((g + 15) / 16 * 16);
    io->acc_x = calloc(b * (size_t)io->gp, sizeof(int32_t)), io->acc_h = calloc(b * (size_t)io->gp, sizeof(int32_t));
    io->proj_x = calloc(b * g, sizeof(int64_t)), io->proj_h = calloc(b * g, sizeof(int64_t));
    io->norm_x = calloc(b * g, sizeof(int64_t)), io->norm_h = calloc(b * g, sizeof(int64_t));
    io->o_gate = calloc(b * h, sizeof(int64_t)), io->c_norm = calloc(b * h, sizeof(int64_t));
    if (io->acc_x && io->acc_h && io->proj_x && io->proj_h && io->norm_x && io->norm_h && io->o_gate && io->c_norm) return 0;
    qrnn_lstm_io_free(io);
    qrnn_set_error("out of memory for LSTM work buffers");
    return -1;
}

void qrnn_lstm_io_free(qrnn_lstm_io *io) {
    free(io->acc_x), free(io->acc_h), free(io->proj_x), free(io->proj_h), free(io->norm_x), free(io->norm_h);
    free(io->o_gate), free(io->c_norm);
    memset(io, 0, sizeof *io);
}

/* one unit's cell from its four gate pre-activations (Q3.12, saturated): c updated; h written, or (cell layer
 * norm) the output gate kept for after the norm */
static inline void unit_update(const qrnn_lstm_dir *L, const int64_t gate[4], int64_t *c, int8_t *h, int64_t *o_gate) {
    const qrnn_acts *a = L->acts;
    int64_t ig = qrnn_lut_get(&a->sig, gate[0]), fg = qrnn_lut_get(&a->sig, gate[1]);
    int64_t gg = qrnn_lut_get(&a->tanh_gate, gate[2]), og = qrnn_lut_get(&a->sig, gate[3]);
    *c = qrnn_clamp(qrnn_round_shift(fg * *c, QRNN_PWL_OUT_FRAC) + qrnn_round_shift(ig * gg, 2 * QRNN_PWL_OUT_FRAC - L->cell_frac),
                    -32768, 32767);
    if (L->ln_cell.gamma) {
        *o_gate = og;
        return;
    }
    int64_t t = qrnn_lut_get(&a->tanh_cell, *c);
    *h = (int8_t)qrnn_clamp(qrnn_round_shift(og * t, 2 * QRNN_PWL_OUT_FRAC - L->h_frac), -((int64_t)1 << (L->h_bits - 1)),
                            ((int64_t)1 << (L->h_bits - 1)) - 1);
}

static void barrier(qrnn_pool *pool) {
    if (pool) qrnn_pool_barrier(pool);
}

/* the gates of units [u0, u1) with a gate layer norm (over all H units of a gate block: barriers), then cells */
static void gate_norm_units(const qrnn_lstm_dir *L, qrnn_lstm_io *io, int u0, int u1, qrnn_pool *pool) {
    const int B = io->B, H = L->hidden, G = 4 * H;
    const int64_t GP = io->gp;
    const int ln_x = L->ln_ih.gamma != NULL, ln_h = L->ln_hh.gamma != NULL;
    if (u0 < u1) {
        /* requantized projections: Q3.12, saturated to int16 before a layer norm, to int32 otherwise */
        for (int b = 0; b < B; ++b)
            for (int k = u0; k < u1; ++k)
                for (int g = 0; g < 4; ++g) {
                    int64_t j = (int64_t)g * H + k, i = (int64_t)b * G + j, s = (int64_t)b * GP + 4 * k + g;
                    int64_t ax = (int64_t)io->acc_x[s] + (ln_x ? 0 : L->bias_acc[j]);
                    io->proj_x[i] = qrnn_clamp(qrnn_round_shift(ax * L->ih_m0[j], L->ih_shift[j]), ln_x ? -32768 : INT32_MIN,
                                               ln_x ? 32767 : INT32_MAX);
                    io->proj_h[i] = qrnn_clamp(qrnn_round_shift((int64_t)io->acc_h[s] * L->hh_m0[j], L->hh_shift[j]),
                                               ln_h ? -32768 : INT32_MIN, ln_h ? 32767 : INT32_MAX);
                }
    }
    if (ln_x || ln_h) { /* each gate block is normalized over all H units: wait for every thread's rows */
        barrier(pool);
        for (int b = 0; b < B && u0 < u1; ++b)
            for (int g = 0; g < 4; ++g) {
                int64_t off = (int64_t)b * G + (int64_t)g * H;
                if (ln_x) layer_norm(io->proj_x + off, H, &L->ln_ih, (int64_t)g * H, io->norm_x + off, u0, u1);
                if (ln_h) layer_norm(io->proj_h + off, H, &L->ln_hh, (int64_t)g * H, io->norm_h + off, u0, u1);
            }
    }
    for (int b = 0; b < B; ++b) {
        int64_t *cb = io->c + (int64_t)b * H;
        int8_t *hb = io->h_out + (int64_t)b * io->ldh;
        for (int k = u0; k < u1; ++k) {
            int64_t gate[4];
            for (int g = 0; g < 4; ++g) {
                int64_t j = (int64_t)g * H + k, i = (int64_t)b * G + j;
                int64_t xp = ln_x ? io->norm_x[i] : io->proj_x[i];
                int64_t hp = ln_h ? io->norm_h[i] + L->bias_q12[j] : io->proj_h[i];
                gate[g] = qrnn_clamp(xp + hp, -32768, 32767);
            }
            unit_update(L, gate, &cb[k], &hb[k], &io->o_gate[(int64_t)b * H + k]);
        }
    }
}

void qrnn_lstm_step(const qrnn_lstm_dir *L, int isa, qrnn_lstm_io *io, int u0, int u1, qrnn_pool *pool) {
    const int B = io->B, H = L->hidden;
    const int64_t GP = io->gp;
    const qrnn_acts *a = L->acts;
    const int64_t h_lo = -((int64_t)1 << (L->h_bits - 1)), h_hi = ((int64_t)1 << (L->h_bits - 1)) - 1;
    const int ln_x = L->ln_ih.gamma != NULL, ln_h = L->ln_hh.gamma != NULL, ln_c = L->ln_cell.gamma != NULL;
    if (u0 < u1) {
        if (io->x) qrnn_matmul_rows(&L->w_ih, isa, io->x, io->ldx, B, 4 * u0, 4 * u1, io->acc_x, GP);
        qrnn_matmul_rows(&L->w_hh, isa, io->h_in, io->ldh, B, 4 * u0, 4 * u1, io->acc_h, GP);
    }
    if (!ln_x && !ln_h) { /* requantize in place, in stored order (vector code), then gates and cells per unit */
        for (int b = 0; b < B && u0 < u1; ++b) {
            int32_t *ax = io->acc_x + (int64_t)b * GP, *ah = io->acc_h + (int64_t)b * GP;
            qrnn_requantize_rows(isa, ax, L->bias_acc_s, L->ih_m0_s, L->ih_shift_s, INT32_MIN, INT32_MAX, 4 * u0, 4 * u1, ax);
            qrnn_requantize_rows(isa, ah, NULL, L->hh_m0_s, L->hh_shift_s, INT32_MIN, INT32_MAX, 4 * u0, 4 * u1, ah);
            int64_t *cb = io->c + (int64_t)b * H;
            int8_t *hb = io->h_out + (int64_t)b * io->ldh;
            for (int k = u0; k < u1; ++k) {
                int64_t gate[4];
                for (int g = 0; g < 4; ++g) gate[g] = qrnn_clamp((int64_t)ax[4 * k + g] + ah[4 * k + g], -32768, 32767);
                unit_update(L, gate, &cb[k], &hb[k], &io->o_gate[(int64_t)b * H + k]);
            }
        }
    } else {
        gate_norm_units(L, io, u0, u1, pool);
    }
    if (ln_c) { /* tanh of the layer-normed cell (over all H units): wait for every thread's cells */
        barrier(pool);
        for (int b = 0; b < B && u0 < u1; ++b) {
            int64_t *normed = io->c_norm + (int64_t)b * H;
            int8_t *hb = io->h_out + (int64_t)b * io->ldh;
            layer_norm(io->c + (int64_t)b * H, H, &L->ln_cell, 0, normed, u0, u1);
            for (int k = u0; k < u1; ++k) {
                int64_t t = qrnn_lut_get(&a->tanh_gate, normed[k]);
                hb[k] = (int8_t)qrnn_clamp(
                    qrnn_round_shift(io->o_gate[(int64_t)b * H + k] * t, 2 * QRNN_PWL_OUT_FRAC - L->h_frac), h_lo, h_hi);
            }
        }
    }
}

void qrnn_linear_rows(const qrnn_linear *lin, int isa, const int8_t *x, int64_t ldx, int m, int r0, int r1,
                      int32_t *acc, int32_t *out, int64_t ldo) {
    qrnn_matmul_rows(&lin->w, isa, x, ldx, m, r0, r1, acc, lin->w.np);
    for (int i = 0; i < m; ++i)
        qrnn_requantize_rows(isa, acc + (int64_t)i * lin->w.np, lin->bias, lin->m0, lin->shift, lin->lo, lin->hi, r0,
                             r1 < lin->w.n ? r1 : lin->w.n, out + (int64_t)i * ldo);
}
