/* The speech recognizer's part of the qrnn C API (see qrnn.h for errors and threads; qrnn_asr.c). */
#ifndef QRNN_ASR_H
#define QRNN_ASR_H

#include <stdint.h>

#include "qrnn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qrnn_utterance qrnn_utterance;

int qrnn_asr_vocab_size(const qrnn_model *model);
int qrnn_asr_feat_dim(const qrnn_model *model);    /* features per frame */
int qrnn_asr_feat_frac(const qrnn_model *model);   /* features are int8 at 2^-feat_frac */
int qrnn_asr_encoder_dim(const qrnn_model *model);
int qrnn_asr_decoder_layers(const qrnn_model *model);
int qrnn_asr_decoder_hidden(const qrnn_model *model);
int qrnn_asr_logit_frac(const qrnn_model *model);

/* Encode one utterance: feats (frames, feat_dim) int8 -> its attention memory (NULL on error). */
qrnn_utterance *qrnn_asr_encode(qrnn_model *model, const int8_t *feats, int frames, int feat_dim);
void qrnn_utterance_free(qrnn_utterance *utterance);
int qrnn_asr_frames(const qrnn_utterance *utterance); /* encoder frames */
void qrnn_asr_keys(const qrnn_model *model, const qrnn_utterance *utterance, int8_t *keys); /* (frames, encoder_dim) */
int qrnn_asr_ctc_logits(qrnn_model *model, const qrnn_utterance *utterance, int32_t *logits); /* (frames, vocab) */
/* One decoder step of n hypotheses: tokens (n,), state h (layers, n, hidden) int8 and c (.., ..) int16 updated
 * in place, logits (n, vocab) int32 at 2^-logit_frac. */
int qrnn_asr_decode_step(qrnn_model *model, const qrnn_utterance *utterance, int n, const int64_t *tokens, int8_t *h,
                         int16_t *c, int32_t *logits);
/* Argmax decoding from bos: up to max_len tokens before eos into out; returns their count or -1. */
int qrnn_asr_greedy(qrnn_model *model, const qrnn_utterance *utterance, int64_t bos, int64_t eos, int max_len,
                    int64_t *out);
/* Best-path CTC decoding: the argmax of each frame's CTC logits, repeats merged, then blank dropped; at most
 * qrnn_asr_frames(utterance) tokens into out; returns their count or -1 (no CTC layer, blank out of range). */
int qrnn_asr_ctc_best_path(qrnn_model *model, const qrnn_utterance *utterance, int64_t blank, int64_t *out);

#ifdef __cplusplus
}
#endif
#endif
