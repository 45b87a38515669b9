/* qrnn: the integer-only runtime of qrnn-speech (C11, libc + pthreads; no floating-point type anywhere).
 *
 * It loads an integer checkpoint (`model.int.safetensors`, written by app/engine/checkpoint.py) and runs
 * the integer language model one step at a time: token ids in, int32 logits out, batched and threaded.
 * Every kernel path (portable scalar, AVX2, AVX-512 VNNI; int8 or packed DenseShift weights) computes the
 * same integers as the readable torch-op engine in app/engine/ (docs/engine.md; tests/test_native.py).
 *
 * Errors: functions return NULL or a non-zero status; qrnn_last_error() then holds one line that names
 * the problem (thread-local). A model and its sessions may be used by one thread at a time.
 */
#ifndef QRNN_H
#define QRNN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qrnn_model qrnn_model;
typedef struct qrnn_session qrnn_session;

enum qrnn_isa { QRNN_ISA_AUTO = 0, QRNN_ISA_SCALAR = 1, QRNN_ISA_AVX2 = 2, QRNN_ISA_AVX512VNNI = 3 };

/* Load flags. QRNN_LOAD_SHIFT_AS_INT8: run DenseShift weights decoded to int8 (the int8 kernels) instead
 * of reading their packed 3-bit planes. */
enum { QRNN_LOAD_SHIFT_AS_INT8 = 1 };

const char *qrnn_last_error(void);
int qrnn_isa_supported(int isa);       /* 1 when this CPU (and this build) can run that kernel path */
const char *qrnn_isa_name(int isa);

qrnn_model *qrnn_load(const char *path, int flags);
void qrnn_free(qrnn_model *model);
int qrnn_set_threads(qrnn_model *model, int threads); /* threads >= 1 */
int qrnn_set_isa(qrnn_model *model, int isa);         /* QRNN_ISA_AUTO: the fastest this CPU runs */
int qrnn_get_isa(const qrnn_model *model);

/* "lm" or "asr". */
const char *qrnn_kind(const qrnn_model *model);
/* Language model dimensions. */
int qrnn_lm_vocab_size(const qrnn_model *model);
int qrnn_lm_layers(const qrnn_model *model);
int qrnn_lm_hidden(const qrnn_model *model);
int qrnn_lm_logit_frac(const qrnn_model *model);
/* The vocabulary entry of token `id` (UTF-8), or NULL. */
const char *qrnn_lm_token(const qrnn_model *model, int id);
int qrnn_lm_token_id(const qrnn_model *model, const char *token); /* -1 when absent */
/* Bytes of weights a step reads (int8 or packed codes), for benchmarks. */
int64_t qrnn_weight_bytes(const qrnn_model *model);

/* A session holds the recurrent state of `batch` sequences and the work buffers of one step. */
qrnn_session *qrnn_lm_session(qrnn_model *model, int batch);
void qrnn_session_free(qrnn_session *session);
void qrnn_lm_reset(qrnn_session *session);
/* h: (layers, batch, hidden) int8, c: (layers, batch, hidden) int16, as the Python engine's state. */
void qrnn_lm_get_state(const qrnn_session *session, int8_t *h, int16_t *c);
void qrnn_lm_set_state(qrnn_session *session, const int8_t *h, const int16_t *c);
/* One step: tokens (batch,) -> logits (batch, vocab) int32 at 2^-logit_frac; the state advances.
 * Returns 0, or non-zero when a token id is out of range (nothing changes then). */
int qrnn_lm_step(qrnn_session *session, const int64_t *tokens, int32_t *logits);

#ifdef __cplusplus
}
#endif
#endif
