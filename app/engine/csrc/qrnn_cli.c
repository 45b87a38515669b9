/* qrnn-run: run an integer checkpoint from the command line, without Python.
 *
 *   qrnn-run lm MODEL.int.safetensors [--threads N] [--isa auto|scalar|avx2|avx512vnni] [--shift packed|int8]
 *            [--ids] [--logits FILE] < tokens.txt
 *   qrnn-run asr MODEL.int.safetensors [--threads N] [--isa ...] [--shift ...] [--bos 1] [--eos 2] [--max-len 200]
 *            [--ctc [--blank 0]] FEATURES.i8 ...
 *
 * asr: each FEATURES.i8 file holds one utterance's features as raw int8 (frames x feat_dim, row-major) on the
 * model's input grid, as app.export.asr.quantize_features returns them (the filterbank and its rounding
 * are host float code). For each file it prints the file name and the token ids: the decoder's greedy
 * tokens, or with --ctc the CTC layer's best path (blank id --blank), which cannot loop on long audio
 * (evaluate.py ctc_weight=1 beam_size=1 decodes the same).
 *
 * Reads whitespace-separated tokens (words of the checkpoint's vocabulary, or integer ids with --ids; a word
 * outside the vocabulary becomes <unk> when the vocabulary has it) and feeds them one at a time. For every
 * input token it prints: the position, the token id, the argmax of the int32 logits (id and word), the
 * largest logit and the logit of the next input token (the scores are int32 at 2^-logit_frac: softmax and
 * log-likelihoods are host float code, left to the caller). --logits writes every step's int32 logits
 * (little-endian, vocab values per step) to FILE. Errors: one line on stderr and exit status 1 or 2.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrnn.h"
#include "qrnn_asr.h"

static int usage(const char *msg) {
    if (msg) fprintf(stderr, "qrnn-run: %s\n", msg);
    fprintf(stderr, "usage: qrnn-run lm MODEL.int.safetensors [--threads N] [--isa auto|scalar|avx2|avx512vnni] "
                    "[--shift packed|int8] [--ids] [--logits FILE] < tokens.txt\n"
                    "       qrnn-run asr MODEL.int.safetensors [--threads N] [--isa ...] [--shift ...] [--bos ID] "
                    "[--eos ID] [--max-len N] [--ctc [--blank ID]] FEATURES.i8 ...\n");
    return 2;
}

/* greedy (or, ctc != 0, CTC best-path) decoding of each raw int8 feature file */
static int run_asr(qrnn_model *model, char **files, int count, long long bos, long long eos, long long max_len, int ctc,
                   long long blank) {
    int dim = qrnn_asr_feat_dim(model), status = 0;
    int64_t *tokens = NULL;
    for (int f = 0; f < count && status == 0; ++f) {
        FILE *fp = fopen(files[f], "rb");
        if (!fp) {
            fprintf(stderr, "qrnn-run: cannot read %s\n", files[f]);
            status = 1;
            break;
        }
        fseek(fp, 0, SEEK_END);
        long size = ftell(fp);
        rewind(fp);
        int8_t *feats = size > 0 ? malloc((size_t)size) : NULL;
        if (size <= 0 || size % dim || !feats || fread(feats, 1, (size_t)size, fp) != (size_t)size) {
            fprintf(stderr, "qrnn-run: %s holds %ld bytes, not frames x %d int8 features\n", files[f], size, dim);
            status = 1;
        }
        fclose(fp);
        qrnn_utterance *u = status ? NULL : qrnn_asr_encode(model, feats, (int)(size / dim), dim);
        int capacity = u && ctc ? qrnn_asr_frames(u) : (int)max_len; /* a best path has at most one token a frame */
        free(tokens);
        tokens = u ? malloc((size_t)(capacity > 0 ? capacity : 1) * sizeof(int64_t)) : NULL;
        if (u && !tokens) {
            fprintf(stderr, "qrnn-run: %s: out of memory for %d tokens\n", files[f], capacity);
            status = 1;
        }
        int n = !tokens ? -1
                : ctc   ? qrnn_asr_ctc_best_path(model, u, blank, tokens)
                        : qrnn_asr_greedy(model, u, bos, eos, (int)max_len, tokens);
        if (status == 0 && n < 0) {
            fprintf(stderr, "qrnn-run: %s: %s\n", files[f], qrnn_last_error());
            status = 1;
        }
        if (status == 0) {
            printf("%s", files[f]);
            for (int i = 0; i < n; ++i) printf(" %lld", (long long)tokens[i]);
            printf("\n");
        }
        qrnn_utterance_free(u);
        free(feats);
    }
    free(tokens);
    return status;
}

static int parse_int(const char *s, long long *out) {
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end) return -1;
    *out = v;
    return 0;
}

/* all whitespace-separated tokens of stdin as ids */
static int64_t *read_tokens(const qrnn_model *model, int ids, int64_t *count) {
    size_t cap = 1024, n = 0;
    int64_t *out = malloc(cap * sizeof *out);
    char word[4096];
    int unk = qrnn_lm_token_id(model, "<unk>");
    while (out && scanf("%4095s", word) == 1) {
        long long id;
        if (ids) {
            if (parse_int(word, &id)) {
                fprintf(stderr, "qrnn-run: %s is not an integer token id (drop --ids to read words)\n", word);
                free(out);
                return NULL;
            }
            if (id < 0 || id >= qrnn_lm_vocab_size(model)) {
                fprintf(stderr, "qrnn-run: token id %s is outside the vocabulary [0, %d)\n", word, qrnn_lm_vocab_size(model));
                free(out);
                return NULL;
            }
        } else {
            id = qrnn_lm_token_id(model, word);
            if (id < 0) id = unk;
            if (id < 0) {
                fprintf(stderr, "qrnn-run: the word %s is not in the vocabulary, which has no <unk>\n", word);
                free(out);
                return NULL;
            }
        }
        if (n == cap) {
            int64_t *grown = realloc(out, 2 * cap * sizeof *out);
            if (!grown) break;
            out = grown, cap *= 2;
        }
        out[n++] = id;
    }
    *count = (int64_t)n;
    return out;
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[1], "lm") && strcmp(argv[1], "asr")))
        return usage(argc >= 2 ? "the first argument is the model kind: lm or asr" : NULL);
    const int asr = !strcmp(argv[1], "asr");
    const char *path = argv[2], *logits_path = NULL;
    long long threads = 1, bos = 1, eos = 2, max_len = 200, blank = 0;
    int isa = QRNN_ISA_AUTO, flags = 0, ids = 0, nfiles = 0, ctc = 0;
    char **files = calloc((size_t)argc, sizeof(char *));
    for (int a = 3; a < argc; ++a) {
        const char *arg = argv[a], *val = a + 1 < argc ? argv[a + 1] : NULL;
        long long *number = !strcmp(arg, "--bos") ? &bos : !strcmp(arg, "--eos") ? &eos : !strcmp(arg, "--max-len") ? &max_len
                          : !strcmp(arg, "--blank") ? &blank : NULL;
        if (!strcmp(arg, "--ids")) ids = 1;
        else if (asr && !strcmp(arg, "--ctc")) ctc = 1;
        else if (asr && number && val) {
            if (parse_int(val, number) || *number < 0) return usage("--bos, --eos, --max-len and --blank need integers >= 0");
            ++a;
        } else if (asr && arg[0] != '-') files[nfiles++] = argv[a];
        else if (!strcmp(arg, "--threads") && val) {
            if (parse_int(val, &threads) || threads < 1 || threads > 256) return usage("--threads needs an integer between 1 and 256");
            ++a;
        } else if (!strcmp(arg, "--isa") && val) {
            const char *names[] = {"auto", "scalar", "avx2", "avx512vnni"};
            isa = -1;
            for (int i = 0; i < 4; ++i)
                if (!strcmp(val, names[i])) isa = i;
            if (isa < 0) return usage("--isa is one of auto, scalar, avx2, avx512vnni");
            ++a;
        } else if (!strcmp(arg, "--shift") && val) {
            if (strcmp(val, "packed") && strcmp(val, "int8")) return usage("--shift is packed or int8");
            flags = strcmp(val, "int8") ? 0 : QRNN_LOAD_SHIFT_AS_INT8;
            ++a;
        } else if (!strcmp(arg, "--logits") && val) {
            logits_path = val;
            ++a;
        } else {
            char msg[300];
            snprintf(msg, sizeof msg, "unknown or incomplete option %.200s", arg);
            return usage(msg);
        }
    }
    qrnn_model *model = qrnn_load(path, flags);
    if (!model) {
        fprintf(stderr, "qrnn-run: %s\n", qrnn_last_error());
        return 1;
    }
    if (qrnn_set_threads(model, (int)threads) || qrnn_set_isa(model, isa)) {
        fprintf(stderr, "qrnn-run: %s\n", qrnn_last_error());
        qrnn_free(model);
        return 1;
    }
    if (strcmp(qrnn_kind(model), argv[1])) {
        fprintf(stderr, "qrnn-run: %s is a kind %s checkpoint: run it with qrnn-run %s\n", path, qrnn_kind(model), qrnn_kind(model));
        qrnn_free(model);
        return 1;
    }
    if (asr) {
        int status = nfiles ? run_asr(model, files, nfiles, bos, eos, max_len, ctc, blank) : usage("give one or more FEATURES.i8 files");
        free(files);
        qrnn_free(model);
        return status;
    }
    free(files);
    int64_t count = 0;
    int64_t *tokens = read_tokens(model, ids, &count);
    int vocab = qrnn_lm_vocab_size(model);
    int32_t *logits = malloc((size_t)vocab * sizeof(int32_t));
    qrnn_session *session = qrnn_lm_session(model, 1);
    FILE *dump = logits_path ? fopen(logits_path, "wb") : NULL;
    int status = 0;
    if (!tokens || !logits || !session || (logits_path && !dump)) {
        if (logits_path && !dump) fprintf(stderr, "qrnn-run: cannot write %s\n", logits_path);
        else if (tokens && !session) fprintf(stderr, "qrnn-run: %s\n", qrnn_last_error());
        status = 1;
    }
    int64_t hits = 0;
    for (int64_t t = 0; status == 0 && t < count; ++t) {
        if (qrnn_lm_step(session, &tokens[t], logits)) {
            fprintf(stderr, "qrnn-run: token %lld: %s\n", (long long)t, qrnn_last_error());
            status = 1;
            break;
        }
        int best = 0;
        for (int v = 1; v < vocab; ++v)
            if (logits[v] > logits[best]) best = v;
        const char *word = qrnn_lm_token(model, best);
        printf("%lld\t%lld\t%d\t%s\t%d\t", (long long)t, (long long)tokens[t], best, word ? word : "-", logits[best]);
        if (t + 1 < count && tokens[t + 1] >= 0 && tokens[t + 1] < vocab) {
            printf("%d\n", logits[tokens[t + 1]]);
            hits += best == tokens[t + 1];
        } else {
            printf("-\n");
        }
        if (dump && fwrite(logits, sizeof(int32_t), (size_t)vocab, dump) != (size_t)vocab) {
            fprintf(stderr, "qrnn-run: writing %s failed\n", logits_path);
            status = 1;
        }
    }
    if (status == 0)
        fprintf(stderr, "qrnn-run: %lld tokens, next-token argmax right %lld times, logits at 2^-%d, kernels %s, %lld threads\n",
                (long long)count, (long long)hits, qrnn_lm_logit_frac(model), qrnn_isa_name(qrnn_get_isa(model)), threads);
    if (dump && fclose(dump) != 0 && status == 0) {
        fprintf(stderr, "qrnn-run: writing %s failed\n", logits_path);
        status = 1;
    }
    qrnn_session_free(session);
    free(logits);
    free(tokens);
    qrnn_free(model);
    return status;
}
