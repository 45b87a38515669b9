/* Loading engine objects from an integer checkpoint's JSON tree (app/engine/checkpoint.py writes it):
 * tensor references, int8 or DenseShift weights, PWL tables expanded to lookup tables, layer norms, LSTM
 * directions, linear layers and embeddings. Every field is checked; a failure names the file, the field and
 * what is wrong, in one line (qrnn_last_error).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrnn_internal.h"

int qrnn_lfail(qrnn_loader *ld, const char *where, const char *what) {
    qrnn_set_error("%s: %s: %s (not a checkpoint this runtime can run: re-export it, docs/engine.md)", ld->path, where, what);
    return -1;
}

int qrnn_get_int(qrnn_loader *ld, const qjson *node, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    const qjson *v = qjson_get(node, key);
    if (!v || v->type != QJ_NUMBER || !v->is_integer || v->integer < lo || v->integer > hi) {
        char what[120];
        snprintf(what, sizeof what, "field %s missing or outside [%lld, %lld]", key, (long long)lo, (long long)hi);
        const qjson *cls = qjson_get(node, "class");
        return qrnn_lfail(ld, cls && cls->type == QJ_STRING ? cls->str : "node", what);
    }
    *out = v->integer;
    return 0;
}

const qjson *qrnn_get_node(const qjson *node, const char *key, const char *cls) {
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

static const qrnn_tensor *tensor_of(qrnn_loader *ld, const qjson *ref) {
    const qjson *name = qjson_get(ref, "tensor");
    return name && name->type == QJ_STRING ? qrnn_file_tensor(ld->file, name->str) : NULL;
}

int64_t *qrnn_get_tensor(qrnn_loader *ld, const qjson *node, const char *key, int64_t count) {
    const qjson *ref = qjson_get(node, key);
    char where[200];
    snprintf(where, sizeof where, "field %s", key);
    const qjson *name = qjson_get(ref, "tensor"), *dtype = qjson_get(ref, "dtype");
    if (!name || name->type != QJ_STRING || !dtype || dtype->type != QJ_STRING) {
        qrnn_lfail(ld, where, "not a tensor reference");
        return NULL;
    }
    static const char *INTS[] = {"int8", "uint8", "int16", "int32", "int64", "bool"};
    int known = 0;
    for (int i = 0; i < 6; ++i) known |= !strcmp(dtype->str, INTS[i]);
    if (!known) {
        qrnn_lfail(ld, where, "declared dtype is not an integer dtype");
        return NULL;
    }
    const qrnn_tensor *t = qrnn_file_tensor(ld->file, name->str);
    if (!t) {
        qrnn_lfail(ld, where, "its tensor is missing from the file");
        return NULL;
    }
    if (t->numel != count) {
        char what[120];
        snprintf(what, sizeof what, "tensor has %lld values, the model needs %lld", (long long)t->numel, (long long)count);
        qrnn_lfail(ld, where, what);
        return NULL;
    }
    int64_t *out = malloc((size_t)(count ? count : 1) * sizeof(int64_t));
    if (!out) {
        qrnn_lfail(ld, where, "out of memory");
        return NULL;
    }
    for (int64_t i = 0; i < count; ++i) out[i] = element(t, i);
    return out;
}

int qrnn_weight_shape(qrnn_loader *ld, const qjson *node, const char *key, int64_t *n, int64_t *k) {
    const qjson *w = qjson_get(node, key), *shape = qjson_get(w, "shape");
    *n = *k = -1;
    if (shape && shape->type == QJ_ARRAY && shape->count == 2 && shape->items[0].is_integer && shape->items[1].is_integer)
        *n = shape->items[0].integer, *k = shape->items[1].integer;
    else {
        const qrnn_tensor *t = tensor_of(ld, w);
        if (t && t->ndim == 2) *n = t->shape[0], *k = t->shape[1];
    }
    if (*n < 1 || *k < 1 || *n > (1 << 24) || *k > 65535) return qrnn_lfail(ld, key, "weight is missing or not 2-d");
    return 0;
}

/* LSTM gate rows g * H + u are stored as row 4 * u + g (gate_hidden = H); gate_hidden = 0 keeps the order */
static void permute_rows(uint8_t *values, int64_t n, int64_t k, int64_t gate_hidden) {
    if (!gate_hidden) return;
    uint8_t *copy = malloc((size_t)(n * k) + 1);
    if (!copy) return;
    memcpy(copy, values, (size_t)(n * k));
    for (int64_t r = 0; r < n; ++r) memcpy(values + (4 * (r % gate_hidden) + r / gate_hidden) * k, copy + r * k, (size_t)k);
    free(copy);
}

/* a weight field (n, k): an int8 tensor, or DenseShift ShiftCodes of 2 or 3 bits; int8_copy: its values */
static int get_weight(qrnn_loader *ld, const qjson *node, const char *key, int64_t n, int64_t k, qrnn_weight *w,
                      int8_t **int8_copy, int64_t gate_hidden) {
    const qjson *field = qjson_get(node, key);
    const qjson *cls = qjson_get(field, "class");
    int64_t count = n * k;
    uint8_t *sign = NULL, *exponent = NULL;
    int8_t *values = NULL;
    int rc = 0;
    if (cls && cls->type == QJ_STRING && !strcmp(cls->str, "ShiftCodes")) {
        int64_t bits, rows, cols;
        if (qrnn_get_int(ld, field, "bits", 2, 4, &bits)) return -1;
        if (bits == 4) return qrnn_lfail(ld, key, "4-bit DenseShift codes reach +-128, which int8 kernels cannot hold");
        if (qrnn_weight_shape(ld, node, key, &rows, &cols)) return -1;
        if (rows != n || cols != k) return qrnn_lfail(ld, key, "ShiftCodes shape does not match the layer");
        int group = bits == 2 ? 4 : 8, group_bytes = bits == 2 ? 1 : 3;
        int64_t nbytes = (count + group - 1) / group * group_bytes;
        int64_t *packed = qrnn_get_tensor(ld, field, "packed", nbytes);
        if (!packed) return -1;
        sign = malloc((size_t)count + 1), exponent = malloc((size_t)count + 1), values = malloc((size_t)count + 1);
        if (!sign || !exponent || !values) rc = qrnn_lfail(ld, key, "out of memory");
        for (int64_t g = 0; g < nbytes / group_bytes && rc == 0; ++g) { /* little-endian bit stream of N-bit codes */
            uint32_t word = 0;
            for (int b = 0; b < group_bytes; ++b) word |= (uint32_t)(packed[g * group_bytes + b] & 0xFF) << (8 * b);
            for (int c = 0; c < group; ++c) {
                int64_t i = g * group + c;
                uint32_t code = (word >> (bits * c)) & ((1u << bits) - 1);
                if (i >= count) {
                    if (code) rc = qrnn_lfail(ld, key, "packed codes have non-zero padding (wrong bit width?)");
                    continue;
                }
                sign[i] = (uint8_t)(code >> (bits - 1));
                exponent[i] = (uint8_t)(code & ((1u << (bits - 1)) - 1));
                values[i] = (int8_t)(sign[i] ? -(1 << exponent[i]) : (1 << exponent[i]));
            }
        }
        free(packed);
    } else {
        int64_t *raw = qrnn_get_tensor(ld, node, key, count);
        if (!raw) return -1;
        values = malloc((size_t)count + 1);
        if (!values) rc = qrnn_lfail(ld, key, "out of memory");
        for (int64_t i = 0; rc == 0 && i < count; ++i) {
            if (raw[i] < -128 || raw[i] > 127) rc = qrnn_lfail(ld, key, "weight values do not fit int8");
            values[i] = (int8_t)raw[i];
        }
        free(raw);
    }
    if (rc == 0 && int8_copy) {
        *int8_copy = malloc((size_t)count + 1);
        if (*int8_copy) memcpy(*int8_copy, values, (size_t)count);
        else rc = qrnn_lfail(ld, key, "out of memory");
    }
    if (rc == 0 && w) {
        if (sign && !(ld->flags & QRNN_LOAD_SHIFT_AS_INT8)) {
            permute_rows(sign, n, k, gate_hidden);
            permute_rows(exponent, n, k, gate_hidden);
            rc = qrnn_weight_from_shift(w, sign, exponent, (int32_t)n, (int32_t)k);
        } else {
            permute_rows((uint8_t *)values, n, k, gate_hidden);
            rc = qrnn_weight_from_int8(w, values, (int32_t)n, (int32_t)k);
        }
    }
    free(sign);
    free(exponent);
    free(values);
    return rc;
}

static int get_shifts(qrnn_loader *ld, int64_t *shift, const int64_t *exp, int64_t n, int64_t offset, const char *what) {
    for (int64_t i = 0; i < n; ++i) {
        shift[i] = exp[i] + offset;
        if (shift[i] < 1 || shift[i] > 62) return qrnn_lfail(ld, what, "requantization shift outside [1, 62]");
    }
    return 0;
}

static int check_multipliers(qrnn_loader *ld, const int64_t *m0, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; ++i)
        if (m0[i] < 0 || m0[i] >= 65536) return qrnn_lfail(ld, what, "requantization multiplier outside [0, 2^16)");
    return 0;
}

/* a PWL table (app/engine/pwl.py) expanded over its input domain (within int16) */
int qrnn_load_lut(qrnn_loader *ld, const qjson *t, qrnn_lut *lut) {
    memset(lut, 0, sizeof *lut);
    const qjson *cls = qjson_get(t, "class");
    if (!cls || cls->type != QJ_STRING || strcmp(cls->str, "PWLTable")) return qrnn_lfail(ld, "activation", "not a PWLTable");
    int64_t sfb, in_min, in_max, out_min, out_max;
    if (qrnn_get_int(ld, t, "slope_frac_bits", 1, 40, &sfb) || qrnn_get_int(ld, t, "in_min", -32768, 32767, &in_min) ||
        qrnn_get_int(ld, t, "in_max", in_min, 32767, &in_max) || qrnn_get_int(ld, t, "out_min", -32768, 32767, &out_min) ||
        qrnn_get_int(ld, t, "out_max", out_min, 32767, &out_max))
        return -1;
    const qrnn_tensor *st = tensor_of(ld, qjson_get(t, "slopes"));
    if (!st || st->numel < 1 || st->numel > 4096) return qrnn_lfail(ld, "PWLTable", "slopes missing");
    int64_t segments = st->numel;
    int64_t *bounds = qrnn_get_tensor(ld, t, "boundaries", segments - 1), *slopes = qrnn_get_tensor(ld, t, "slopes", segments),
            *intercepts = qrnn_get_tensor(ld, t, "intercepts", segments);
    int rc = bounds && slopes && intercepts ? 0 : -1;
    for (int64_t i = 1; rc == 0 && i + 1 < segments; ++i)
        if (bounds[i] <= bounds[i - 1]) rc = qrnn_lfail(ld, "PWLTable", "boundaries are not increasing");
    if (rc == 0) {
        lut->min = in_min, lut->size = in_max - in_min + 1;
        lut->table = malloc((size_t)lut->size * sizeof(int16_t));
        if (!lut->table) rc = qrnn_lfail(ld, "PWLTable", "out of memory");
    }
    for (int64_t x = in_min, j = 0; rc == 0 && x <= in_max; ++x) {
        while (j < segments - 1 && bounds[j] <= x) ++j; /* bucketize(right=True): the boundaries <= x */
        lut->table[x - in_min] = (int16_t)qrnn_clamp(qrnn_round_shift(slopes[j] * x + intercepts[j], sfb), out_min, out_max);
    }
    free(bounds);
    free(slopes);
    free(intercepts);
    return rc;
}

int qrnn_load_acts(qrnn_loader *ld, const qjson *node, qrnn_acts *acts) {
    memset(acts, 0, sizeof *acts);
    const qjson *a = qrnn_get_node(node, "acts", "CellActivations");
    if (!a) return qrnn_lfail(ld, "lstm", "missing CellActivations");
    if (qrnn_load_lut(ld, qjson_get(a, "sigmoid"), &acts->sig) || qrnn_load_lut(ld, qjson_get(a, "tanh_gate"), &acts->tanh_gate) ||
        qrnn_load_lut(ld, qjson_get(a, "tanh_cell"), &acts->tanh_cell))
        return -1;
    const qrnn_lut *all[3] = {&acts->sig, &acts->tanh_gate, &acts->tanh_cell};
    for (int i = 0; i < 3; ++i) /* gates and cells are int16: the tables must cover it */
        if (all[i]->min != -32768 || all[i]->size != 65536) return qrnn_lfail(ld, "lstm", "cell activation tables do not cover int16");
    return 0;
}

void qrnn_acts_free(qrnn_acts *acts) {
    free(acts->sig.table), free(acts->tanh_gate.table), free(acts->tanh_cell.table);
    memset(acts, 0, sizeof *acts);
}

static int get_ln(qrnn_loader *ld, const qjson *dir, const char *key, int64_t n, qrnn_ln *ln) {
    const qjson *v = qjson_get(dir, key);
    memset(ln, 0, sizeof *ln);
    if (!v || v->type == QJ_NULL) return 0;
    if (!qrnn_get_node(dir, key, "IntLayerNormParams")) return qrnn_lfail(ld, key, "not IntLayerNormParams");
    if (qrnn_get_int(ld, v, "in_frac", -32, 32, &ln->in_frac) || qrnn_get_int(ld, v, "out_frac", 0, 15, &ln->out_frac) ||
        qrnn_get_int(ld, v, "eps_s", 1, (int64_t)1 << 40, &ln->eps_s))
        return -1;
    ln->gamma = qrnn_get_tensor(ld, v, "gamma_q", n);
    ln->beta = ln->gamma ? qrnn_get_tensor(ld, v, "beta_q", n) : NULL;
    return ln->beta ? 0 : -1;
}

int qrnn_load_dir(qrnn_loader *ld, const qjson *d, const qjson *fmt, int64_t in_dim, const qrnn_acts *acts,
                  qrnn_lstm_dir *L) {
    memset(L, 0, sizeof *L);
    L->acts = acts;
    const qjson *cls = qjson_get(d, "class");
    if (!cls || cls->type != QJ_STRING || strcmp(cls->str, "IntLSTMDirection")) return qrnn_lfail(ld, "lstm", "not an IntLSTMDirection");
    if (qrnn_get_int(ld, fmt, "in_frac", -32, 32, &L->in_frac) || qrnn_get_int(ld, fmt, "h_frac", 0, 29, &L->h_frac) ||
        qrnn_get_int(ld, fmt, "h_bits", 2, 8, &L->h_bits) || qrnn_get_int(ld, fmt, "cell_frac", 0, 29, &L->cell_frac))
        return -1;
    int64_t G, H, gi, ki;
    if (qrnn_weight_shape(ld, d, "w_hh", &G, &H) || qrnn_weight_shape(ld, d, "w_ih", &gi, &ki)) return -1;
    if (G != 4 * H || gi != G || ki != in_dim) return qrnn_lfail(ld, "lstm", "weights are not (4H, input) and (4H, H)");
    L->hidden = (int)H, L->in_dim = (int)in_dim;
    if (get_weight(ld, d, "w_ih", G, in_dim, &L->w_ih, NULL, H) || get_weight(ld, d, "w_hh", G, H, &L->w_hh, NULL, H)) return -1;
    int64_t *ih_exp = qrnn_get_tensor(ld, d, "w_ih_exp", G), *hh_exp = qrnn_get_tensor(ld, d, "w_hh_exp", G);
    L->ih_m0 = qrnn_get_tensor(ld, d, "w_ih_m0", G);
    L->hh_m0 = qrnn_get_tensor(ld, d, "w_hh_m0", G);
    L->ih_shift = malloc((size_t)G * sizeof(int64_t));
    L->hh_shift = malloc((size_t)G * sizeof(int64_t));
    int rc = (!ih_exp || !hh_exp || !L->ih_m0 || !L->hh_m0 || !L->ih_shift || !L->hh_shift) ? -1 : 0;
    if (rc == 0) rc = get_shifts(ld, L->ih_shift, ih_exp, G, L->in_frac - QRNN_GATE_FRAC, "w_ih");
    if (rc == 0) rc = get_shifts(ld, L->hh_shift, hh_exp, G, L->h_frac - QRNN_GATE_FRAC, "w_hh");
    if (rc == 0) rc = check_multipliers(ld, L->ih_m0, G, "w_ih");
    if (rc == 0) rc = check_multipliers(ld, L->hh_m0, G, "w_hh");
    free(ih_exp);
    free(hh_exp);
    if (rc) return -1;
    const qjson *b = qjson_get(d, "bias_acc"), *b12 = qjson_get(d, "bias_q12");
    if (b && b->type != QJ_NULL && !(L->bias_acc = qrnn_get_tensor(ld, d, "bias_acc", G))) return -1;
    if (b12 && b12->type != QJ_NULL && !(L->bias_q12 = qrnn_get_tensor(ld, d, "bias_q12", G))) return -1;
    if (get_ln(ld, d, "ln_ih", G, &L->ln_ih) || get_ln(ld, d, "ln_hh", G, &L->ln_hh) || get_ln(ld, d, "ln_cell", H, &L->ln_cell))
        return -1;
    if (!L->ln_ih.gamma && !L->bias_acc) return qrnn_lfail(ld, "lstm", "bias_acc missing (no input layer norm)");
    if (L->ln_hh.gamma && !L->bias_q12) return qrnn_lfail(ld, "lstm", "bias_q12 missing (recurrent layer norm)");
    if (2 * QRNN_PWL_OUT_FRAC - L->cell_frac < 1 || 2 * QRNN_PWL_OUT_FRAC - L->h_frac < 1)
        return qrnn_lfail(ld, "lstm", "cell or hidden grid too fine");
    int64_t **stored[5] = {&L->ih_m0_s, &L->ih_shift_s, &L->hh_m0_s, &L->hh_shift_s, &L->bias_acc_s};
    const int64_t *source[5] = {L->ih_m0, L->ih_shift, L->hh_m0, L->hh_shift, L->bias_acc};
    for (int a = 0; a < 5; ++a) { /* row g * H + u is stored as row 4u + g */
        if (!source[a]) continue;
        *stored[a] = malloc((size_t)G * sizeof(int64_t));
        if (!*stored[a]) return qrnn_lfail(ld, "lstm", "out of memory");
        for (int64_t j = 0; j < G; ++j) (*stored[a])[4 * (j % H) + j / H] = source[a][j];
    }
    return 0;
}

void qrnn_lstm_dir_free(qrnn_lstm_dir *L) {
    qrnn_weight_free(&L->w_ih);
    qrnn_weight_free(&L->w_hh);
    free(L->ih_m0), free(L->ih_shift), free(L->hh_m0), free(L->hh_shift), free(L->bias_acc), free(L->bias_q12);
    free(L->ih_m0_s), free(L->ih_shift_s), free(L->hh_m0_s), free(L->hh_shift_s), free(L->bias_acc_s);
    qrnn_ln *lns[3] = {&L->ln_ih, &L->ln_hh, &L->ln_cell};
    for (int i = 0; i < 3; ++i) free(lns[i]->gamma), free(lns[i]->beta);
    memset(L, 0, sizeof *L);
}

int64_t qrnn_dir_bytes(const qrnn_lstm_dir *L) { return qrnn_weight_stored_bytes(&L->w_ih) + qrnn_weight_stored_bytes(&L->w_hh); }

int qrnn_load_linear(qrnn_loader *ld, const qjson *node, int64_t in_dim, qrnn_linear *lin) {
    memset(lin, 0, sizeof *lin);
    const qjson *cls = qjson_get(node, "class");
    if (!cls || cls->type != QJ_STRING || strcmp(cls->str, "IntLinear")) return qrnn_lfail(ld, "linear", "not an IntLinear");
    int64_t n, k, bits;
    if (qrnn_weight_shape(ld, node, "w_q", &n, &k)) return -1;
    if (in_dim >= 0 && k != in_dim) return qrnn_lfail(ld, "linear", "weight columns differ from its input size");
    if (qrnn_get_int(ld, node, "in_frac", -32, 32, &lin->in_frac) || qrnn_get_int(ld, node, "out_frac", -32, 40, &lin->out_frac) ||
        qrnn_get_int(ld, node, "out_bits", 2, 32, &bits))
        return -1;
    if (get_weight(ld, node, "w_q", n, k, &lin->w, NULL, 0)) return -1;
    int64_t *exp = qrnn_get_tensor(ld, node, "exp", n);
    lin->m0 = qrnn_get_tensor(ld, node, "m0", n);
    lin->shift = malloc((size_t)n * sizeof(int64_t));
    int rc = exp && lin->m0 && lin->shift ? 0 : -1;
    if (rc == 0) rc = get_shifts(ld, lin->shift, exp, n, lin->in_frac - lin->out_frac, "linear");
    if (rc == 0) rc = check_multipliers(ld, lin->m0, n, "linear");
    free(exp);
    if (rc) return -1;
    const qjson *b = qjson_get(node, "bias_acc");
    if (b && b->type != QJ_NULL && !(lin->bias = qrnn_get_tensor(ld, node, "bias_acc", n))) return -1;
    lin->lo = -((int64_t)1 << (bits - 1)), lin->hi = ((int64_t)1 << (bits - 1)) - 1;
    return 0;
}

void qrnn_linear_free(qrnn_linear *lin) {
    qrnn_weight_free(&lin->w);
    free(lin->m0), free(lin->shift), free(lin->bias);
    memset(lin, 0, sizeof *lin);
}

int qrnn_load_embedding(qrnn_loader *ld, const qjson *node, qrnn_embedding *emb) {
    memset(emb, 0, sizeof *emb);
    const qjson *cls = qjson_get(node, "class");
    if (!cls || cls->type != QJ_STRING || strcmp(cls->str, "IntEmbedding")) return qrnn_lfail(ld, "embedding", "not an IntEmbedding");
    int64_t V, E, out_frac, out_bits;
    if (qrnn_weight_shape(ld, node, "w_q", &V, &E) || qrnn_get_int(ld, node, "out_frac", -32, 32, &out_frac) ||
        qrnn_get_int(ld, node, "out_bits", 2, 8, &out_bits))
        return -1;
    int8_t *values = NULL;
    if (get_weight(ld, node, "w_q", V, E, NULL, &values, 0)) return -1;
    int64_t *m0 = qrnn_get_tensor(ld, node, "m0", V), *exp = qrnn_get_tensor(ld, node, "exp", V);
    emb->rows = (int)V, emb->dim = (int)E, emb->ld = (int)qrnn_pad64(E), emb->out_frac = out_frac;
    emb->table = calloc((size_t)V * emb->ld, 1);
    int rc = (m0 && exp && emb->table) ? 0 : -1;
    int64_t lo = -((int64_t)1 << (out_bits - 1)), hi = ((int64_t)1 << (out_bits - 1)) - 1;
    for (int64_t v = 0; rc == 0 && v < V; ++v) { /* table = requant(w_q, m0, exp - out_frac), as IntEmbedding */
        int64_t s = exp[v] - out_frac;
        if (s < 1 || s > 62 || m0[v] < 0 || m0[v] >= 65536) rc = qrnn_lfail(ld, "embedding", "requantization outside its range");
        for (int64_t e = 0; rc == 0 && e < E; ++e)
            emb->table[v * emb->ld + e] = (int8_t)qrnn_clamp(qrnn_round_shift(values[v * E + e] * m0[v], s), lo, hi);
    }
    free(values);
    free(m0);
    free(exp);
    if (rc) {
        free(emb->table);
        emb->table = NULL;
    }
    return rc;
}
