/* The integer language model of the qrnn runtime: loading from the checkpoint tree, one batched step.
 *
 * The arithmetic is app/engine/lstm.py, layers.py, layernorm.py and pwl.py, integer for integer:
 *   x_proj  = requant32(W_x x + b)                          or  LN_x(requant16(W_x x))   (Q3.12)
 *   h_proj  = requant32(W_h h)                              or  LN_h(requant16(W_h h)) + b_q12
 *   gates   = sat16(x_proj + h_proj);  i, f, o = sigmoid_lut, g = tanh_lut            (Q0.15)
 *   c'      = sat16(round(f * c / 2^15) + round(i * g / 2^(30 - cell_frac)))
 *   h'      = sat(round(o * tanh_lut(c' or LN(c')) / 2^(30 - h_frac)))
 *   logits  = sat32(round((W y + b) * m0 / 2^shift))
 * Rounding is round half up everywhere (qrnn_round_shift). Threads split each layer by hidden unit (the
 * four gate rows of a unit and its cell update stay on one thread) and the output layer by vocabulary row.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrnn_internal.h"

#define GATE_FRAC 12
#define PWL_OUT_FRAC 15
#define LN_EXTRA_BITS 8
#define LN_GAMMA_FRAC 12
#define LUT_MIN (-32768)
#define LUT_SIZE 65536
#define MAX_ERR 400

typedef struct {
    int64_t *gamma, *beta; /* (n,) */
    int64_t in_frac, out_frac, eps_s;
} qrnn_ln;

typedef struct {
    int in_dim, hidden;
    qrnn_weight w_ih, w_hh;
    int64_t *ih_m0, *ih_shift, *hh_m0, *hh_shift; /* (4H,): shift = exp + in/h frac - GATE_FRAC */
    int64_t *bias_acc, *bias_q12;                 /* (4H,) or NULL */
    qrnn_ln ln_ih, ln_hh, ln_cell;                /* gamma == NULL: absent */
    int64_t h_frac, h_bits, cell_frac;
} lstm_layer;

struct qrnn_model {
    char kind[8];
    int isa, threads;
    qrnn_pool *pool;
    int vocab, embed, hidden, layers;
    int emb_ld;       /* padded row length of the embedding table */
    int8_t *emb_table; /* (vocab, emb_ld): requantized rows, the embedding is a gather */
    lstm_layer *layer;
    int16_t *lut_sig, *lut_tanh_gate, *lut_tanh_cell; /* over the int16 range */
    qrnn_weight dec;
    int64_t *dec_m0, *dec_shift, *dec_bias;
    int64_t dec_lo, dec_hi, logit_frac;
    char **tokens;
    int64_t weight_bytes;
};

struct qrnn_session {
    qrnn_model *model;
    int batch;
    int8_t *x0;                  /* (batch, emb_ld) */
    int8_t **h_cur, **h_next;    /* per layer (batch, hidden_ld) int8, padding zero */
    int64_t **c;                 /* per layer (batch, hidden) */
    int32_t *acc_x, *acc_h;      /* (batch, 4H padded) exact accumulators, rows in stored order */
    int32_t *dec_acc;            /* (batch, vocab padded) */
    int64_t *proj_x, *proj_h;    /* (batch, 4H) requantized projections (layer norm) */
    int64_t *norm_x, *norm_h;    /* (batch, 4H) layer-normed projections */
    int64_t *o_gate, *c_norm;    /* (batch, H) output gate and normed cell (cell layer norm) */
    int32_t *logits;             /* the step's output */
};

/* ---- loading helpers ----------------------------------------------------------------------------- */

typedef struct {
    qrnn_file *file;
    const char *path;
    int flags;
} loader;

static int lfail(loader *ld, const char *where, const char *what) {
    qrnn_set_error("%s: %s: %s (not a checkpoint this runtime can run: re-export it, docs/engine.md)", ld->path, where, what);
    return -1;
}

static int get_int(loader *ld, const qjson *node, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    const qjson *v = qjson_get(node, key);
    if (!v || v->type != QJ_NUMBER || !v->is_integer || v->integer < lo || v->integer > hi) {
        char what[120];
        snprintf(what, sizeof what, "field %s missing or outside [%lld, %lld]", key, (long long)lo, (long long)hi);
        return lfail(ld, qjson_get(node, "class") ? qjson_get(node, "class")->str : "node", what);
    }
    *out = v->integer;
    return 0;
}

static const qjson *get_node(const qjson *node, const char *key, const char *cls) {
    const qjson *v = qjson_get(node, key);
    if (!v || v->type != QJ_OBJECT) return NULL;
    const qjson *c = qjson_get(v, "class");
    if (cls && (!c || c->type != QJ_STRING || strcmp(c->str, cls))) return NULL;
    return v;
}

static int64_t element(const qrnn_tensor *t, int64_t i) {
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case QDT_I8: return (int8_t)p[i];
    case QDT_U8:
    case QDT_BOOL: return p[i];
    case QDT_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case QDT_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    default: { int64_t v; memcpy(&v, p + 8 * i, 8); return v; }
    }
}

/* a tensor reference {"tensor": name, "dtype": ...} of `count` integers, as int64 (malloc'd) */
static int64_t *get_tensor(loader *ld, const qjson *node, const char *key, int64_t count) {
    const qjson *ref = qjson_get(node, key);
    char where[200];
    snprintf(where, sizeof where, "field %s", key);
    const qjson *name = qjson_get(ref, "tensor"), *dtype = qjson_get(ref, "dtype");
    if (!name || name->type != QJ_STRING || !dtype || dtype->type != QJ_STRING) {
        lfail(ld, where, "not a tensor reference");
        return NULL;
    }
    static const char *INTS[] = {"int8", "uint8", "int16", "int32", "int64", "bool"};
    int known = 0;
    for (int i = 0; i < 6; ++i) known |= !strcmp(dtype->str, INTS[i]);
    if (!known) {
        lfail(ld, where, "declared dtype is not an integer dtype");
        return NULL;
    }
    const qrnn_tensor *t = qrnn_file_tensor(ld->file, name->str);
    if (!t) {
        lfail(ld, where, "its tensor is missing from the file");
        return NULL;
    }
    if (t->numel != count) {
        char what[120];
        snprintf(what, sizeof what, "tensor has %lld values, the model needs %lld", (long long)t->numel, (long long)count);
        lfail(ld, where, what);
        return NULL;
    }
    int64_t *out = malloc((size_t)(count ? count : 1) * sizeof(int64_t));
    if (!out) {
        lfail(ld, where, "out of memory");
        return NULL;
    }
    for (int64_t i = 0; i < count; ++i) out[i] = element(t, i);
    return out;
}

/* a weight field: an int8 tensor (n, k), or DenseShift ShiftCodes of 2 or 3 bits */
/* LSTM gate rows g * H + u are stored as row 4 * u + g (gate_hidden = H), so that a thread's units are whole
 * tiles and a unit's four gates come out side by side; gate_hidden = 0 keeps the order. */
static int64_t stored_row(int64_t r, int64_t gate_hidden) {
    return gate_hidden ? 4 * (r % gate_hidden) + r / gate_hidden : r;
}

static void permute_rows(uint8_t *values, int64_t n, int64_t k, int64_t gate_hidden) {
    if (!gate_hidden) return;
    uint8_t *copy = malloc((size_t)(n * k) + 1);
    if (!copy) return;
    memcpy(copy, values, (size_t)(n * k));
    for (int64_t r = 0; r < n; ++r) memcpy(values + stored_row(r, gate_hidden) * k, copy + r * k, (size_t)k);
    free(copy);
}

static int get_weight(loader *ld, const qjson *node, const char *key, int64_t n, int64_t k, qrnn_weight *w,
                      int8_t **int8_copy, int64_t gate_hidden) {
    const qjson *field = qjson_get(node, key);
    const qjson *cls = qjson_get(field, "class");
    int64_t count = n * k;
    if (cls && cls->type == QJ_STRING && !strcmp(cls->str, "ShiftCodes")) {
        int64_t bits, rows, cols;
        const qjson *shape = qjson_get(field, "shape");
        if (get_int(ld, field, "bits", 2, 4, &bits)) return -1;
        if (bits == 4) return lfail(ld, key, "4-bit DenseShift codes reach +-128, which int8 kernels cannot hold");
        if (!shape || shape->type != QJ_ARRAY || shape->count != 2 || !shape->items[0].is_integer ||
            !shape->items[1].is_integer)
            return lfail(ld, key, "ShiftCodes shape is not 2-d");
        rows = shape->items[0].integer, cols = shape->items[1].integer;
        if (rows != n || cols != k) return lfail(ld, key, "ShiftCodes shape does not match the layer");
        int group = bits == 2 ? 4 : 8, group_bytes = bits == 2 ? 1 : 3;
        int64_t nbytes = (count + group - 1) / group * group_bytes;
        int64_t *packed = get_tensor(ld, field, "packed", nbytes);
        if (!packed) return -1;
        uint8_t *sign = malloc((size_t)count + 1), *exponent = malloc((size_t)count + 1);
        int rc = 0;
        if (!sign || !exponent) rc = lfail(ld, key, "out of memory");
        int64_t groups = nbytes / group_bytes;
        for (int64_t g = 0; g < groups && rc == 0; ++g) {
            uint32_t word = 0;
            for (int b = 0; b < group_bytes; ++b) word |= (uint32_t)(packed[g * group_bytes + b] & 0xFF) << (8 * b);
            for (int c = 0; c < group; ++c) {
                int64_t i = g * group + c;
                uint32_t code = (word >> (bits * c)) & ((1u << bits) - 1);
                if (i >= count) {
                    if (code) rc = lfail(ld, key, "packed codes have non-zero padding (wrong bit width?)");
                    continue;
                }
                sign[i] = (uint8_t)(code >> (bits - 1));
                exponent[i] = (uint8_t)(code & ((1u << (bits - 1)) - 1));
            }
        }
        free(packed);
        if (rc == 0 && int8_copy) { /* the decoded values, for the embedding table */
            *int8_copy = malloc((size_t)count + 1);
            if (!*int8_copy) rc = lfail(ld, key, "out of memory");
            for (int64_t i = 0; rc == 0 && i < count; ++i)
                (*int8_copy)[i] = (int8_t)(sign[i] ? -(1 << exponent[i]) : (1 << exponent[i]));
        }
        if (rc == 0) {
            permute_rows(sign, n, k, gate_hidden);
            permute_rows(exponent, n, k, gate_hidden);
            if (ld->flags & QRNN_LOAD_SHIFT_AS_INT8) {
                int8_t *values = malloc((size_t)count + 1);
                if (!values) rc = lfail(ld, key, "out of memory");
                for (int64_t i = 0; rc == 0 && i < count; ++i)
                    values[i] = (int8_t)(sign[i] ? -(1 << exponent[i]) : (1 << exponent[i]));
                if (rc == 0) rc = qrnn_weight_from_int8(w, values, (int32_t)n, (int32_t)k);
                free(values);
            } else {
                rc = qrnn_weight_from_shift(w, sign, exponent, (int32_t)n, (int32_t)k);
            }
        }
        free(sign);
        free(exponent);
        return rc;
    }
    int64_t *values = get_tensor(ld, node, key, count);
    if (!values) return -1;
    int8_t *q = malloc((size_t)count + 1);
    int rc = q ? 0 : lfail(ld, key, "out of memory");
    for (int64_t i = 0; rc == 0 && i < count; ++i) {
        if (values[i] < -128 || values[i] > 127) rc = lfail(ld, key, "weight values do not fit int8");
        q[i] = (int8_t)values[i];
    }
    free(values);
    if (rc == 0 && int8_copy) {
        *int8_copy = malloc((size_t)count + 1);
        if (*int8_copy) memcpy(*int8_copy, q, (size_t)count);
        else rc = lfail(ld, key, "out of memory");
    }
    if (rc == 0) permute_rows((uint8_t *)q, n, k, gate_hidden);
    if (rc == 0) rc = qrnn_weight_from_int8(w, q, (int32_t)n, (int32_t)k);
    free(q);
    return rc;
}

static int get_shifts(loader *ld, int64_t *shift, const int64_t *exp, int64_t n, int64_t offset, const char *what) {
    for (int64_t i = 0; i < n; ++i) {
        shift[i] = exp[i] + offset;
        if (shift[i] < 1 || shift[i] > 62) return lfail(ld, what, "requantization shift outside [1, 62]");
    }
    return 0;
}

/* a PWL table (app/engine/pwl.py) expanded over the int16 range */
static int16_t *get_lut(loader *ld, const qjson *acts, const char *key) {
    const qjson *t = get_node(acts, key, "PWLTable");
    if (!t) {
        lfail(ld, key, "missing PWLTable");
        return NULL;
    }
    int64_t sfb, in_min, in_max, out_min, out_max;
    if (get_int(ld, t, "slope_frac_bits", 1, 40, &sfb) || get_int(ld, t, "in_min", -32768, -32768, &in_min) ||
        get_int(ld, t, "in_max", 32767, 32767, &in_max) || get_int(ld, t, "out_min", -32768, 32767, &out_min) ||
        get_int(ld, t, "out_max", out_min, 32767, &out_max))
        return NULL;
    const qjson *slopes_ref = qjson_get(qjson_get(t, "slopes"), "tensor");
    const qrnn_tensor *st = slopes_ref && slopes_ref->type == QJ_STRING ? qrnn_file_tensor(ld->file, slopes_ref->str) : NULL;
    if (!st || st->numel < 1 || st->numel > 4096) {
        lfail(ld, key, "PWL slopes missing");
        return NULL;
    }
    int64_t segments = st->numel;
    int64_t *bounds = get_tensor(ld, t, "boundaries", segments - 1), *slopes = get_tensor(ld, t, "slopes", segments),
            *intercepts = get_tensor(ld, t, "intercepts", segments);
    int16_t *lut = malloc(LUT_SIZE * sizeof(int16_t));
    if (bounds && slopes && intercepts && lut) {
        int64_t j = 0;
        for (int64_t x = LUT_MIN; x < LUT_MIN + LUT_SIZE; ++x) {
            while (j < segments - 1 && bounds[j] <= x) ++j; /* bucketize(right=True): boundaries <= x */
            lut[x - LUT_MIN] = (int16_t)qrnn_clamp(qrnn_round_shift(slopes[j] * x + intercepts[j], sfb), out_min, out_max);
        }
        for (int64_t i = 1; i + 1 < segments; ++i)
            if (bounds[i] <= bounds[i - 1]) {
                lfail(ld, key, "PWL boundaries are not increasing");
                free(lut);
                lut = NULL;
                break;
            }
    } else if (lut) {
        free(lut);
        lut = NULL;
    }
    free(bounds);
    free(slopes);
    free(intercepts);
    return lut;
}

static int get_ln(loader *ld, const qjson *dir, const char *key, int64_t n, qrnn_ln *ln) {
    const qjson *v = qjson_get(dir, key);
    memset(ln, 0, sizeof *ln);
    if (!v || v->type == QJ_NULL) return 0;
    if (!get_node(dir, key, "IntLayerNormParams")) return lfail(ld, key, "not IntLayerNormParams");
    if (get_int(ld, v, "in_frac", -32, 32, &ln->in_frac) || get_int(ld, v, "out_frac", 0, 15, &ln->out_frac) ||
        get_int(ld, v, "eps_s", 1, (int64_t)1 << 40, &ln->eps_s))
        return -1;
    ln->gamma = get_tensor(ld, v, "gamma_q", n);
    ln->beta = ln->gamma ? get_tensor(ld, v, "beta_q", n) : NULL;
    return ln->beta ? 0 : -1;
}

static void free_ln(qrnn_ln *ln) {
    free(ln->gamma);
    free(ln->beta);
}

static int load_lstm(loader *ld, qrnn_model *m, const qjson *lstm) {
    const qjson *layers = qjson_get(lstm, "layers"), *formats = qjson_get(lstm, "formats");
    if (!layers || layers->type != QJ_ARRAY || !formats || formats->type != QJ_ARRAY || layers->count < 1 ||
        layers->count != formats->count)
        return lfail(ld, "lstm", "layers and formats missing or of different lengths");
    m->layers = layers->count;
    m->layer = calloc((size_t)m->layers, sizeof(lstm_layer));
    if (!m->layer) return lfail(ld, "lstm", "out of memory");
    const qjson *acts = get_node(lstm, "acts", "CellActivations");
    if (!acts) return lfail(ld, "lstm", "missing CellActivations");
    if (!(m->lut_sig = get_lut(ld, acts, "sigmoid")) || !(m->lut_tanh_gate = get_lut(ld, acts, "tanh_gate")) ||
        !(m->lut_tanh_cell = get_lut(ld, acts, "tanh_cell")))
        return -1;
    int64_t in_dim = m->embed;
    for (int l = 0; l < m->layers; ++l) {
        lstm_layer *L = &m->layer[l];
        const qjson *dirs = &layers->items[l], *fmt = &formats->items[l];
        if (dirs->type != QJ_ARRAY || dirs->count != 1)
            return lfail(ld, "lstm", "a language model layer has one direction (bidirectional LMs are not supported)");
        const qjson *d = &dirs->items[0];
        const qjson *cls = qjson_get(d, "class");
        if (!cls || cls->type != QJ_STRING || strcmp(cls->str, "IntLSTMDirection")) return lfail(ld, "lstm", "not an IntLSTMDirection");
        int64_t in_frac, h_frac, h_bits, cell_frac;
        if (get_int(ld, fmt, "in_frac", -32, 32, &in_frac) || get_int(ld, fmt, "h_frac", 0, 29, &h_frac) ||
            get_int(ld, fmt, "h_bits", 2, 8, &h_bits) || get_int(ld, fmt, "cell_frac", 0, 29, &cell_frac))
            return -1;
        L->h_frac = h_frac, L->h_bits = h_bits, L->cell_frac = cell_frac;
        /* the hidden size from the recurrent weight's row count */
        const qjson *whh = qjson_get(d, "w_hh");
        int64_t rows = -1;
        const qjson *shape = qjson_get(whh, "shape");
        if (shape && shape->type == QJ_ARRAY && shape->count == 2 && shape->items[0].is_integer) rows = shape->items[0].integer;
        else {
            const qjson *ref = qjson_get(whh, "tensor");
            const qrnn_tensor *t = ref && ref->type == QJ_STRING ? qrnn_file_tensor(ld->file, ref->str) : NULL;
            if (t && t->ndim == 2) rows = t->shape[0];
        }
        if (rows < 4 || rows % 4 || rows > 4 * 16384) return lfail(ld, "lstm", "recurrent weight shape is not (4H, H)");
        int64_t H = rows / 4, G = rows;
        if (l > 0 && H != m->hidden) return lfail(ld, "lstm", "layers of different hidden sizes");
        m->hidden = (int)H;
        L->hidden = (int)H, L->in_dim = (int)in_dim;
        if (get_weight(ld, d, "w_ih", G, in_dim, &L->w_ih, NULL, H) || get_weight(ld, d, "w_hh", G, H, &L->w_hh, NULL, H))
            return -1;
        int64_t *ih_exp = get_tensor(ld, d, "w_ih_exp", G), *hh_exp = get_tensor(ld, d, "w_hh_exp", G);
        L->ih_m0 = get_tensor(ld, d, "w_ih_m0", G);
        L->hh_m0 = get_tensor(ld, d, "w_hh_m0", G);
        L->ih_shift = malloc((size_t)G * sizeof(int64_t));
        L->hh_shift = malloc((size_t)G * sizeof(int64_t));
        int rc = (!ih_exp || !hh_exp || !L->ih_m0 || !L->hh_m0 || !L->ih_shift || !L->hh_shift) ? -1 : 0;
        if (rc == 0) rc = get_shifts(ld, L->ih_shift, ih_exp, G, in_frac - GATE_FRAC, "w_ih");
        if (rc == 0) rc = get_shifts(ld, L->hh_shift, hh_exp, G, h_frac - GATE_FRAC, "w_hh");
        free(ih_exp);
        free(hh_exp);
        if (rc) return -1;
        for (int64_t i = 0; i < G; ++i)
            if (L->ih_m0[i] < 0 || L->ih_m0[i] >= 65536 || L->hh_m0[i] < 0 || L->hh_m0[i] >= 65536)
                return lfail(ld, "lstm", "requantization multiplier outside the 16-bit range");
        const qjson *b = qjson_get(d, "bias_acc"), *b12 = qjson_get(d, "bias_q12");
        if (b && b->type != QJ_NULL && !(L->bias_acc = get_tensor(ld, d, "bias_acc", G))) return -1;
        if (b12 && b12->type != QJ_NULL && !(L->bias_q12 = get_tensor(ld, d, "bias_q12", G))) return -1;
        if (get_ln(ld, d, "ln_ih", G, &L->ln_ih) || get_ln(ld, d, "ln_hh", G, &L->ln_hh) || get_ln(ld, d, "ln_cell", H, &L->ln_cell))
            return -1;
        if (!L->ln_ih.gamma && !L->bias_acc) return lfail(ld, "lstm", "bias_acc missing (no input layer norm)");
        if (L->ln_hh.gamma && !L->bias_q12) return lfail(ld, "lstm", "bias_q12 missing (recurrent layer norm)");
        if (2 * PWL_OUT_FRAC - cell_frac < 1 || 2 * PWL_OUT_FRAC - h_frac < 1) return lfail(ld, "lstm", "cell or hidden grid too fine");
        m->weight_bytes += qrnn_weight_stored_bytes(&L->w_ih) + qrnn_weight_stored_bytes(&L->w_hh);
        in_dim = H;
    }
    return 0;
}

static int load_lm(loader *ld, qrnn_model *m) {
    const qjson *root = qjson_get(ld->file->meta, "model");
    const qjson *cls = qjson_get(root, "class");
    if (!cls || cls->type != QJ_STRING || strcmp(cls->str, "IntegerLanguageModel"))
        return lfail(ld, "model", "not an IntegerLanguageModel");
    const qjson *emb = get_node(root, "embedding", "IntEmbedding"), *lstm = get_node(root, "lstm", "IntLSTM"),
                *dec = get_node(root, "decoder", "IntLinear");
    if (!emb || !lstm || !dec) return lfail(ld, "model", "embedding, lstm or decoder missing");
    /* vocabulary and embedding size from the embedding weight */
    const qjson *w = qjson_get(emb, "w_q");
    const qjson *shape = qjson_get(w, "shape");
    int64_t V = -1, E = -1;
    if (shape && shape->type == QJ_ARRAY && shape->count == 2) V = shape->items[0].integer, E = shape->items[1].integer;
    else {
        const qjson *ref = qjson_get(w, "tensor");
        const qrnn_tensor *t = ref && ref->type == QJ_STRING ? qrnn_file_tensor(ld->file, ref->str) : NULL;
        if (t && t->ndim == 2) V = t->shape[0], E = t->shape[1];
    }
    if (V < 1 || E < 1 || V > (1 << 24) || E > 16384) return lfail(ld, "embedding", "weight is not (vocab, embed)");
    m->vocab = (int)V, m->embed = (int)E;
    int64_t out_frac, out_bits;
    if (get_int(ld, emb, "out_frac", -32, 32, &out_frac) || get_int(ld, emb, "out_bits", 2, 8, &out_bits)) return -1;
    qrnn_weight emb_w;
    int8_t *values = NULL;
    if (get_weight(ld, emb, "w_q", V, E, &emb_w, &values, 0)) return -1;
    qrnn_weight_free(&emb_w); /* only its int8 values are used: the table below */
    int64_t *m0 = get_tensor(ld, emb, "m0", V), *exp = get_tensor(ld, emb, "exp", V);
    m->emb_ld = (int)((E + QRNN_KBLOCK - 1) / QRNN_KBLOCK * QRNN_KBLOCK);
    m->emb_table = calloc((size_t)V * m->emb_ld, 1);
    int rc = (m0 && exp && m->emb_table) ? 0 : -1;
    int64_t lo = -((int64_t)1 << (out_bits - 1)), hi = ((int64_t)1 << (out_bits - 1)) - 1;
    for (int64_t v = 0; rc == 0 && v < V; ++v) {
        int64_t s = exp[v] - out_frac;
        if (s < 1 || s > 62 || m0[v] < 0 || m0[v] >= 65536) rc = lfail(ld, "embedding", "requantization shift outside [1, 62]");
        for (int64_t e = 0; rc == 0 && e < E; ++e)
            m->emb_table[v * m->emb_ld + e] = (int8_t)qrnn_clamp(qrnn_round_shift(values[v * E + e] * m0[v], s), lo, hi);
    }
    free(values);
    free(m0);
    free(exp);
    if (rc) return -1;
    if (load_lstm(ld, m, lstm)) return -1;
    /* output layer */
    int64_t in_frac, dec_out_frac, dec_bits;
    if (get_int(ld, dec, "in_frac", -32, 32, &in_frac) || get_int(ld, dec, "out_frac", -32, 40, &dec_out_frac) ||
        get_int(ld, dec, "out_bits", 2, 32, &dec_bits))
        return -1;
    if (in_frac != m->layer[m->layers - 1].h_frac) return lfail(ld, "decoder", "in_frac differs from the last layer's h_frac");
    if (get_weight(ld, dec, "w_q", V, m->hidden, &m->dec, NULL, 0)) return -1;
    m->weight_bytes += qrnn_weight_stored_bytes(&m->dec);
    int64_t *dexp = get_tensor(ld, dec, "exp", V);
    m->dec_m0 = get_tensor(ld, dec, "m0", V);
    m->dec_shift = malloc((size_t)V * sizeof(int64_t));
    if (!dexp || !m->dec_m0 || !m->dec_shift) {
        free(dexp);
        return -1;
    }
    rc = get_shifts(ld, m->dec_shift, dexp, V, in_frac - dec_out_frac, "decoder");
    free(dexp);
    if (rc) return -1;
    const qjson *b = qjson_get(dec, "bias_acc");
    if (b && b->type != QJ_NULL && !(m->dec_bias = get_tensor(ld, dec, "bias_acc", V))) return -1;
    m->dec_lo = -((int64_t)1 << (dec_bits - 1)), m->dec_hi = ((int64_t)1 << (dec_bits - 1)) - 1;
    m->logit_frac = dec_out_frac;
    /* vocabulary */
    const qjson *vocab = qjson_get(ld->file->meta, "vocab");
    if (vocab && vocab->type == QJ_ARRAY) {
        if (vocab->count != V) return lfail(ld, "vocab", "its length differs from the embedding's rows");
        m->tokens = calloc((size_t)V, sizeof(char *));
        if (!m->tokens) return lfail(ld, "vocab", "out of memory");
        for (int64_t v = 0; v < V; ++v) {
            if (vocab->items[v].type != QJ_STRING) return lfail(ld, "vocab", "an entry is not a string");
            m->tokens[v] = strdup(vocab->items[v].str);
        }
    }
    return 0;
}

/* ---- public API --------------------------------------------------------------------------------- */

void qrnn_free(qrnn_model *m) {
    if (!m) return;
    qrnn_pool_free(m->pool);
    for (int l = 0; m->layer && l < m->layers; ++l) {
        lstm_layer *L = &m->layer[l];
        qrnn_weight_free(&L->w_ih);
        qrnn_weight_free(&L->w_hh);
        free(L->ih_m0), free(L->ih_shift), free(L->hh_m0), free(L->hh_shift), free(L->bias_acc), free(L->bias_q12);
        free_ln(&L->ln_ih), free_ln(&L->ln_hh), free_ln(&L->ln_cell);
    }
    free(m->layer);
    free(m->emb_table);
    free(m->lut_sig), free(m->lut_tanh_gate), free(m->lut_tanh_cell);
    qrnn_weight_free(&m->dec);
    free(m->dec_m0), free(m->dec_shift), free(m->dec_bias);
    for (int v = 0; m->tokens && v < m->vocab; ++v) free(m->tokens[v]);
    free(m->tokens);
    free(m);
}

qrnn_model *qrnn_load(const char *path, int flags) {
    qrnn_file file;
    if (qrnn_file_open(&file, path)) return NULL;
    qrnn_model *m = calloc(1, sizeof *m);
    loader ld = {&file, path, flags};
    const qjson *kind = qjson_get(file.meta, "kind");
    int rc = -1;
    if (!m) qrnn_set_error("%s: out of memory", path);
    else if (!kind || kind->type != QJ_STRING) lfail(&ld, "metadata", "no kind");
    else if (!strcmp(kind->str, "lm")) {
        strcpy(m->kind, "lm");
        rc = load_lm(&ld, m);
    } else {
        char what[120];
        snprintf(what, sizeof what, "kind %.40s is not supported by the C runtime (language models: kind lm)", kind->str);
        lfail(&ld, "metadata", what);
    }
    qrnn_file_close(&file);
    if (rc == 0) {
        m->isa = qrnn_cpu_isa();
        m->threads = 1;
        m->pool = qrnn_pool_new(1);
        if (!m->pool) rc = -1;
    }
    if (rc) {
        qrnn_free(m);
        return NULL;
    }
    return m;
}

int qrnn_set_threads(qrnn_model *m, int threads) {
    if (threads < 1 || threads > 256) {
        qrnn_set_error("threads must be between 1 and 256, got %d", threads);
        return -1;
    }
    if (threads == m->threads) return 0;
    qrnn_pool *pool = qrnn_pool_new(threads);
    if (!pool) return -1;
    qrnn_pool_free(m->pool);
    m->pool = pool;
    m->threads = threads;
    return 0;
}

int qrnn_set_isa(qrnn_model *m, int isa) {
    if (isa == QRNN_ISA_AUTO) isa = qrnn_cpu_isa();
    if (isa < QRNN_ISA_SCALAR || isa > QRNN_ISA_AVX512VNNI || !qrnn_isa_supported(isa)) {
        qrnn_set_error("kernel path %s is not supported by this CPU (best: %s)", qrnn_isa_name(isa), qrnn_isa_name(qrnn_cpu_isa()));
        return -1;
    }
    m->isa = isa;
    return 0;
}

int qrnn_get_isa(const qrnn_model *m) { return m->isa; }
const char *qrnn_kind(const qrnn_model *m) { return m->kind; }
int qrnn_lm_vocab_size(const qrnn_model *m) { return m->vocab; }
int qrnn_lm_layers(const qrnn_model *m) { return m->layers; }
int qrnn_lm_hidden(const qrnn_model *m) { return m->hidden; }
int qrnn_lm_logit_frac(const qrnn_model *m) { return (int)m->logit_frac; }
int64_t qrnn_weight_bytes(const qrnn_model *m) { return m->weight_bytes; }

const char *qrnn_lm_token(const qrnn_model *m, int id) {
    return (m->tokens && id >= 0 && id < m->vocab) ? m->tokens[id] : NULL;
}

int qrnn_lm_token_id(const qrnn_model *m, const char *token) {
    for (int v = 0; m->tokens && v < m->vocab; ++v)
        if (!strcmp(m->tokens[v], token)) return v;
    return -1;
}

static int hidden_ld(const qrnn_model *m) { return (m->hidden + QRNN_KBLOCK - 1) / QRNN_KBLOCK * QRNN_KBLOCK; }

void qrnn_session_free(qrnn_session *s) {
    if (!s) return;
    for (int l = 0; l < s->model->layers; ++l) {
        if (s->h_cur) free(s->h_cur[l]);
        if (s->h_next) free(s->h_next[l]);
        if (s->c) free(s->c[l]);
    }
    free(s->h_cur), free(s->h_next), free(s->c);
    free(s->x0), free(s->dec_acc), free(s->acc_x), free(s->acc_h), free(s->proj_x), free(s->proj_h);
    free(s->norm_x), free(s->norm_h), free(s->o_gate), free(s->c_norm);
    free(s);
}

qrnn_session *qrnn_lm_session(qrnn_model *m, int batch) {
    if (batch < 1 || batch > 65536) {
        qrnn_set_error("batch must be between 1 and 65536, got %d", batch);
        return NULL;
    }
    qrnn_session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->model = m, s->batch = batch;
    size_t B = (size_t)batch, H = (size_t)m->hidden, G = 4 * H, L = (size_t)m->layers, HL = (size_t)hidden_ld(m);
    s->x0 = calloc(B * m->emb_ld, 1);
    s->h_cur = calloc(L, sizeof(int8_t *)), s->h_next = calloc(L, sizeof(int8_t *)), s->c = calloc(L, sizeof(int64_t *));
    size_t GP = (G + 15) / 16 * 16, VP = (size_t)m->dec.np;
    s->acc_x = calloc(B * GP, sizeof(int32_t)), s->acc_h = calloc(B * GP, sizeof(int32_t));
    s->dec_acc = calloc(B * VP, sizeof(int32_t));
    s->proj_x = calloc(B * G, sizeof(int64_t)), s->proj_h = calloc(B * G, sizeof(int64_t));
    s->norm_x = calloc(B * G, sizeof(int64_t)), s->norm_h = calloc(B * G, sizeof(int64_t));
    s->o_gate = calloc(B * H, sizeof(int64_t)), s->c_norm = calloc(B * H, sizeof(int64_t));
    int ok = s->dec_acc && s->x0 && s->h_cur && s->h_next && s->c && s->acc_x && s->acc_h && s->proj_x && s->proj_h && s->norm_x &&
             s->norm_h && s->o_gate && s->c_norm;
    for (size_t l = 0; ok && l < L; ++l) {
        s->h_cur[l] = calloc(B * HL, 1), s->h_next[l] = calloc(B * HL, 1), s->c[l] = calloc(B * H, sizeof(int64_t));
        ok = s->h_cur[l] && s->h_next[l] && s->c[l];
    }
    if (!ok) {
        qrnn_set_error("out of memory for a batch-%d session", batch);
        qrnn_session_free(s);
        return NULL;
    }
    return s;
}

void qrnn_lm_reset(qrnn_session *s) {
    const qrnn_model *m = s->model;
    for (int l = 0; l < m->layers; ++l) {
        memset(s->h_cur[l], 0, (size_t)s->batch * hidden_ld(m));
        memset(s->c[l], 0, (size_t)s->batch * m->hidden * sizeof(int64_t));
    }
}

void qrnn_lm_get_state(const qrnn_session *s, int8_t *h, int16_t *c) {
    const qrnn_model *m = s->model;
    int H = m->hidden, HL = hidden_ld(m);
    for (int l = 0; l < m->layers; ++l)
        for (int b = 0; b < s->batch; ++b)
            for (int k = 0; k < H; ++k) {
                h[((size_t)l * s->batch + b) * H + k] = s->h_cur[l][(size_t)b * HL + k];
                c[((size_t)l * s->batch + b) * H + k] = (int16_t)s->c[l][(size_t)b * H + k];
            }
}

void qrnn_lm_set_state(qrnn_session *s, const int8_t *h, const int16_t *c) {
    const qrnn_model *m = s->model;
    int H = m->hidden, HL = hidden_ld(m);
    for (int l = 0; l < m->layers; ++l)
        for (int b = 0; b < s->batch; ++b)
            for (int k = 0; k < H; ++k) {
                s->h_cur[l][(size_t)b * HL + k] = h[((size_t)l * s->batch + b) * H + k];
                s->c[l][(size_t)b * H + k] = c[((size_t)l * s->batch + b) * H + k];
            }
}

/* ---- the step ------------------------------------------------------------------------------------ */

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

#define SHL(x, s) ((x) * ((int64_t)1 << (s))) /* x * 2^s without shifting a negative value */

/* app/engine/layernorm.py layer_norm_int over x[0..n) (stride 1); gamma/beta point at the block's entries */
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
    for (int64_t i = k0; i < k1; ++i) { /* only the entries this thread needs */
        int64_t d = SHL(x[i], LN_EXTRA_BITS) - mean_s;
        int64_t x_hat = qrnn_floor_div(2 * SHL(d, ln->out_frac) + std_s, 2 * std_s);
        y[i] = qrnn_clamp(qrnn_round_shift(ln->gamma[off + i] * x_hat, LN_GAMMA_FRAC) + ln->beta[off + i], -32768, 32767);
    }
}

typedef struct {
    qrnn_session *s;
} step_ctx;

/* One layer for hidden units [u0, u1) of every batch row: gate rows, (layer norms), cell, h_next.
 * acc_x / acc_h rows are in stored order (unit u's gates i, f, g, o at 4u .. 4u + 3); proj_*, norm_* and the
 * parameters are in the checkpoint's order g * H + u. */
static void lstm_layer_units(qrnn_session *s, int l, int u0, int u1) {
    qrnn_model *m = s->model;
    lstm_layer *L = &m->layer[l];
    const int B = s->batch, H = m->hidden, G = 4 * H, HL = hidden_ld(m), GP = L->w_hh.np;
    const int8_t *x = l == 0 ? s->x0 : s->h_next[l - 1];
    const int64_t ldx = l == 0 ? m->emb_ld : HL;
    const int64_t h_lo = -((int64_t)1 << (L->h_bits - 1)), h_hi = ((int64_t)1 << (L->h_bits - 1)) - 1;
    const int ln_x = L->ln_ih.gamma != NULL, ln_h = L->ln_hh.gamma != NULL, ln_c = L->ln_cell.gamma != NULL;
    if (u0 >= u1) goto normalize;
    qrnn_matmul_rows(&L->w_ih, m->isa, x, ldx, B, 4 * u0, 4 * u1, s->acc_x, GP);
    qrnn_matmul_rows(&L->w_hh, m->isa, s->h_cur[l], HL, B, 4 * u0, 4 * u1, s->acc_h, GP);
    /* requantized projections: Q3.12, saturated to int16 before a layer norm, to int32 otherwise */
    for (int b = 0; b < B; ++b)
        for (int k = u0; k < u1; ++k)
            for (int g = 0; g < 4; ++g) {
                int64_t j = (int64_t)g * H + k, i = (int64_t)b * G + j, a = (int64_t)b * GP + 4 * k + g;
                int64_t ax = (int64_t)s->acc_x[a] + (ln_x ? 0 : L->bias_acc[j]);
                s->proj_x[i] = qrnn_clamp(qrnn_round_shift(ax * L->ih_m0[j], L->ih_shift[j]), ln_x ? -32768 : INT32_MIN,
                                          ln_x ? 32767 : INT32_MAX);
                s->proj_h[i] = qrnn_clamp(qrnn_round_shift((int64_t)s->acc_h[a] * L->hh_m0[j], L->hh_shift[j]),
                                          ln_h ? -32768 : INT32_MIN, ln_h ? 32767 : INT32_MAX);
            }
normalize:
    if (ln_x || ln_h) { /* each gate block is normalized over all H units: wait for every thread's rows */
        qrnn_pool_barrier(m->pool);
        for (int b = 0; b < B && u0 < u1; ++b)
            for (int g = 0; g < 4; ++g) {
                int64_t off = (int64_t)b * G + (int64_t)g * H;
                if (ln_x) layer_norm(s->proj_x + off, H, &L->ln_ih, (int64_t)g * H, s->norm_x + off, u0, u1);
                if (ln_h) layer_norm(s->proj_h + off, H, &L->ln_hh, (int64_t)g * H, s->norm_h + off, u0, u1);
            }
    }
    for (int b = 0; b < B; ++b) {
        int64_t *cb = s->c[l] + (int64_t)b * H;
        int8_t *hb = s->h_next[l] + (int64_t)b * HL;
        for (int k = u0; k < u1; ++k) {
            int64_t gate[4];
            for (int g = 0; g < 4; ++g) {
                int64_t j = (int64_t)g * H + k, i = (int64_t)b * G + j;
                int64_t xp = ln_x ? s->norm_x[i] : s->proj_x[i];
                int64_t hp = ln_h ? s->norm_h[i] + L->bias_q12[j] : s->proj_h[i];
                gate[g] = qrnn_clamp(xp + hp, -32768, 32767);
            }
            int64_t ig = m->lut_sig[gate[0] - LUT_MIN], fg = m->lut_sig[gate[1] - LUT_MIN];
            int64_t gg = m->lut_tanh_gate[gate[2] - LUT_MIN], og = m->lut_sig[gate[3] - LUT_MIN];
            int64_t cn = qrnn_clamp(qrnn_round_shift(fg * cb[k], PWL_OUT_FRAC) +
                                        qrnn_round_shift(ig * gg, 2 * PWL_OUT_FRAC - L->cell_frac),
                                    -32768, 32767);
            cb[k] = cn;
            if (ln_c) {
                s->o_gate[(int64_t)b * H + k] = og;
                continue;
            }
            int64_t t = m->lut_tanh_cell[cn - LUT_MIN];
            hb[k] = (int8_t)qrnn_clamp(qrnn_round_shift(og * t, 2 * PWL_OUT_FRAC - L->h_frac), h_lo, h_hi);
        }
    }
    if (ln_c) { /* tanh of the layer-normed cell (over all H units): wait for every thread's cells */
        qrnn_pool_barrier(m->pool);
        for (int b = 0; b < B && u0 < u1; ++b) {
            int64_t *normed = s->c_norm + (int64_t)b * H;
            int8_t *hb = s->h_next[l] + (int64_t)b * HL;
            layer_norm(s->c[l] + (int64_t)b * H, H, &L->ln_cell, 0, normed, u0, u1);
            for (int k = u0; k < u1; ++k) {
                int64_t t = m->lut_tanh_gate[normed[k] - LUT_MIN];
                hb[k] = (int8_t)qrnn_clamp(qrnn_round_shift(s->o_gate[(int64_t)b * H + k] * t, 2 * PWL_OUT_FRAC - L->h_frac),
                                           h_lo, h_hi);
            }
        }
    }
}

/* [lo, hi) of `count` items in chunks of `unit` for thread tid of n */
static void split(int count, int unit, int tid, int n, int *lo, int *hi) {
    int chunks = (count + unit - 1) / unit;
    *lo = (int)((int64_t)chunks * tid / n) * unit;
    *hi = (int)((int64_t)chunks * (tid + 1) / n) * unit;
    if (*hi > count) *hi = count;
    if (*lo > count) *lo = count;
}

static void lm_task(void *p, int tid, int nthreads) {
    qrnn_session *s = ((step_ctx *)p)->s;
    qrnn_model *m = s->model;
    const int HL = hidden_ld(m), VP = m->dec.np;
    int u0, u1, v0, v1;
    split(m->hidden, 4, tid, nthreads, &u0, &u1); /* 4 units = one tile of 16 gate rows */
    for (int l = 0; l < m->layers; ++l) {
        lstm_layer_units(s, l, u0, u1);
        qrnn_pool_barrier(m->pool); /* the next layer (and the output) reads all of h_next */
    }
    /* output layer: this thread's vocabulary rows (whole tiles), then requantized into the logits */
    split(m->vocab, 16, tid, nthreads, &v0, &v1);
    qrnn_matmul_rows(&m->dec, m->isa, s->h_next[m->layers - 1], HL, s->batch, v0, v1, s->dec_acc, VP);
    for (int b = 0; b < s->batch; ++b)
        qrnn_requantize_rows(m->isa, s->dec_acc + (int64_t)b * VP, m->dec_bias, m->dec_m0, m->dec_shift, m->dec_lo,
                             m->dec_hi, v0, v1, s->logits + (int64_t)b * m->vocab);
}

int qrnn_lm_step(qrnn_session *s, const int64_t *tokens, int32_t *logits) {
    qrnn_model *m = s->model;
    for (int b = 0; b < s->batch; ++b)
        if (tokens[b] < 0 || tokens[b] >= m->vocab) {
            qrnn_set_error("token id %lld at batch row %d is outside the vocabulary [0, %d)", (long long)tokens[b], b, m->vocab);
            return -1;
        }
    for (int b = 0; b < s->batch; ++b) memcpy(s->x0 + (int64_t)b * m->emb_ld, m->emb_table + tokens[b] * m->emb_ld, (size_t)m->emb_ld);
    s->logits = logits;
    step_ctx ctx = {s};
    qrnn_pool_run(m->pool, lm_task, &ctx);
    int8_t **t = s->h_cur;
    s->h_cur = s->h_next, s->h_next = t;
    return 0;
}
