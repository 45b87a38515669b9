/* Internal structures of the qrnn runtime (see qrnn.h). Integer arithmetic only. */
#ifndef QRNN_INTERNAL_H
#define QRNN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "qrnn.h"

#define QRNN_KBLOCK 64            /* activation rows are padded with zeros to a multiple of 64 columns */
#define QRNN_SHIFT_TILE_BYTES 24  /* 64 DenseShift weights: 16 bytes of 2-bit exponents + 8 bytes of signs */

void qrnn_set_error(const char *fmt, ...);

/* ---- weights ------------------------------------------------------------------------------------- */
enum { QRNN_W_INT8 = 0, QRNN_W_SHIFT = 1 };

/* One weight matrix (n, k) in the tiled layout of qrnn_kernels.c: tiles of 16 rows x 4 columns, rows padded
 * to np (a multiple of 16), columns to kp (a multiple of 4), with zeros (int8) or code 0 (DenseShift).
 * int8:  q, 64 bytes per tile; shift: planes, 24 bytes per tile (3 bits per weight, as the checkpoint's codes).
 * row_sum (np,) int32: the sum of each row's weights. */
typedef struct {
    int32_t n, k, np, kp;
    int kind;
    int8_t *q;
    uint8_t *planes;
    int32_t *row_sum;
    int has_min; /* an int8 weight equals -128: the AVX2 sign trick cannot take it (scalar then) */
} qrnn_weight;

/* acc[i * ldacc + r] = w[r] . x[i] for rows r in [r0, r1) and m activation rows x (m, ldx) int8 whose
 * padding columns [k, ldx) are zero (ldx >= kp). r0 is a multiple of 16; the SIMD paths may also write the
 * rows up to r1 rounded up to 16 (ldacc >= np). Exact int32 (k < 2^16). */
void qrnn_matmul_rows(const qrnn_weight *w, int isa, const int8_t *x, int64_t ldx, int m, int r0, int r1,
                      int32_t *acc, int64_t ldacc);
int qrnn_cpu_isa(void); /* the best ISA of this CPU */
void qrnn_weight_free(qrnn_weight *w);
/* Build from int8 values (n, k) / from DenseShift (sign, exponent) pairs (n, k). Returns 0 or -1 (error set). */
int qrnn_weight_from_int8(qrnn_weight *w, const int8_t *values, int32_t n, int32_t k);
int qrnn_weight_from_shift(qrnn_weight *w, const uint8_t *sign, const uint8_t *exponent, int32_t n, int32_t k);
int64_t qrnn_weight_stored_bytes(const qrnn_weight *w);
/* Tiles of int8 values in caller memory of qrnn_weight_int8_bytes(n, k) bytes, 64-byte aligned (not freed by
 * qrnn_weight_free), and this thread's grow-only work buffers (slots 0..3; NULL when out of memory). */
size_t qrnn_weight_int8_bytes(int32_t n, int32_t k);
/* For the torch-op engine (app/engine/kernels.py): an int8 weight (n, k) tiled once, and y (m, n) = x w^T for
 * x (m, k) int8 row-major. qrnn_weight_matmul returns 0, or 1 when its work buffers could not be allocated. */
qrnn_weight *qrnn_weight_new(const int8_t *values, int64_t n, int64_t k);
void qrnn_weight_delete(qrnn_weight *w);
int qrnn_weight_matmul(const qrnn_weight *w, const int8_t *x, int64_t m, int32_t *y);
void qrnn_weight_int8_in(qrnn_weight *w, const int8_t *values, int32_t n, int32_t k, void *buffer);
void *qrnn_scratch(int slot, size_t bytes);

/* ---- thread pool -------------------------------------------------------------------------------- */
typedef struct qrnn_pool qrnn_pool;
typedef void (*qrnn_task)(void *ctx, int tid, int nthreads);
qrnn_pool *qrnn_pool_new(int threads);
void qrnn_pool_free(qrnn_pool *pool);
int qrnn_pool_threads(const qrnn_pool *pool);
void qrnn_pool_run(qrnn_pool *pool, qrnn_task task, void *ctx); /* task(ctx, t, n) on every thread t */
void qrnn_pool_barrier(qrnn_pool *pool);                           /* inside a task: all threads meet */

/* ---- JSON (the checkpoint metadata) --------------------------------------------------------------- */
enum { QJ_NULL, QJ_BOOL, QJ_NUMBER, QJ_STRING, QJ_ARRAY, QJ_OBJECT };
typedef struct qjson {
    int type;
    char *str;           /* STRING: decoded UTF-8; NUMBER: its source text */
    int64_t integer;     /* NUMBER: the value when `is_integer` */
    int is_integer;
    int boolean;
    struct qjson *items; /* ARRAY / OBJECT values */
    char **keys;         /* OBJECT keys */
    int count;
} qjson;
qjson *qjson_parse(const char *text, size_t len, char *err, size_t errlen);
void qjson_free(qjson *v);
const qjson *qjson_get(const qjson *obj, const char *key); /* NULL when absent or not an object */

/* ---- SHA-256 ------------------------------------------------------------------------------------- */
void qrnn_sha256(const uint8_t *data, size_t len, uint8_t out[32]);

/* ---- safetensors file ----------------------------------------------------------------------------- */
typedef struct {
    char *name;
    int dtype; /* QDT_* */
    int ndim;
    int64_t shape[8];
    int64_t numel;
    const uint8_t *data;
    size_t nbytes;
} qrnn_tensor;
enum { QDT_I8, QDT_U8, QDT_I16, QDT_I32, QDT_I64, QDT_BOOL };
typedef struct {
    const char *path;
    uint8_t *bytes;
    size_t size;
    qjson *header;
    qjson *meta; /* the parsed qrnn_speech metadata */
    qrnn_tensor *tensors;
    int count;
} qrnn_file;
int qrnn_file_open(qrnn_file *f, const char *path);
void qrnn_file_close(qrnn_file *f);
const qrnn_tensor *qrnn_file_tensor(const qrnn_file *f, const char *name);

/* ---- integer primitives (app/engine/fixed_point.py) --------------------------------------------- */
static inline int64_t qrnn_clamp(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }
/* floor((x + 2^(s-1)) / 2^s), s >= 1: round half up by an arithmetic right shift. C leaves >> of a negative
 * value to the implementation; gcc and clang define it as arithmetic (floor), which this check pins down. */
_Static_assert((-5 >> 1) == -3, "the qrnn runtime needs an arithmetic right shift of negative integers");
static inline int64_t qrnn_round_shift(int64_t x, int64_t s) { return (x + ((int64_t)1 << (s - 1))) >> s; }

/* out[v] = clamp(round((acc[v] + bias[v]) * m0[v] / 2^shift[v]), lo, hi) for v in [v0, v1); bias may be NULL */
void qrnn_requantize_rows(int isa, const int32_t *acc, const int64_t *bias, const int64_t *m0, const int64_t *shift,
                          int64_t lo, int64_t hi, int v0, int v1, int32_t *out);
static inline int64_t qrnn_floor_div(int64_t a, int64_t b) { /* b > 0 */
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* ---- model parts (qrnn_load.c loads them, qrnn_lstm.c runs them) ---------------------------------- */
#define QRNN_GATE_FRAC 12    /* Q3.12 gate pre-activations */
#define QRNN_PWL_OUT_FRAC 15 /* Q0.15 sigmoid / tanh outputs */

typedef struct {
    int64_t *gamma, *beta; /* (n,) Q3.12 gamma, beta at out_frac */
    int64_t in_frac, out_frac, eps_s;
} qrnn_ln;

typedef struct {
    int16_t *table; /* y = table[x - min] for x in [min, min + size) */
    int64_t min, size;
} qrnn_lut;

typedef struct {
    qrnn_lut sig, tanh_gate, tanh_cell;
} qrnn_acts;

/* One direction of one LSTM layer. Gate rows are stored interleaved (unit u's i, f, g, o at rows 4u..4u+3),
 * so whole tiles hold whole units; the per-row parameters keep the checkpoint's order g * H + u. */
typedef struct {
    int in_dim, hidden;
    qrnn_weight w_ih, w_hh;
    int64_t *ih_m0, *ih_shift, *hh_m0, *hh_shift; /* (4H,): shift = exp + in/h frac - QRNN_GATE_FRAC */
    int64_t *bias_acc, *bias_q12;                 /* (4H,) or NULL */
    qrnn_ln ln_ih, ln_hh, ln_cell;                /* gamma == NULL: absent */
    int64_t in_frac, h_frac, h_bits, cell_frac;
    const qrnn_acts *acts;
    /* the requantization parameters in stored row order (no gate layer norm: vectorized requantization) */
    int64_t *ih_m0_s, *ih_shift_s, *hh_m0_s, *hh_shift_s, *bias_acc_s;
} qrnn_lstm_dir;

/* IntLinear: y = sat(round((W x + b) * m0 / 2^shift)) at 2^-out_frac, out_bits wide */
typedef struct {
    qrnn_weight w;
    int64_t *m0, *shift, *bias;
    int64_t lo, hi, in_frac, out_frac;
} qrnn_linear;

/* IntEmbedding: the requantized table, so that a lookup is a copy */
typedef struct {
    int8_t *table; /* (rows, ld) */
    int rows, dim, ld;
    int64_t out_frac;
} qrnn_embedding;

/* One LSTM step of B rows for units [u0, u1): its inputs, outputs and work buffers. */
typedef struct {
    int B;
    const int8_t *x; /* (B, ldx) layer input, or NULL when acc_x holds W_x x already */
    int64_t ldx;
    const int8_t *h_in; /* (B, ldh) */
    int8_t *h_out;      /* (B, ldh) */
    int64_t ldh;
    int64_t *c;              /* (B, H), updated in place */
    int32_t *acc_x, *acc_h;  /* (B, gp) stored order */
    int64_t gp;
    int64_t *proj_x, *proj_h, *norm_x, *norm_h; /* (B, 4H) */
    int64_t *o_gate, *c_norm;                   /* (B, H) */
} qrnn_lstm_io;

typedef struct {
    qrnn_file *file;
    const char *path;
    int flags;
} qrnn_loader;

int qrnn_lfail(qrnn_loader *ld, const char *where, const char *what);
int qrnn_get_int(qrnn_loader *ld, const qjson *node, const char *key, int64_t lo, int64_t hi, int64_t *out);
const qjson *qrnn_get_node(const qjson *node, const char *key, const char *cls);
int64_t *qrnn_get_tensor(qrnn_loader *ld, const qjson *node, const char *key, int64_t count);
int qrnn_weight_shape(qrnn_loader *ld, const qjson *node, const char *key, int64_t *n, int64_t *k);
int qrnn_load_acts(qrnn_loader *ld, const qjson *node, qrnn_acts *acts);
int qrnn_load_lut(qrnn_loader *ld, const qjson *table, qrnn_lut *lut);
int qrnn_load_dir(qrnn_loader *ld, const qjson *dir, const qjson *fmt, int64_t in_dim, const qrnn_acts *acts,
                  qrnn_lstm_dir *L);
int qrnn_load_linear(qrnn_loader *ld, const qjson *node, int64_t in_dim, qrnn_linear *lin);
int qrnn_load_embedding(qrnn_loader *ld, const qjson *node, qrnn_embedding *emb);
void qrnn_acts_free(qrnn_acts *acts);
void qrnn_lstm_dir_free(qrnn_lstm_dir *L);
void qrnn_linear_free(qrnn_linear *lin);
int64_t qrnn_dir_bytes(const qrnn_lstm_dir *L);

static inline int64_t qrnn_lut_get(const qrnn_lut *lut, int64_t x) { return lut->table[x - lut->min]; }
int qrnn_lstm_io_alloc(qrnn_lstm_io *io, int B, int H);
void qrnn_lstm_io_free(qrnn_lstm_io *io);
/* the step; pool: barriers between the threads sharing it (layer norms need every unit), or NULL alone */
void qrnn_lstm_step(const qrnn_lstm_dir *L, int isa, qrnn_lstm_io *io, int u0, int u1, qrnn_pool *pool);
/* rows [r0, r1) of lin(x) for m rows of x into out (m, ldo) int32; acc: (m, lin->w.np) work buffer */
void qrnn_linear_rows(const qrnn_linear *lin, int isa, const int8_t *x, int64_t ldx, int m, int r0, int r1,
                      int32_t *acc, int32_t *out, int64_t ldo);
static inline int64_t qrnn_pad64(int64_t n) { return (n + QRNN_KBLOCK - 1) / QRNN_KBLOCK * QRNN_KBLOCK; }

/* ---- the model (qrnn_model.c: loading and the LM; qrnn_asr.c: the speech recognizer) ---------------- */
struct qrnn_asr;
struct qrnn_model {
    char kind[8];
    int isa, threads;
    qrnn_pool *pool;
    int64_t weight_bytes;
    /* language model */
    int vocab, hidden, layers;
    qrnn_embedding emb;
    qrnn_acts acts;
    qrnn_lstm_dir *layer;
    qrnn_linear dec;
    char **tokens;
    /* speech recognizer */
    struct qrnn_asr *asr;
};
int qrnn_asr_load(qrnn_loader *ld, qrnn_model *m);
void qrnn_asr_free(struct qrnn_asr *asr);

#endif
