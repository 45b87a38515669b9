/* Reading an integer checkpoint: safetensors framing, its JSON header and metadata, SHA-256 checks.
 *
 * A safetensors file is an 8-byte little-endian header length, a JSON header ({name: {dtype, shape,
 * data_offsets}}, "__metadata__": {"qrnn_speech": "<JSON text>"}) and the tensor bytes. Every length,
 * offset, shape and dtype is checked before use; the metadata's "sha256" digests (format version 2, the only
 * one read) are verified for every tensor and for the metadata itself, so bytes changed in place are refused.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrnn_internal.h"

static _Thread_local char last_error[512];

void qrnn_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
}

const char *qrnn_last_error(void) { return last_error; }

/* ---- JSON ------------------------------------------------------------------------------------------ */

typedef struct {
    const char *s;
    size_t len, pos;
    char *err;
    size_t errlen;
    int depth;
} jparser;

static int jfail(jparser *p, const char *what) {
    if (p->err && p->err[0] == 0) snprintf(p->err, p->errlen, "%s at byte %zu", what, p->pos);
    return -1;
}

static void jskip(jparser *p) {
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r' || p->s[p->pos] == '\t'))
        p->pos++;
}

static int jvalue(jparser *p, qjson *out);

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int put_utf8(char *dst, size_t *n, unsigned cp) {
    if (cp < 0x80) dst[(*n)++] = (char)cp;
    else if (cp < 0x800) dst[(*n)++] = (char)(0xC0 | (cp >> 6)), dst[(*n)++] = (char)(0x80 | (cp & 0x3F));
    else if (cp < 0x10000)
        dst[(*n)++] = (char)(0xE0 | (cp >> 12)), dst[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F)),
        dst[(*n)++] = (char)(0x80 | (cp & 0x3F));
    else
        dst[(*n)++] = (char)(0xF0 | (cp >> 18)), dst[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F)),
        dst[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F)), dst[(*n)++] = (char)(0x80 | (cp & 0x3F));
    return 0;
}

static int jhex4(jparser *p, unsigned *cp) {
    if (p->pos + 4 > p->len) return jfail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
        int h = hexval(p->s[p->pos + i]);
        if (h < 0) return jfail(p, "bad \\u escape");
        v = v * 16 + (unsigned)h;
    }
    p->pos += 4;
    *cp = v;
    return 0;
}

static int jstring(jparser *p, char **out) {
    if (p->pos >= p->len || p->s[p->pos] != '"') return jfail(p, "expected a string");
    p->pos++;
    size_t start = p->pos, cap = 0;
    while (p->pos < p->len && p->s[p->pos] != '"') { /* upper bound of the decoded size */
        if (p->s[p->pos] == '\\') p->pos++;
        p->pos++;
    }
    if (p->pos >= p->len) return jfail(p, "unterminated string");
    cap = p->pos - start + 1;
    p->pos = start;
    char *dst = malloc(cap + 4);
    if (!dst) return jfail(p, "out of memory");
    size_t n = 0;
    while (p->s[p->pos] != '"') {
        char c = p->s[p->pos++];
        if ((unsigned char)c < 0x20) {
            free(dst);
            return jfail(p, "control character in a string");
        }
        if (c != '\\') {
            dst[n++] = c;
            continue;
        }
        char e = p->s[p->pos++];
        unsigned cp;
        switch (e) {
        case '"': dst[n++] = '"'; break;
        case '\\': dst[n++] = '\\'; break;
        case '/': dst[n++] = '/'; break;
        case 'b': dst[n++] = '\b'; break;
        case 'f': dst[n++] = '\f'; break;
        case 'n': dst[n++] = '\n'; break;
        case 'r': dst[n++] = '\r'; break;
        case 't': dst[n++] = '\t'; break;
        case 'u':
            if (jhex4(p, &cp)) {
                free(dst);
                return -1;
            }
            if (cp >= 0xD800 && cp < 0xDC00 && p->pos + 6 <= p->len && p->s[p->pos] == '\\' && p->s[p->pos + 1] == 'u') {
                unsigned lo;
                p->pos += 2;
                if (jhex4(p, &lo)) {
                    free(dst);
                    return -1;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(dst, &n, cp);
            break;
        default: free(dst); return jfail(p, "bad escape in a string");
        }
    }
    p->pos++;
    dst[n] = 0;
    *out = dst;
    return 0;
}

static int jnumber(jparser *p, qjson *out) {
    size_t start = p->pos;
    int integer = 1, digits = 0;
    if (p->s[p->pos] == '-') p->pos++;
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c >= '0' && c <= '9') digits++;
        else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') integer = 0;
        else break;
        p->pos++;
    }
    if (!digits) return jfail(p, "bad number");
    size_t n = p->pos - start;
    out->type = QJ_NUMBER;
    out->str = malloc(n + 1);
    if (!out->str) return jfail(p, "out of memory");
    memcpy(out->str, p->s + start, n);
    out->str[n] = 0;
    out->is_integer = 0;
    if (integer && n <= 19) { /* the value when it is an integer that fits int64 */
        const char *q = out->str;
        int neg = *q == '-';
        if (neg) q++;
        uint64_t v = 0;
        for (; *q; ++q) v = v * 10 + (uint64_t)(*q - '0');
        if (v <= (uint64_t)INT64_MAX) out->integer = neg ? -(int64_t)v : (int64_t)v, out->is_integer = 1;
    }
    return 0;
}

static int jcontainer(jparser *p, qjson *out, int object) {
    char close = object ? '}' : ']';
    p->pos++;
    out->type = object ? QJ_OBJECT : QJ_ARRAY;
    int cap = 0;
    jskip(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return 0;
    }
    for (;;) {
        if (out->count == cap) {
            cap = cap ? 2 * cap : 4;
            qjson *items = realloc(out->items, (size_t)cap * sizeof(qjson));
            if (!items) return jfail(p, "out of memory");
            out->items = items;
            if (object) {
                char **keys = realloc(out->keys, (size_t)cap * sizeof(char *));
                if (!keys) return jfail(p, "out of memory");
                out->keys = keys;
            }
        }
        memset(&out->items[out->count], 0, sizeof(qjson));
        if (object) {
            jskip(p);
            out->keys[out->count] = NULL;
            if (jstring(p, &out->keys[out->count])) return -1;
            jskip(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                free(out->keys[out->count]);
                return jfail(p, "expected ':'");
            }
            p->pos++;
        }
        out->count++;
        if (jvalue(p, &out->items[out->count - 1])) return -1;
        jskip(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return 0;
        }
        return jfail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int jvalue(jparser *p, qjson *out) {
    memset(out, 0, sizeof *out);
    if (++p->depth > 64) return jfail(p, "nested too deeply");
    jskip(p);
    if (p->pos >= p->len) return jfail(p, "unexpected end");
    char c = p->s[p->pos];
    int rc;
    if (c == '{' || c == '[') rc = jcontainer(p, out, c == '{');
    else if (c == '"') {
        out->type = QJ_STRING;
        rc = jstring(p, &out->str);
    } else if (c == '-' || (c >= '0' && c <= '9')) rc = jnumber(p, out);
    else if (p->len - p->pos >= 4 && !strncmp(p->s + p->pos, "null", 4)) out->type = QJ_NULL, p->pos += 4, rc = 0;
    else if (p->len - p->pos >= 4 && !strncmp(p->s + p->pos, "true", 4))
        out->type = QJ_BOOL, out->boolean = 1, p->pos += 4, rc = 0;
    else if (p->len - p->pos >= 5 && !strncmp(p->s + p->pos, "false", 5)) out->type = QJ_BOOL, p->pos += 5, rc = 0;
    else rc = jfail(p, "unexpected character");
    p->depth--;
    return rc;
}

static void qjson_clear(qjson *v) {
    for (int i = 0; i < v->count; ++i) {
        qjson_clear(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
}

void qjson_free(qjson *v) {
    if (!v) return;
    qjson_clear(v);
    free(v);
}

qjson *qjson_parse(const char *text, size_t len, char *err, size_t errlen) {
    jparser p = {text, len, 0, err, errlen, 0};
    if (err && errlen) err[0] = 0;
    qjson *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    if (jvalue(&p, v) == 0) {
        jskip(&p);
        if (p.pos == p.len) return v;
        jfail(&p, "trailing characters");
    }
    qjson_free(v);
    return NULL;
}

const qjson *qjson_get(const qjson *obj, const char *key) {
    if (!obj || obj->type != QJ_OBJECT) return NULL;
    for (int i = 0; i < obj->count; ++i)
        if (!strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------------------------------- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(uint32_t h[8], const uint8_t *b) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 | (uint32_t)b[4 * i + 2] << 8 | b[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
        uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
        hh = g, g = f, f = e, e = d + t1, d = c, c = bb, bb = a, a = t1 + t2;
    }
    h[0] += a, h[1] += bb, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

void qrnn_sha256(const uint8_t *data, size_t len, uint8_t out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t full = len / 64 * 64;
    for (size_t i = 0; i < full; i += 64) sha_block(h, data + i);
    uint8_t tail[128] = {0};
    size_t rest = len - full;
    memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; ++i) tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < tail_len; i += 64) sha_block(h, tail + i);
    for (int i = 0; i < 8; ++i)
        out[4 * i] = (uint8_t)(h[i] >> 24), out[4 * i + 1] = (uint8_t)(h[i] >> 16), out[4 * i + 2] = (uint8_t)(h[i] >> 8),
        out[4 * i + 3] = (uint8_t)h[i];
}

/* ---- safetensors ------------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    int dtype, size;
} DTYPES[] = {{"I8", QDT_I8, 1}, {"U8", QDT_U8, 1}, {"I16", QDT_I16, 2}, {"I32", QDT_I32, 4}, {"I64", QDT_I64, 8},
              {"BOOL", QDT_BOOL, 1}};

#define FIX " (export the model again: docs/engine.md)"

void qrnn_file_close(qrnn_file *f) {
    for (int i = 0; i < f->count; ++i) free(f->tensors[i].name);
    free(f->tensors);
    qjson_free(f->header);
    qjson_free(f->meta);
    free(f->bytes);
    memset(f, 0, sizeof *f);
}

const qrnn_tensor *qrnn_file_tensor(const qrnn_file *f, const char *name) {
    for (int i = 0; i < f->count; ++i)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static int fail_file(qrnn_file *f, const char *path, const char *what) {
    qrnn_set_error("%s: %s" FIX, path, what);
    qrnn_file_close(f);
    return -1;
}

/* ---- canonical JSON: json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True) ------- */

typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} strbuf;

static void put(strbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->data = grown, b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void put_escape(strbuf *b, unsigned cp) {
    char tmp[16];
    snprintf(tmp, sizeof tmp, "\\u%04x", cp);
    put(b, tmp, 6);
}

static void put_string(strbuf *b, const char *s) {
    put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned cp = *p, extra = 0;
        if (cp >= 0xF0) cp &= 0x07, extra = 3;
        else if (cp >= 0xE0) cp &= 0x0F, extra = 2;
        else if (cp >= 0xC0) cp &= 0x1F, extra = 1;
        ++p;
        for (unsigned i = 0; i < extra && *p; ++i, ++p) cp = (cp << 6) | (*p & 0x3F);
        const char *short_escape = cp == '"' ? "\\\"" : cp == '\\' ? "\\\\" : cp == '\n' ? "\\n" : cp == '\r' ? "\\r"
                                 : cp == '\t' ? "\\t" : cp == '\b' ? "\\b" : cp == '\f' ? "\\f" : NULL;
        if (short_escape) put(b, short_escape, 2);
        else if (cp >= 0x20 && cp < 0x7F) {
            char c = (char)cp;
            put(b, &c, 1);
        } else if (cp >= 0x10000) { /* a surrogate pair, as Python writes it */
            cp -= 0x10000;
            put_escape(b, 0xD800 + (cp >> 10));
            put_escape(b, 0xDC00 + (cp & 0x3FF));
        } else {
            put_escape(b, cp);
        }
    }
    put(b, "\"", 1);
}

static void put_canonical(strbuf *b, const qjson *v) {
    switch (v->type) {
    case QJ_NULL: put(b, "null", 4); break;
    case QJ_BOOL: v->boolean ? put(b, "true", 4) : put(b, "false", 5); break;
    case QJ_NUMBER: put(b, v->str, strlen(v->str)); break; /* integers: as written; the tree holds no floats */
    case QJ_STRING: put_string(b, v->str); break;
    case QJ_ARRAY:
        put(b, "[", 1);
        for (int i = 0; i < v->count; ++i) {
            if (i) put(b, ",", 1);
            put_canonical(b, &v->items[i]);
        }
        put(b, "]", 1);
        break;
    default: { /* objects: keys in code point order, which is UTF-8 byte order */
        int *order = malloc((size_t)(v->count ? v->count : 1) * sizeof(int));
        if (!order) {
            b->failed = 1;
            return;
        }
        for (int i = 0; i < v->count; ++i) order[i] = i;
        for (int i = 1; i < v->count; ++i)
            for (int j = i; j > 0 && strcmp(v->keys[order[j - 1]], v->keys[order[j]]) > 0; --j) {
                int t = order[j];
                order[j] = order[j - 1], order[j - 1] = t;
            }
        put(b, "{", 1);
        for (int i = 0; i < v->count; ++i) {
            if (i) put(b, ",", 1);
            put_string(b, v->keys[order[i]]);
            put(b, ":", 1);
            put_canonical(b, &v->items[order[i]]);
        }
        put(b, "}", 1);
        free(order);
    }
    }
}

static int hex_equal(const char *hex, const uint8_t digest[32]) {
    if (strlen(hex) != 64) return 0;
    for (int b = 0; b < 32; ++b) {
        int hi = hexval(hex[2 * b]), lo = hexval(hex[2 * b + 1]);
        if (hi < 0 || lo < 0 || (hi << 4 | lo) != digest[b]) return 0;
    }
    return 1;
}

static int check_digests(qrnn_file *f, const char *path) {
    const qjson *digests = qjson_get(f->meta, "sha256");
    if (!digests) return fail_file(f, path, "metadata has no sha256 digests");
    if (digests->type != QJ_OBJECT) return fail_file(f, path, "metadata sha256 is not an object");
    const qjson *meta_digest = qjson_get(digests, "__metadata__");
    if (!meta_digest || meta_digest->type != QJ_STRING) return fail_file(f, path, "metadata has no __metadata__ digest");
    qjson covered = *f->meta; /* every metadata key but the digests themselves */
    covered.items = malloc((size_t)f->meta->count * sizeof(qjson));
    covered.keys = malloc((size_t)f->meta->count * sizeof(char *));
    covered.count = 0;
    if (!covered.items || !covered.keys) {
        free(covered.items), free(covered.keys);
        return fail_file(f, path, "out of memory checking the metadata digest");
    }
    for (int i = 0; i < f->meta->count; ++i)
        if (strcmp(f->meta->keys[i], "sha256")) {
            covered.items[covered.count] = f->meta->items[i];
            covered.keys[covered.count++] = f->meta->keys[i];
        }
    strbuf text = {0};
    put_canonical(&text, &covered);
    free(covered.items), free(covered.keys);
    uint8_t got[32];
    if (!text.failed) qrnn_sha256((const uint8_t *)text.data, text.len, got);
    free(text.data);
    if (text.failed) return fail_file(f, path, "out of memory checking the metadata digest");
    if (!hex_equal(meta_digest->str, got))
        return fail_file(f, path, "metadata does not match its sha256 digest (the file was changed after export)");
    for (int i = 0; i < f->count; ++i) {
        const qjson *want = qjson_get(digests, f->tensors[i].name);
        if (!want || want->type != QJ_STRING || strlen(want->str) != 64) {
            char msg[300];
            snprintf(msg, sizeof msg, "no sha256 digest for tensor %.200s", f->tensors[i].name);
            return fail_file(f, path, msg);
        }
        uint8_t got[32];
        qrnn_sha256(f->tensors[i].data, f->tensors[i].nbytes, got);
        if (!hex_equal(want->str, got)) {
            char msg[300];
            snprintf(msg, sizeof msg, "tensor %.200s does not match its sha256 digest (the file was changed or damaged)",
                     f->tensors[i].name);
            return fail_file(f, path, msg);
        }
    }
    return 0;
}

int qrnn_file_open(qrnn_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->path = path;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        qrnn_set_error("%s: cannot open (%s)", path, strerror(errno));
        return -1;
    }
    if (fseek(fp, 0, SEEK_END) != 0) {
        fclose(fp);
        return fail_file(f, path, "cannot seek (not a regular file?)");
    }
    long size = ftell(fp);
    rewind(fp);
    if (size < 8) {
        fclose(fp);
        return fail_file(f, path, "too short to be a safetensors file (truncated?)");
    }
    f->size = (size_t)size;
    f->bytes = malloc(f->size + 1);
    if (!f->bytes || fread(f->bytes, 1, f->size, fp) != f->size) {
        fclose(fp);
        return fail_file(f, path, "could not read the file");
    }
    fclose(fp);
    uint64_t header_len = 0;
    for (int i = 0; i < 8; ++i) header_len |= (uint64_t)f->bytes[i] << (8 * i);
    if (header_len > f->size - 8) return fail_file(f, path, "header length exceeds the file (truncated or not safetensors)");
    char err[160];
    f->header = qjson_parse((const char *)f->bytes + 8, (size_t)header_len, err, sizeof err);
    if (!f->header || f->header->type != QJ_OBJECT) {
        char msg[220];
        snprintf(msg, sizeof msg, "unreadable safetensors header (%s)", f->header ? "not an object" : err);
        return fail_file(f, path, msg);
    }
    const uint8_t *data = f->bytes + 8 + header_len;
    size_t data_len = f->size - 8 - header_len;
    const qjson *meta = qjson_get(f->header, "__metadata__");
    const qjson *raw = qjson_get(meta, "qrnn_speech");
    if (!raw || raw->type != QJ_STRING) return fail_file(f, path, "a safetensors file without qrnn_speech metadata: not an integer checkpoint");
    f->meta = qjson_parse(raw->str, strlen(raw->str), err, sizeof err);
    if (!f->meta || f->meta->type != QJ_OBJECT) {
        char msg[220];
        snprintf(msg, sizeof msg, "unreadable qrnn_speech metadata (%s)", f->meta ? "not an object" : err);
        return fail_file(f, path, msg);
    }
    f->tensors = calloc((size_t)f->header->count, sizeof(qrnn_tensor));
    if (!f->tensors) return fail_file(f, path, "out of memory");
    for (int i = 0; i < f->header->count; ++i) {
        if (!strcmp(f->header->keys[i], "__metadata__")) continue;
        const qjson *entry = &f->header->items[i];
        const qjson *dtype = qjson_get(entry, "dtype"), *shape = qjson_get(entry, "shape"),
                    *offsets = qjson_get(entry, "data_offsets");
        char msg[300];
        if (!dtype || dtype->type != QJ_STRING || !shape || shape->type != QJ_ARRAY || !offsets ||
            offsets->type != QJ_ARRAY || offsets->count != 2 || shape->count > 8) {
            snprintf(msg, sizeof msg, "malformed header entry for tensor %.200s", f->header->keys[i]);
            return fail_file(f, path, msg);
        }
        qrnn_tensor *t = &f->tensors[f->count];
        int size = 0;
        for (size_t d = 0; d < sizeof DTYPES / sizeof DTYPES[0]; ++d)
            if (!strcmp(dtype->str, DTYPES[d].name)) t->dtype = DTYPES[d].dtype, size = DTYPES[d].size;
        if (!size) {
            snprintf(msg, sizeof msg, "tensor %.200s has dtype %.20s; integer checkpoints hold I8/U8/I16/I32/I64 only",
                     f->header->keys[i], dtype->str);
            return fail_file(f, path, msg);
        }
        t->ndim = shape->count;
        t->numel = 1;
        for (int d = 0; d < shape->count; ++d) {
            const qjson *dim = &shape->items[d];
            if (dim->type != QJ_NUMBER || !dim->is_integer || dim->integer < 0 || dim->integer > ((int64_t)1 << 40)) {
                snprintf(msg, sizeof msg, "tensor %.200s has a bad shape", f->header->keys[i]);
                return fail_file(f, path, msg);
            }
            t->shape[d] = dim->integer;
            t->numel *= dim->integer;
        }
        const qjson *b = &offsets->items[0], *e = &offsets->items[1];
        if (b->type != QJ_NUMBER || e->type != QJ_NUMBER || !b->is_integer || !e->is_integer || b->integer < 0 ||
            e->integer < b->integer || (uint64_t)e->integer > data_len || e->integer - b->integer != t->numel * size) {
            snprintf(msg, sizeof msg, "tensor %.200s: its bytes do not fit the file or its shape (truncated?)",
                     f->header->keys[i]);
            return fail_file(f, path, msg);
        }
        t->data = data + b->integer;
        t->nbytes = (size_t)(e->integer - b->integer);
        t->name = strdup(f->header->keys[i]);
        f->count++;
    }
    const qjson *format = qjson_get(f->meta, "format"), *version = qjson_get(f->meta, "version");
    if (!format || format->type != QJ_STRING || strcmp(format->str, "qrnn-speech-integer"))
        return fail_file(f, path, "metadata format is not qrnn-speech-integer");
    if (!version || !version->is_integer || version->integer != 2) { /* version 1 had no digests to check */
        qrnn_set_error("%s: integer checkpoint version %s is not supported by this runtime (version 2)" FIX, path,
                       version && version->str ? version->str : "?");
        qrnn_file_close(f);
        return -1;
    }
    return check_digests(f, path);
}
