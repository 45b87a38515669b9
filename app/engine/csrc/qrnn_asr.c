/* The integer speech recognizer of the qrnn runtime (app/engine/asr.py and attention.py, integer for integer).
 *
 *   encode   int8 features (T, F) -> time convolutions (kernel 3, stride 2, ReLU) -> bidirectional LSTM layers
 *            (layers >= 1 add their input: saturating residual) -> keys (T', 2H) int8 and their attention
 *            projection (T', A) Q3.12
 *   step     previous tokens (n,) -> embedding -> decoder LSTM layers (residual) -> additive attention over
 *            the keys (tanh and exp lookup tables, integer softmax) -> output layer on [query; context]
 *            -> int32 logits (n, V)
 *   greedy   argmax of the int32 logits from <bos> until <eos> or max_len tokens (integers only)
 *   ctc      the CTC layer's int32 logits of every encoder frame; its best path (the argmax of each frame,
 *            repeats merged, blanks dropped: app/decode/search.py ctc_greedy_search), integers only
 * One utterance per encode; a step may carry n hypotheses (beam search runs on the host, app/decode/search.py).
 * With 2 threads or more the encoder runs its two directions at once.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrnn_asr.h"
#include "qrnn_internal.h"

#define CONV_KERNEL 3
#define CONV_STRIDE 2
#define PROB_FRAC 15

struct qrnn_asr {
    int64_t feat_frac, act_bits, out_frac;
    int residual, feat_dim, vocab, enc_dim, att_dim, dec_hidden;
    int n_conv, n_enc, n_dec;
    qrnn_linear *conv;
    qrnn_acts *enc_acts, *dec_acts;
    qrnn_lstm_dir *enc; /* (n_enc, 2): forward, backward */
    qrnn_lstm_dir *dec;
    int64_t *enc_fracs, *dec_fracs;
    qrnn_embedding emb;
    qrnn_linear key_proj, query_proj, score_proj, output, ctc;
    int has_ctc;
    qrnn_lut att_tanh, att_exp;
};

struct qrnn_utterance {
    int frames;
    int64_t key_ld;
    int8_t *keys;       /* (frames, key_ld) at 2^-enc_fracs[last] */
    int32_t *keys_proj; /* (frames, att_dim) Q3.12 */
};

/* ---- loading ------------------------------------------------------------------------------------ */

static int load_ints(qrnn_loader *ld, const qjson *root, const char *key, int count, int64_t **out) {
    const qjson *list = qjson_get(root, key);
    if (!list || list->type != QJ_ARRAY || list->count != count) return qrnn_lfail(ld, key, "missing or of the wrong length");
    *out = calloc((size_t)count + 1, sizeof(int64_t));
    if (!*out) return qrnn_lfail(ld, key, "out of memory");
    for (int i = 0; i < count; ++i) {
        if (!list->items[i].is_integer || list->items[i].integer < -32 || list->items[i].integer > 32)
            return qrnn_lfail(ld, key, "not a list of small integers");
        (*out)[i] = list->items[i].integer;
    }
    return 0;
}

/* one IntLSTM of `dirs` directions and one layer (the ASR model stacks them itself) */
static int load_lstm(qrnn_loader *ld, const qjson *lstm, int dirs, int64_t in_dim, qrnn_acts *acts, qrnn_lstm_dir *out) {
    const qjson *layers = qjson_get(lstm, "layers"), *formats = qjson_get(lstm, "formats");
    if (!layers || layers->type != QJ_ARRAY || layers->count != 1 || !formats || formats->type != QJ_ARRAY ||
        formats->count != 1 || layers->items[0].type != QJ_ARRAY || layers->items[0].count != dirs)
        return qrnn_lfail(ld, "lstm", dirs == 2 ? "an encoder layer is one bidirectional IntLSTM layer" : "a decoder layer is one unidirectional IntLSTM layer");
    if (qrnn_load_acts(ld, lstm, acts)) return -1;
    for (int d = 0; d < dirs; ++d)
        if (qrnn_load_dir(ld, &layers->items[0].items[d], &formats->items[0], in_dim, acts, &out[d])) return -1;
    return 0;
}

int qrnn_asr_load(qrnn_loader *ld, qrnn_model *m) {
    const qjson *root = qjson_get(ld->file->meta, "model");
    const qjson *cls = qjson_get(root, "class");
    if (!cls || cls->type != QJ_STRING || strcmp(cls->str, "IntegerASRModel")) return qrnn_lfail(ld, "model", "not an IntegerASRModel");
    struct qrnn_asr *a = m->asr = calloc(1, sizeof *a);
    if (!a) return qrnn_lfail(ld, "model", "out of memory");
    const qjson *residual = qjson_get(root, "residual");
    if (!residual || residual->type != QJ_BOOL) return qrnn_lfail(ld, "model", "residual is not a boolean");
    a->residual = residual->boolean;
    if (qrnn_get_int(ld, root, "feat_frac", -32, 32, &a->feat_frac) || qrnn_get_int(ld, root, "act_bits", 2, 8, &a->act_bits) ||
        qrnn_get_int(ld, root, "out_frac", -32, 32, &a->out_frac))
        return -1;
    const qjson *conv = qjson_get(root, "conv"), *enc = qjson_get(root, "encoder"), *dec = qjson_get(root, "decoder");
    if (!conv || conv->type != QJ_ARRAY || conv->count < 1 || !enc || enc->type != QJ_ARRAY || enc->count < 1 || !dec ||
        dec->type != QJ_ARRAY || dec->count < 1)
        return qrnn_lfail(ld, "model", "conv, encoder or decoder missing");
    a->conv = calloc((size_t)conv->count, sizeof(qrnn_linear));
    if (!a->conv) return qrnn_lfail(ld, "conv", "out of memory");
    int64_t channels = -1;
    for (int i = 0; i < conv->count; ++i) {
        int64_t n, k;
        if (qrnn_weight_shape(ld, &conv->items[i], "w_q", &n, &k)) return -1;
        if (k % CONV_KERNEL || (channels >= 0 && k != CONV_KERNEL * channels)) return qrnn_lfail(ld, "conv", "weights are not over 3 stacked frames");
        if (i == 0) a->feat_dim = (int)(k / CONV_KERNEL);
        a->n_conv = i + 1;
        if (qrnn_load_linear(ld, &conv->items[i], k, &a->conv[i])) return -1;
        if (a->conv[i].hi > 127) return qrnn_lfail(ld, "conv", "outputs wider than int8");
        channels = n;
        m->weight_bytes += qrnn_weight_stored_bytes(&a->conv[i].w);
    }
    a->n_enc = enc->count, a->n_dec = dec->count;
    a->enc_acts = calloc((size_t)a->n_enc, sizeof(qrnn_acts)), a->dec_acts = calloc((size_t)a->n_dec, sizeof(qrnn_acts));
    a->enc = calloc((size_t)a->n_enc * 2, sizeof(qrnn_lstm_dir)), a->dec = calloc((size_t)a->n_dec, sizeof(qrnn_lstm_dir));
    if (!a->enc_acts || !a->dec_acts || !a->enc || !a->dec) return qrnn_lfail(ld, "model", "out of memory");
    int64_t in_dim = channels;
    for (int l = 0; l < a->n_enc; ++l) {
        if (load_lstm(ld, &enc->items[l], 2, in_dim, &a->enc_acts[l], &a->enc[2 * l])) return -1;
        in_dim = 2 * a->enc[2 * l].hidden;
        if (a->enc[2 * l + 1].hidden != a->enc[2 * l].hidden) return qrnn_lfail(ld, "encoder", "directions of different sizes");
        m->weight_bytes += qrnn_dir_bytes(&a->enc[2 * l]) + qrnn_dir_bytes(&a->enc[2 * l + 1]);
    }
    a->enc_dim = (int)in_dim;
    if (load_ints(ld, root, "encoder_fracs", a->n_enc, &a->enc_fracs) || load_ints(ld, root, "decoder_fracs", a->n_dec, &a->dec_fracs))
        return -1;
    const qjson *emb = qrnn_get_node(root, "embedding", "IntEmbedding");
    if (!emb || qrnn_load_embedding(ld, emb, &a->emb)) return emb ? -1 : qrnn_lfail(ld, "embedding", "missing");
    in_dim = a->emb.dim;
    for (int l = 0; l < a->n_dec; ++l) {
        if (load_lstm(ld, &dec->items[l], 1, in_dim, &a->dec_acts[l], &a->dec[l])) return -1;
        in_dim = a->dec[l].hidden;
        if (a->dec[l].hidden != a->dec[0].hidden) return qrnn_lfail(ld, "decoder", "layers of different sizes");
        m->weight_bytes += qrnn_dir_bytes(&a->dec[l]);
    }
    a->dec_hidden = (int)in_dim;
    const qjson *att = qrnn_get_node(root, "attention", "IntAdditiveAttention");
    if (!att) return qrnn_lfail(ld, "attention", "missing");
    if (qrnn_load_linear(ld, qjson_get(att, "key_proj"), a->enc_dim, &a->key_proj) ||
        qrnn_load_linear(ld, qjson_get(att, "query_proj"), a->dec_hidden, &a->query_proj) ||
        qrnn_load_linear(ld, qjson_get(att, "score_proj"), a->key_proj.w.n, &a->score_proj) ||
        qrnn_load_lut(ld, qjson_get(att, "tanh"), &a->att_tanh) || qrnn_load_lut(ld, qjson_get(att, "exp"), &a->att_exp))
        return -1;
    a->att_dim = a->key_proj.w.n;
    if (a->query_proj.w.n != a->att_dim || a->score_proj.w.n != 1) return qrnn_lfail(ld, "attention", "projection sizes disagree");
    if (a->att_tanh.min != -32768 || a->att_tanh.size != 65536 || a->att_exp.min != -32768 || a->att_exp.min + a->att_exp.size != 1)
        return qrnn_lfail(ld, "attention", "tanh must cover int16 and exp [-32768, 0]");
    if (qrnn_load_linear(ld, qjson_get(root, "output"), a->dec_hidden + a->enc_dim, &a->output)) return -1;
    a->vocab = a->output.w.n;
    if (a->emb.rows != a->vocab) return qrnn_lfail(ld, "embedding", "its rows differ from the output vocabulary");
    const qjson *ctc = qjson_get(root, "ctc");
    if (ctc && ctc->type != QJ_NULL) {
        if (qrnn_load_linear(ld, ctc, a->enc_dim, &a->ctc)) return -1;
        a->has_ctc = 1;
        m->weight_bytes += qrnn_weight_stored_bytes(&a->ctc.w);
    }
    m->weight_bytes += qrnn_weight_stored_bytes(&a->key_proj.w) + qrnn_weight_stored_bytes(&a->query_proj.w) +
                       qrnn_weight_stored_bytes(&a->score_proj.w) + qrnn_weight_stored_bytes(&a->output.w);
    return 0;
}

void qrnn_asr_free(struct qrnn_asr *a) {
    if (!a) return;
    for (int i = 0; a->conv && i < a->n_conv; ++i) qrnn_linear_free(&a->conv[i]);
    for (int i = 0; a->enc && i < 2 * a->n_enc; ++i) qrnn_lstm_dir_free(&a->enc[i]);
    for (int i = 0; a->dec && i < a->n_dec; ++i) qrnn_lstm_dir_free(&a->dec[i]);
    for (int i = 0; a->enc_acts && i < a->n_enc; ++i) qrnn_acts_free(&a->enc_acts[i]);
    for (int i = 0; a->dec_acts && i < a->n_dec; ++i) qrnn_acts_free(&a->dec_acts[i]);
    free(a->conv), free(a->enc), free(a->dec), free(a->enc_acts), free(a->dec_acts), free(a->enc_fracs), free(a->dec_fracs);
    free(a->emb.table);
    qrnn_linear_free(&a->key_proj), qrnn_linear_free(&a->query_proj), qrnn_linear_free(&a->score_proj);
    qrnn_linear_free(&a->output), qrnn_linear_free(&a->ctc);
    free(a->att_tanh.table), free(a->att_exp.table);
    free(a);
}

/* ---- integer helpers ---------------------------------------------------------------------------- */

/* x on the 2^-from grid moved to 2^-to (round half up), saturated to `bits` (regrid / shift_round) */
static int64_t regrid(int64_t x, int64_t from, int64_t to, int64_t bits) {
    int64_t y = from > to ? qrnn_round_shift(x, from - to) : x * ((int64_t)1 << (to - from));
    return qrnn_clamp(y, -((int64_t)1 << (bits - 1)), ((int64_t)1 << (bits - 1)) - 1);
}

/* residual_add: both on the finer grid, summed, then to 2^-out_frac saturated to `bits` */
static int64_t residual(int64_t a, int64_t a_frac, int64_t b, int64_t b_frac, int64_t out_frac, int64_t bits) {
    int64_t frac = a_frac > b_frac ? a_frac : b_frac;
    int64_t total = a * ((int64_t)1 << (frac - a_frac)) + b * ((int64_t)1 << (frac - b_frac));
    return regrid(total, frac, out_frac, bits);
}

static struct qrnn_asr *asr_of(qrnn_model *m) {
    if (!m->asr) qrnn_set_error("this is a kind %s model, not a speech recognizer (kind asr)", m->kind);
    return m->asr;
}

/* ---- encoder ---------------------------------------------------------------------------------------- */

typedef struct {
    qrnn_model *m;
    const qrnn_lstm_dir *dirs; /* forward, backward */
    const int8_t *x;           /* (T, ldx) */
    int64_t ldx;
    int T;
    int8_t *y; /* (T, ldy): forward outputs in columns [0, H), backward in [H, 2H) */
    int64_t ldy;
    int failed;
} encoder_ctx;

static int run_direction(const qrnn_model *m, const qrnn_lstm_dir *L, const int8_t *x, int64_t ldx, int T, int reverse,
                         int8_t *y, int64_t ldy) {
    const int H = L->hidden;
    const int64_t ldh = qrnn_pad64(H);
    qrnn_lstm_io io;
    if (qrnn_lstm_io_alloc(&io, 1, H)) return -1;
    int32_t *acc_all = malloc((size_t)T * io.gp * sizeof(int32_t) + 64);
    int8_t *h = calloc((size_t)(2 * ldh), 1);
    int64_t *c = calloc((size_t)H, sizeof(int64_t));
    if (!acc_all || !h || !c) {
        free(acc_all), free(h), free(c);
        qrnn_lstm_io_free(&io);
        qrnn_set_error("out of memory for the encoder");
        return -1;
    }
    qrnn_matmul_rows(&L->w_ih, m->isa, x, ldx, T, 0, 4 * H, acc_all, io.gp); /* W_x x of every frame at once */
    int32_t *own_acc_x = io.acc_x;
    io.x = NULL, io.ldh = ldh, io.c = c;
    for (int s = 0; s < T; ++s) {
        int t = reverse ? T - 1 - s : s;
        io.acc_x = acc_all + (int64_t)t * io.gp;
        io.h_in = h + (s % 2) * ldh, io.h_out = h + ((s + 1) % 2) * ldh;
        qrnn_lstm_step(L, m->isa, &io, 0, H, NULL);
        memcpy(y + (int64_t)t * ldy, io.h_out, (size_t)H);
    }
    io.acc_x = own_acc_x;
    free(acc_all), free(h), free(c);
    qrnn_lstm_io_free(&io);
    return 0;
}

static void encoder_task(void *p, int tid, int nthreads) {
    encoder_ctx *e = p;
    for (int d = 0; d < 2; ++d)
        if (d % nthreads == tid) /* 2 threads: one direction each */
            if (run_direction(e->m, &e->dirs[d], e->x, e->ldx, e->T, d, e->y + d * e->dirs[0].hidden, e->ldy)) e->failed = 1;
}

qrnn_utterance *qrnn_asr_encode(qrnn_model *m, const int8_t *feats, int frames, int feat_dim) {
    struct qrnn_asr *a = asr_of(m);
    if (!a) return NULL;
    if (feat_dim != a->feat_dim || frames < 1) {
        qrnn_set_error("features must be (frames >= 1, %d) int8, got (%d, %d)", a->feat_dim, frames, feat_dim);
        return NULL;
    }
    int T = frames, C = feat_dim;
    int64_t ld = qrnn_pad64(C);
    int8_t *x = calloc((size_t)(T < CONV_KERNEL ? CONV_KERNEL : T) * ld, 1);
    if (!x) goto oom;
    for (int t = 0; t < T; ++t) memcpy(x + t * ld, feats + (int64_t)t * C, (size_t)C);
    for (int i = 0; i < a->n_conv; ++i) { /* unfold kernel-3 stride-2 windows (zero-padded below 3 frames), linear, ReLU */
        const qrnn_linear *conv = &a->conv[i];
        int Tin = T < CONV_KERNEL ? CONV_KERNEL : T, Tout = (Tin - CONV_KERNEL) / CONV_STRIDE + 1, Cout = conv->w.n;
        int64_t ldw = qrnn_pad64(CONV_KERNEL * C), ldo = qrnn_pad64(Cout);
        int8_t *win = calloc((size_t)Tout * ldw, 1), *y = calloc((size_t)(Tout < CONV_KERNEL ? CONV_KERNEL : Tout) * ldo, 1);
        int32_t *acc = malloc((size_t)Tout * conv->w.np * sizeof(int32_t)), *out = malloc((size_t)Tout * Cout * sizeof(int32_t));
        if (!win || !y || !acc || !out) {
            free(win), free(y), free(acc), free(out), free(x);
            goto oom;
        }
        for (int t = 0; t < Tout; ++t)
            for (int k = 0; k < CONV_KERNEL; ++k) memcpy(win + t * ldw + k * C, x + (int64_t)(CONV_STRIDE * t + k) * ld, (size_t)C);
        qrnn_linear_rows(conv, m->isa, win, ldw, Tout, 0, Cout, acc, out, Cout);
        for (int t = 0; t < Tout; ++t)
            for (int c = 0; c < Cout; ++c) y[t * ldo + c] = (int8_t)(out[(int64_t)t * Cout + c] > 0 ? out[(int64_t)t * Cout + c] : 0);
        free(win), free(acc), free(out), free(x);
        x = y, T = Tout, C = Cout, ld = ldo;
    }
    int64_t frac = a->conv[a->n_conv - 1].out_frac;
    for (int l = 0; l < a->n_enc; ++l) {
        const qrnn_lstm_dir *dirs = &a->enc[2 * l];
        int H = dirs[0].hidden;
        int64_t ldy = qrnn_pad64(2 * H);
        int8_t *y = calloc((size_t)T * ldy, 1);
        if (!y) {
            free(x);
            goto oom;
        }
        encoder_ctx ctx = {m, dirs, x, ld, T, y, ldy, 0};
        qrnn_pool_run(m->pool, encoder_task, &ctx);
        if (ctx.failed) {
            free(x), free(y);
            return NULL;
        }
        if (a->residual && l > 0)
            for (int t = 0; t < T; ++t)
                for (int c = 0; c < 2 * H; ++c)
                    y[t * ldy + c] = (int8_t)residual(y[t * ldy + c], dirs[0].h_frac, x[t * ld + c], frac, a->enc_fracs[l], a->act_bits);
        free(x);
        x = y, C = 2 * H, ld = ldy, frac = a->enc_fracs[l];
    }
    qrnn_utterance *u = calloc(1, sizeof *u);
    int32_t *acc = malloc((size_t)T * a->key_proj.w.np * sizeof(int32_t));
    if (!u || !acc) {
        free(u), free(acc), free(x);
        goto oom;
    }
    u->frames = T, u->keys = x, u->key_ld = ld;
    u->keys_proj = malloc((size_t)T * a->att_dim * sizeof(int32_t));
    if (!u->keys_proj) {
        free(acc);
        qrnn_utterance_free(u);
        goto oom;
    }
    qrnn_linear_rows(&a->key_proj, m->isa, x, ld, T, 0, a->att_dim, acc, u->keys_proj, a->att_dim);
    free(acc);
    return u;
oom:
    qrnn_set_error("out of memory encoding %d frames", frames);
    return NULL;
}

void qrnn_utterance_free(qrnn_utterance *u) {
    if (!u) return;
    free(u->keys), free(u->keys_proj), free(u);
}

int qrnn_asr_frames(const qrnn_utterance *u) { return u->frames; }

void qrnn_asr_keys(const qrnn_model *m, const qrnn_utterance *u, int8_t *keys) {
    for (int t = 0; t < u->frames; ++t) memcpy(keys + (int64_t)t * m->asr->enc_dim, u->keys + t * u->key_ld, (size_t)m->asr->enc_dim);
}

int qrnn_asr_ctc_logits(qrnn_model *m, const qrnn_utterance *u, int32_t *logits) {
    struct qrnn_asr *a = asr_of(m);
    if (!a) return -1;
    if (!a->has_ctc) {
        qrnn_set_error("this model has no CTC layer (exported with model.asr.ctc=false)");
        return -1;
    }
    int32_t *acc = malloc((size_t)u->frames * a->ctc.w.np * sizeof(int32_t));
    if (!acc) {
        qrnn_set_error("out of memory");
        return -1;
    }
    qrnn_linear_rows(&a->ctc, m->isa, u->keys, u->key_ld, u->frames, 0, a->vocab, acc, logits, a->vocab);
    free(acc);
    return 0;
}

/* ---- decoder step ------------------------------------------------------------------------------------ */

int qrnn_asr_decode_step(qrnn_model *m, const qrnn_utterance *u, int n, const int64_t *tokens, int8_t *h, int16_t *c,
                         int32_t *logits) {
    struct qrnn_asr *a = asr_of(m);
    if (!a) return -1;
    for (int i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= a->vocab) {
            qrnn_set_error("token id %lld is outside the vocabulary [0, %d)", (long long)tokens[i], a->vocab);
            return -1;
        }
    const int H = a->dec_hidden, T = u->frames, A = a->att_dim, D = a->enc_dim;
    const int64_t ldh = qrnn_pad64(H > a->emb.dim ? H : a->emb.dim), ldj = qrnn_pad64(H + D), lde = qrnn_pad64(A);
    int8_t *x = calloc((size_t)n * ldh, 1), *h_in = calloc((size_t)n * ldh, 1), *h_out = calloc((size_t)n * ldh, 1);
    int8_t *joined = calloc((size_t)n * ldj, 1), *energy = calloc((size_t)T * lde, 1);
    int64_t *cell = malloc((size_t)n * H * sizeof(int64_t)), *probs = malloc((size_t)T * sizeof(int64_t));
    int32_t *q = malloc((size_t)n * A * sizeof(int32_t)), *scores = malloc((size_t)T * sizeof(int32_t));
    size_t acc_rows = (size_t)(a->output.w.np > a->query_proj.w.np ? a->output.w.np : a->query_proj.w.np);
    int32_t *acc = malloc((size_t)(n > T ? n : T) * (acc_rows > 16 ? acc_rows : 16) * sizeof(int32_t));
    qrnn_lstm_io io;
    int rc = qrnn_lstm_io_alloc(&io, n, H);
    if (!x || !h_in || !h_out || !joined || !energy || !cell || !probs || !q || !scores || !acc || rc) {
        qrnn_set_error("out of memory for a decoder step of %d hypotheses", n);
        rc = -1;
        goto done;
    }
    for (int i = 0; i < n; ++i) memcpy(x + i * ldh, a->emb.table + tokens[i] * a->emb.ld, (size_t)a->emb.dim);
    int64_t frac = a->emb.out_frac;
    for (int l = 0; l < a->n_dec; ++l) {
        const qrnn_lstm_dir *L = &a->dec[l];
        for (int i = 0; i < n; ++i)
            for (int k = 0; k < H; ++k) {
                h_in[i * ldh + k] = h[((int64_t)l * n + i) * H + k];
                cell[(int64_t)i * H + k] = c[((int64_t)l * n + i) * H + k];
            }
        io.x = x, io.ldx = ldh, io.h_in = h_in, io.h_out = h_out, io.ldh = ldh, io.c = cell;
        qrnn_lstm_step(L, m->isa, &io, 0, H, NULL);
        for (int i = 0; i < n; ++i)
            for (int k = 0; k < H; ++k) {
                h[((int64_t)l * n + i) * H + k] = h_out[i * ldh + k];
                c[((int64_t)l * n + i) * H + k] = (int16_t)cell[(int64_t)i * H + k];
                x[i * ldh + k] = a->residual && l > 0
                                     ? (int8_t)residual(h_out[i * ldh + k], L->h_frac, x[i * ldh + k], frac, a->dec_fracs[l], a->act_bits)
                                     : h_out[i * ldh + k];
            }
        frac = a->dec_fracs[l];
        for (int i = 0; l == 0 && i < n; ++i) memset(x + i * ldh + H, 0, (size_t)(ldh - H)); /* no embedding left over */
    }
    /* attention of each query over the keys (app/engine/attention.py) */
    qrnn_linear_rows(&a->query_proj, m->isa, x, ldh, n, 0, A, acc, q, A);
    const int64_t key_frac = a->enc_fracs[a->n_enc - 1];
    for (int i = 0; i < n; ++i) {
        for (int t = 0; t < T; ++t)
            for (int j = 0; j < A; ++j) {
                int64_t e = qrnn_clamp((int64_t)u->keys_proj[(int64_t)t * A + j] + q[(int64_t)i * A + j], -32768, 32767);
                energy[t * lde + j] = (int8_t)qrnn_clamp(qrnn_round_shift(qrnn_lut_get(&a->att_tanh, e), 8), -128, 127);
            }
        qrnn_linear_rows(&a->score_proj, m->isa, energy, lde, T, 0, 1, acc, scores, 1);
        int64_t peak = scores[0], total = 0;
        for (int t = 1; t < T; ++t) peak = scores[t] > peak ? scores[t] : peak;
        for (int t = 0; t < T; ++t) total += probs[t] = qrnn_lut_get(&a->att_exp, qrnn_clamp(scores[t] - peak, -32768, 0));
        for (int t = 0; t < T; ++t) probs[t] = (probs[t] * ((int64_t)1 << (PROB_FRAC + 1)) + total) / (2 * total); /* Q0.15 */
        int8_t *row = joined + i * ldj;
        for (int k = 0; k < H; ++k) row[k] = (int8_t)regrid(x[i * ldh + k], frac, a->out_frac, a->act_bits);
        for (int d = 0; d < D; ++d) {
            int64_t sum = 0;
            for (int t = 0; t < T; ++t) sum += probs[t] * u->keys[t * u->key_ld + d];
            int64_t context = qrnn_clamp(qrnn_round_shift(sum, PROB_FRAC), -128, 127);
            row[H + d] = (int8_t)regrid(context, key_frac, a->out_frac, a->act_bits);
        }
    }
    qrnn_linear_rows(&a->output, m->isa, joined, ldj, n, 0, a->vocab, acc, logits, a->vocab);
done:
    free(x), free(h_in), free(h_out), free(joined), free(energy), free(cell), free(probs), free(q), free(scores), free(acc);
    qrnn_lstm_io_free(&io);
    return rc;
}

/* the index of the largest of n logits: the first of equal maxima, as torch.argmax */
static int argmax(const int32_t *logits, int n) {
    int best = 0;
    for (int v = 1; v < n; ++v)
        if (logits[v] > logits[best]) best = v;
    return best;
}

int qrnn_asr_greedy(qrnn_model *m, const qrnn_utterance *u, int64_t bos, int64_t eos, int max_len, int64_t *out) {
    struct qrnn_asr *a = asr_of(m);
    if (!a) return -1;
    const int64_t state = (int64_t)a->n_dec * a->dec_hidden;
    int8_t *h = calloc((size_t)state, 1);
    int16_t *c = calloc((size_t)state, sizeof(int16_t));
    int32_t *logits = malloc((size_t)a->vocab * sizeof(int32_t));
    int count = 0;
    int64_t token = bos;
    if (!h || !c || !logits) {
        qrnn_set_error("out of memory");
        count = -1;
    }
    for (int t = 0; count >= 0 && t < max_len; ++t) {
        if (qrnn_asr_decode_step(m, u, 1, &token, h, c, logits)) {
            count = -1;
            break;
        }
        int best = argmax(logits, a->vocab);
        if (best == eos) break;
        out[count++] = token = best;
    }
    free(h), free(c), free(logits);
    return count;
}

int qrnn_asr_ctc_best_path(qrnn_model *m, const qrnn_utterance *u, int64_t blank, int64_t *out) {
    struct qrnn_asr *a = asr_of(m);
    if (!a) return -1;
    if (blank < 0 || blank >= a->vocab) {
        qrnn_set_error("blank id %lld is outside the vocabulary [0, %d)", (long long)blank, a->vocab);
        return -1;
    }
    if (u->frames == 0) return 0;
    int32_t *logits = malloc((size_t)u->frames * a->vocab * sizeof(int32_t));
    if (!logits) {
        qrnn_set_error("out of memory for the CTC logits of %d frames", u->frames);
        return -1;
    }
    if (qrnn_asr_ctc_logits(m, u, logits)) {
        free(logits);
        return -1;
    }
    int count = 0;
    int64_t previous = blank;
    for (int t = 0; t < u->frames; ++t) {
        int best = argmax(logits + (size_t)t * a->vocab, a->vocab);
        if (best != previous && best != blank) out[count++] = best;
        previous = best;
    }
    free(logits);
    return count;
}

int qrnn_asr_vocab_size(const qrnn_model *m) { return m->asr ? m->asr->vocab : -1; }
int qrnn_asr_feat_dim(const qrnn_model *m) { return m->asr ? m->asr->feat_dim : -1; }
int qrnn_asr_feat_frac(const qrnn_model *m) { return m->asr ? (int)m->asr->feat_frac : 0; }
int qrnn_asr_encoder_dim(const qrnn_model *m) { return m->asr ? m->asr->enc_dim : -1; }
int qrnn_asr_decoder_layers(const qrnn_model *m) { return m->asr ? m->asr->n_dec : -1; }
int qrnn_asr_decoder_hidden(const qrnn_model *m) { return m->asr ? m->asr->dec_hidden : -1; }
int qrnn_asr_logit_frac(const qrnn_model *m) { return m->asr ? (int)m->asr->output.out_frac : 0; }
