/* The qrnn runtime's model: loading an integer checkpoint (kind lm or asr) and the language model's step.
 *
 * The LM step (app/engine/lm.py): embedding gather -> each LSTM layer (qrnn_lstm.c) -> output layer ->
 * int32 logits. Threads split each layer by hidden unit, 4 units (one tile of 16 gate rows) at a time: a unit's
 * four gates and its cell update stay on one thread, and the output layer by vocabulary rows, 16 at a time.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrnn_internal.h"

struct qrnn_session {
    qrnn_model *model;
    int batch;
    int8_t *x0;               /* (batch, emb ld) */
    int8_t **h_cur, **h_next; /* per layer (batch, hidden_ld) int8, padding zero */
    int64_t **c;              /* per layer (batch, hidden) */
    qrnn_lstm_io io;          /* work buffers shared by the layers */
    int32_t *dec_acc;         /* (batch, vocab padded) */
    int32_t *logits;          /* the step's output */
};

static int load_lm(qrnn_loader *ld, qrnn_model *m) {
    const qjson *root = qjson_get(ld->file->meta, "model");
    const qjson *cls = qjson_get(root, "class");
    if (!cls || cls->type != QJ_STRING || strcmp(cls->str, "IntegerLanguageModel"))
        return qrnn_lfail(ld, "model", "not an IntegerLanguageModel");
    const qjson *emb = qrnn_get_node(root, "embedding", "IntEmbedding"), *lstm = qrnn_get_node(root, "lstm", "IntLSTM"),
                *dec = qrnn_get_node(root, "decoder", "IntLinear");
    if (!emb || !lstm || !dec) return qrnn_lfail(ld, "model", "embedding, lstm or decoder missing");
    if (qrnn_load_embedding(ld, emb, &m->emb)) return -1;
    m->vocab = m->emb.rows;
    const qjson *layers = qjson_get(lstm, "layers"), *formats = qjson_get(lstm, "formats");
    if (!layers || layers->type != QJ_ARRAY || !formats || formats->type != QJ_ARRAY || layers->count < 1 ||
        layers->count != formats->count)
        return qrnn_lfail(ld, "lstm", "layers and formats missing or of different lengths");
    if (qrnn_load_acts(ld, lstm, &m->acts)) return -1;
    m->layer = calloc((size_t)layers->count, sizeof(qrnn_lstm_dir));
    if (!m->layer) return qrnn_lfail(ld, "lstm", "out of memory");
    int64_t in_dim = m->emb.dim;
    for (int l = 0; l < layers->count; ++l) {
        const qjson *dirs = &layers->items[l];
        if (dirs->type != QJ_ARRAY || dirs->count != 1)
            return qrnn_lfail(ld, "lstm", "a language model layer has one direction (bidirectional LMs are not supported)");
        m->layers = l + 1;
        if (qrnn_load_dir(ld, &dirs->items[0], &formats->items[l], in_dim, &m->acts, &m->layer[l])) return -1;
        if (l > 0 && m->layer[l].hidden != m->hidden) return qrnn_lfail(ld, "lstm", "layers of different hidden sizes");
        m->hidden = m->layer[l].hidden;
        m->weight_bytes += qrnn_dir_bytes(&m->layer[l]);
        in_dim = m->hidden;
    }
    if (qrnn_load_linear(ld, dec, m->hidden, &m->dec)) return -1;
    if (m->dec.w.n != m->vocab) return qrnn_lfail(ld, "decoder", "its rows differ from the vocabulary");
    if (m->dec.in_frac != m->layer[m->layers - 1].h_frac) return qrnn_lfail(ld, "decoder", "in_frac differs from the last layer's h_frac");
    m->weight_bytes += qrnn_weight_stored_bytes(&m->dec.w);
    const qjson *vocab = qjson_get(ld->file->meta, "vocab");
    if (vocab && vocab->type == QJ_ARRAY) {
        if (vocab->count != m->vocab) return qrnn_lfail(ld, "vocab", "its length differs from the embedding's rows");
        m->tokens = calloc((size_t)m->vocab, sizeof(char *));
        if (!m->tokens) return qrnn_lfail(ld, "vocab", "out of memory");
        for (int v = 0; v < m->vocab; ++v) {
            if (vocab->items[v].type != QJ_STRING) return qrnn_lfail(ld, "vocab", "an entry is not a string");
            m->tokens[v] = strdup(vocab->items[v].str);
        }
    }
    return 0;
}

/* ---- public API --------------------------------------------------------------------------------- */

void qrnn_free(qrnn_model *m) {
    if (!m) return;
    qrnn_pool_free(m->pool);
    for (int l = 0; m->layer && l < m->layers; ++l) qrnn_lstm_dir_free(&m->layer[l]);
    free(m->layer);
    free(m->emb.table);
    qrnn_acts_free(&m->acts);
    qrnn_linear_free(&m->dec);
    qrnn_asr_free(m->asr);
    for (int v = 0; m->tokens && v < m->vocab; ++v) free(m->tokens[v]);
    free(m->tokens);
    free(m);
}

qrnn_model *qrnn_load(const char *path, int flags) {
    qrnn_file file;
    if (qrnn_file_open(&file, path)) return NULL;
    qrnn_model *m = calloc(1, sizeof *m);
    qrnn_loader ld = {&file, path, flags};
    const qjson *kind = qjson_get(file.meta, "kind");
    int rc = -1;
    if (!m) qrnn_set_error("%s: out of memory", path);
    else if (!kind || kind->type != QJ_STRING) qrnn_lfail(&ld, "metadata", "no kind");
    else if (!strcmp(kind->str, "lm")) {
        strcpy(m->kind, "lm");
        rc = load_lm(&ld, m);
    } else if (!strcmp(kind->str, "asr")) {
        strcpy(m->kind, "asr");
        rc = qrnn_asr_load(&ld, m);
    } else {
        char what[120];
        snprintf(what, sizeof what, "kind %.40s is not supported by the C runtime (lm or asr)", kind->str);
        qrnn_lfail(&ld, "metadata", what);
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
int qrnn_lm_logit_frac(const qrnn_model *m) { return (int)m->dec.out_frac; }
int64_t qrnn_weight_bytes(const qrnn_model *m) { return m->weight_bytes; }

const char *qrnn_lm_token(const qrnn_model *m, int id) {
    return (m->tokens && id >= 0 && id < m->vocab) ? m->tokens[id] : NULL;
}

int qrnn_lm_token_id(const qrnn_model *m, const char *token) {
    for (int v = 0; m->tokens && v < m->vocab; ++v)
        if (!strcmp(m->tokens[v], token)) return v;
    return -1;
}

static int hidden_ld(const qrnn_model *m) { return (int)qrnn_pad64(m->hidden); }

void qrnn_session_free(qrnn_session *s) {
    if (!s) return;
    for (int l = 0; l < s->model->layers; ++l) {
        if (s->h_cur) free(s->h_cur[l]);
        if (s->h_next) free(s->h_next[l]);
        if (s->c) free(s->c[l]);
    }
    free(s->h_cur), free(s->h_next), free(s->c);
    free(s->x0), free(s->dec_acc);
    qrnn_lstm_io_free(&s->io);
    free(s);
}

qrnn_session *qrnn_lm_session(qrnn_model *m, int batch) {
    if (strcmp(m->kind, "lm")) {
        qrnn_set_error("a language model session needs a kind lm model, this one is %s", m->kind);
        return NULL;
    }
    if (batch < 1 || batch > 65536) {
        qrnn_set_error("batch must be between 1 and 65536, got %d", batch);
        return NULL;
    }
    qrnn_session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->model = m, s->batch = batch;
    size_t B = (size_t)batch, H = (size_t)m->hidden, L = (size_t)m->layers, HL = (size_t)hidden_ld(m);
    s->x0 = calloc(B * m->emb.ld, 1);
    s->h_cur = calloc(L, sizeof(int8_t *)), s->h_next = calloc(L, sizeof(int8_t *)), s->c = calloc(L, sizeof(int64_t *));
    s->dec_acc = calloc(B * (size_t)m->dec.w.np, sizeof(int32_t));
    int ok = s->dec_acc && s->x0 && s->h_cur && s->h_next && s->c && qrnn_lstm_io_alloc(&s->io, batch, m->hidden) == 0;
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

typedef struct {
    qrnn_session *s;
} step_ctx;

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
    const int HL = hidden_ld(m);
    int u0, u1, v0, v1;
    split(m->hidden, 4, tid, nthreads, &u0, &u1); /* 4 units = one tile of 16 gate rows */
    for (int l = 0; l < m->layers; ++l) {
        qrnn_lstm_io io = s->io; /* this thread's view: the layer's input and state */
        io.x = l == 0 ? s->x0 : s->h_next[l - 1];
        io.ldx = l == 0 ? m->emb.ld : HL;
        io.h_in = s->h_cur[l], io.h_out = s->h_next[l], io.ldh = HL, io.c = s->c[l];
        qrnn_lstm_step(&m->layer[l], m->isa, &io, u0, u1, m->pool);
        qrnn_pool_barrier(m->pool); /* the next layer (and the output) reads all of h_next */
    }
    /* output layer: this thread's vocabulary rows (whole tiles), then requantized into the logits */
    split(m->vocab, 16, tid, nthreads, &v0, &v1);
    qrnn_linear_rows(&m->dec, m->isa, s->h_next[m->layers - 1], HL, s->batch, v0, v1, s->dec_acc, s->logits, m->vocab);
}

int qrnn_lm_step(qrnn_session *s, const int64_t *tokens, int32_t *logits) {
    qrnn_model *m = s->model;
    for (int b = 0; b < s->batch; ++b)
        if (tokens[b] < 0 || tokens[b] >= m->vocab) {
            qrnn_set_error("token id %lld at batch row %d is outside the vocabulary [0, %d)", (long long)tokens[b], b, m->vocab);
            return -1;
        }
    for (int b = 0; b < s->batch; ++b)
        memcpy(s->x0 + (int64_t)b * m->emb.ld, m->emb.table + tokens[b] * m->emb.ld, (size_t)m->emb.ld);
    s->logits = logits;
    step_ctx ctx = {s};
    qrnn_pool_run(m->pool, lm_task, &ctx);
    int8_t **t = s->h_cur;
    s->h_cur = s->h_next, s->h_next = t;
    return 0;
}
