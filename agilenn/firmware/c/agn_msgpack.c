/* agn_msgpack.c: msgpack writer, bounds-checked reader, and the protocol envelope. */
#include "agn_msgpack.h"

/* ------------------------------------------------------------------ writer */
void agn_mp_writer_init(agn_mp_writer_t *w, uint8_t *buf, uint32_t cap) {
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = 0;
}

static void agn_mp_put(agn_mp_writer_t *w, const uint8_t *bytes, uint32_t n) {
    uint32_t i;
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = 1;
        return;
    }
    for (i = 0; i < n; i++) w->buf[w->len + i] = bytes[i];
    w->len += n;
}

static void agn_mp_put_head(agn_mp_writer_t *w, uint8_t marker, uint32_t value, uint32_t size) {
    uint8_t head[5];
    uint32_t i;
    head[0] = marker;
    for (i = 0; i < size; i++) head[1 + i] = (uint8_t)(value >> (8 * (size - 1 - i)));
    agn_mp_put(w, head, 1 + size);
}

void agn_mp_write_array(agn_mp_writer_t *w, uint32_t count) {
    if (count < 16) agn_mp_put_head(w, (uint8_t)(0x90 | count), 0, 0);
    else if (count < 65536) agn_mp_put_head(w, 0xdc, count, 2);
    else agn_mp_put_head(w, 0xdd, count, 4);
}

void agn_mp_write_map(agn_mp_writer_t *w, uint32_t count) {
    if (count < 16) agn_mp_put_head(w, (uint8_t)(0x80 | count), 0, 0);
    else if (count < 65536) agn_mp_put_head(w, 0xde, count, 2);
    else agn_mp_put_head(w, 0xdf, count, 4);
}

void agn_mp_write_uint(agn_mp_writer_t *w, uint32_t value) {
    if (value < 128) agn_mp_put_head(w, (uint8_t)value, 0, 0);
    else if (value < 256) agn_mp_put_head(w, 0xcc, value, 1);
    else if (value < 65536) agn_mp_put_head(w, 0xcd, value, 2);
    else agn_mp_put_head(w, 0xce, value, 4);
}

void agn_mp_write_bool(agn_mp_writer_t *w, int value) { agn_mp_put_head(w, value ? 0xc3 : 0xc2, 0, 0); }

void agn_mp_write_str(agn_mp_writer_t *w, const uint8_t *text, uint32_t length) {
    if (length < 32) agn_mp_put_head(w, (uint8_t)(0xa0 | length), 0, 0);
    else if (length < 256) agn_mp_put_head(w, 0xd9, length, 1);
    else if (length < 65536) agn_mp_put_head(w, 0xda, length, 2);
    else agn_mp_put_head(w, 0xdb, length, 4);
    agn_mp_put(w, text, length);
}

void agn_mp_write_cstr(agn_mp_writer_t *w, const char *text) {
    uint32_t n = 0;
    while (text[n] != '\0') n++;
    agn_mp_write_str(w, (const uint8_t *)text, n);
}

void agn_mp_write_bin(agn_mp_writer_t *w, const uint8_t *data, uint32_t length) {
    if (length < 256) agn_mp_put_head(w, 0xc4, length, 1);
    else if (length < 65536) agn_mp_put_head(w, 0xc5, length, 2);
    else agn_mp_put_head(w, 0xc6, length, 4);
    agn_mp_put(w, data, length);
}

/* ------------------------------------------------------------------ reader */
void agn_mp_reader_init(agn_mp_reader_t *r, const uint8_t *data, uint32_t length) {
    r->data = data;
    r->length = length;
    r->position = 0;
}

static int agn_mp_have(const agn_mp_reader_t *r, uint32_t n) { return n <= r->length - r->position; }

static int agn_mp_big_endian(agn_mp_reader_t *r, uint32_t size, uint64_t *value) {
    uint32_t i;
    uint64_t v = 0;
    if (!agn_mp_have(r, size)) return -1;
    for (i = 0; i < size; i++) v = (v << 8) | r->data[r->position + i];
    r->position += size;
    *value = v;
    return 0;
}

static int agn_mp_marker(agn_mp_reader_t *r, uint8_t *marker) {
    if (!agn_mp_have(r, 1)) return -1;
    *marker = r->data[r->position++];
    return 0;
}

static int agn_mp_container(agn_mp_reader_t *r, uint32_t *count, uint8_t fix, uint8_t m16, uint8_t m32) {
    uint8_t marker;
    uint64_t v;
    uint32_t start = r->position;
    if (agn_mp_marker(r, &marker)) return -1;
    if ((marker & 0xF0) == fix) {
        *count = marker & 0x0F;
        return 0;
    }
    if (marker == m16 || marker == m32) {
        if (agn_mp_big_endian(r, marker == m16 ? 2 : 4, &v)) return -1;
        *count = (uint32_t)v;
        return 0;
    }
    r->position = start;
    return -1;
}

int agn_mp_read_array(agn_mp_reader_t *r, uint32_t *count) { return agn_mp_container(r, count, 0x90, 0xdc, 0xdd); }

int agn_mp_read_map(agn_mp_reader_t *r, uint32_t *count) { return agn_mp_container(r, count, 0x80, 0xde, 0xdf); }

/* An int of any format: *negative set when below zero (then *value holds its two's complement). */
static int agn_mp_read_int(agn_mp_reader_t *r, uint64_t *value, int *negative) {
    uint8_t marker;
    uint64_t v;
    if (agn_mp_marker(r, &marker)) return -1;
    *negative = 0;
    if (marker < 0x80) {
        *value = marker;
        return 0;
    }
    if (marker >= 0xe0) {
        *value = (uint64_t)(int64_t)(int8_t)marker;
        *negative = 1;
        return 0;
    }
    switch (marker) {
    case 0xcc: return agn_mp_big_endian(r, 1, value);
    case 0xcd: return agn_mp_big_endian(r, 2, value);
    case 0xce: return agn_mp_big_endian(r, 4, value);
    case 0xcf: return agn_mp_big_endian(r, 8, value);
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        uint32_t size = 1u << (marker - 0xd0);
        if (agn_mp_big_endian(r, size, &v)) return -1;
        if (size < 8 && (v >> (8 * size - 1)) & 1u) v |= ~(uint64_t)0 << (8 * size); /* sign-extend */
        *value = v;
        *negative = (int)(v >> 63);
        return 0;
    }
    default: return -1;
    }
}

int agn_mp_read_uint(agn_mp_reader_t *r, uint64_t *value) {
    int negative;
    if (agn_mp_read_int(r, value, &negative)) return -1;
    return negative ? -1 : 0;
}

int agn_mp_read_bool(agn_mp_reader_t *r, int *value) {
    uint8_t marker;
    if (agn_mp_marker(r, &marker)) return -1;
    if (marker != 0xc2 && marker != 0xc3) return -1;
    *value = marker == 0xc3;
    return 0;
}

static int agn_mp_blob(agn_mp_reader_t *r, const uint8_t **data, uint32_t *length, int is_str) {
    uint8_t marker;
    uint64_t n;
    if (agn_mp_marker(r, &marker)) return -1;
    if (is_str && (marker & 0xE0) == 0xa0) {
        n = marker & 0x1F;
    } else if (is_str ? (marker >= 0xd9 && marker <= 0xdb) : (marker >= 0xc4 && marker <= 0xc6)) {
        uint32_t size = 1u << (marker - (is_str ? 0xd9 : 0xc4));
        if (agn_mp_big_endian(r, size, &n)) return -1;
    } else {
        return -1;
    }
    if (!agn_mp_have(r, (uint32_t)n) || n > 0xFFFFFFFFu) return -1;
    *data = r->data + r->position;
    *length = (uint32_t)n;
    r->position += (uint32_t)n;
    return 0;
}

int agn_mp_read_str(agn_mp_reader_t *r, const uint8_t **text, uint32_t *length) { return agn_mp_blob(r, text, length, 1); }

int agn_mp_read_bin(agn_mp_reader_t *r, const uint8_t **data, uint32_t *length) { return agn_mp_blob(r, data, length, 0); }

int agn_mp_read_number(agn_mp_reader_t *r) {
    uint8_t marker;
    uint64_t v;
    int negative;
    uint32_t start = r->position;
    if (agn_mp_marker(r, &marker)) return -1;
    if (marker == 0xca) {
        if (agn_mp_big_endian(r, 4, &v)) return -1;
        return ((v >> 23) & 0xFF) == 0xFF ? -1 : 0;
    }
    if (marker == 0xcb) {
        if (agn_mp_big_endian(r, 8, &v)) return -1;
        return ((v >> 52) & 0x7FF) == 0x7FF ? -1 : 0;
    }
    r->position = start;
    return agn_mp_read_int(r, &v, &negative);
}

/* ------------------------------------------------------------------ messages */
enum { K_BOOL, K_STR, K_BIN, K_BIN_EXACT, K_UINT, K_F16, K_DURATIONS };
enum { F_ACCEPTED, F_REASON, F_UPDATE_CHUNKS, F_SESSION, F_INDEX, F_DATA, F_CRC32, F_CHUNKS, F_SHA256, F_CODE,
       F_FIRMWARE, F_CS, F_LABEL, F_TIMINGS, F_LOGITS };

typedef struct {
    uint8_t type;
    const char *key;
    uint8_t kind, required, slot;
    uint32_t max;
} agn_msg_field_t;

static const agn_msg_field_t agn_msg_fields[] = {
    {AGN_MSG_INFER_REQUEST, "p", K_BIN, 1, F_DATA, 64u * 1024u},
    {AGN_MSG_INFER_REQUEST, "l", K_F16, 0, F_LOGITS, 2048},
    {AGN_MSG_INFER_REPLY, "c", K_UINT, 1, F_LABEL, 1023},
    {AGN_MSG_INFER_REPLY, "tm", K_DURATIONS, 1, F_TIMINGS, 0},
    {AGN_MSG_INFER_REPLY, "pr", K_F16, 0, F_LOGITS, 2048},
    {AGN_MSG_INFER_REPLY, "lg", K_F16, 0, F_LOGITS, 2048},
    {AGN_MSG_ERROR, "code", K_STR, 1, F_CODE, 32},
    {AGN_MSG_ERROR, "reason", K_STR, 1, F_REASON, 512},
    {AGN_MSG_HELLO, "firmware", K_STR, 1, F_FIRMWARE, 32},
    {AGN_MSG_HELLO, "cs", K_BOOL, 0, F_CS, 0},
    {AGN_MSG_HELLO_REPLY, "accepted", K_BOOL, 1, F_ACCEPTED, 0},
    {AGN_MSG_HELLO_REPLY, "reason", K_STR, 1, F_REASON, 256},
    {AGN_MSG_HELLO_REPLY, "update_chunks", K_UINT, 1, F_UPDATE_CHUNKS, 65536},
    {AGN_MSG_HELLO_REPLY, "s", K_UINT, 0, F_SESSION, 16383},
    {AGN_MSG_WEIGHT_CHUNK, "index", K_UINT, 1, F_INDEX, 65536},
    {AGN_MSG_WEIGHT_CHUNK, "data", K_BIN, 1, F_DATA, 16384},
    {AGN_MSG_WEIGHT_CHUNK, "crc32", K_UINT, 1, F_CRC32, 0xFFFFFFFFu},
    {AGN_MSG_WEIGHT_COMMIT, "chunks", K_UINT, 1, F_CHUNKS, 65536},
    {AGN_MSG_WEIGHT_COMMIT, "sha256", K_BIN_EXACT, 1, F_SHA256, 32},
    {AGN_MSG_COMMIT_REPLY, "accepted", K_BOOL, 1, F_ACCEPTED, 0},
    {AGN_MSG_COMMIT_REPLY, "reason", K_STR, 1, F_REASON, 256},
};
#define AGN_MSG_FIELD_COUNT (sizeof(agn_msg_fields) / sizeof(agn_msg_fields[0]))

static int agn_msg_key_is(const uint8_t *key, uint32_t length, const char *name) {
    uint32_t i;
    for (i = 0; i < length; i++) {
        if (name[i] == '\0' || (uint8_t)name[i] != key[i]) return 0;
    }
    return name[length] == '\0';
}

/* A timings map: at most 16 entries, str keys of at most 16 bytes, finite numbers. */
static int agn_msg_durations(agn_mp_reader_t *r) {
    uint32_t count, i, n;
    const uint8_t *key;
    if (agn_mp_read_map(r, &count) || count > 16) return -1;
    for (i = 0; i < count; i++) {
        if (agn_mp_read_str(r, &key, &n) || n > 16 || agn_mp_read_number(r)) return -1;
    }
    return 0;
}

static int agn_msg_value(agn_mp_reader_t *r, const agn_msg_field_t *field, agn_msg_t *m) {
    const uint8_t *p = 0;
    uint32_t n = 0, i;
    uint64_t v = 0;
    int b = 0;
    switch (field->kind) {
    case K_BOOL:
        if (agn_mp_read_bool(r, &b)) return -1;
        break;
    case K_STR:
        if (agn_mp_read_str(r, &p, &n) || n > field->max) return -1;
        break;
    case K_BIN:
        if (agn_mp_read_bin(r, &p, &n) || n > field->max) return -1;
        break;
    case K_BIN_EXACT:
        if (agn_mp_read_bin(r, &p, &n) || n != field->max) return -1;
        break;
    case K_UINT:
        if (agn_mp_read_uint(r, &v) || v > field->max) return -1;
        break;
    case K_F16:
        if (agn_mp_read_bin(r, &p, &n) || n > field->max || (n & 1u)) return -1;
        for (i = 1; i < n; i += 2) {
            if ((p[i] & 0x7C) == 0x7C) return -1; /* NaN or infinity */
        }
        break;
    default:
        return agn_msg_durations(r);
    }
    switch (field->slot) {
    case F_ACCEPTED: m->accepted = (uint8_t)b; break;
    case F_REASON: m->reason = p; m->reason_len = n; break;
    case F_UPDATE_CHUNKS: m->update_chunks = (uint32_t)v; break;
    case F_SESSION: m->session = (int32_t)v; break;
    case F_INDEX: m->index = (uint32_t)v; break;
    case F_DATA: m->data = p; m->data_len = n; break;
    case F_CRC32: m->crc32 = (uint32_t)v; break;
    case F_CHUNKS: m->chunks = (uint32_t)v; break;
    case F_SHA256: m->sha256 = p; break;
    case F_CODE: m->code = p; m->code_len = n; break;
    case F_FIRMWARE: m->firmware = p; m->firmware_len = n; break;
    case F_CS: m->compact_session = (uint8_t)b; break;
    case F_LABEL: m->label = (uint32_t)v; break;
    case F_LOGITS: m->logits = p; m->logits_len = n; break;
    default: break;
    }
    return 0;
}

int agn_msg_decode(const uint8_t *data, uint32_t length, agn_msg_t *m) {
    agn_mp_reader_t r;
    uint32_t count, i, j, n, seen = 0;
    uint64_t v;
    const uint8_t *p;
    uint8_t *clear = (uint8_t *)m;
    for (i = 0; i < sizeof(*m); i++) clear[i] = 0;
    m->session = -1;
    agn_mp_reader_init(&r, data, length);
    if (agn_mp_read_array(&r, &count)) return AGN_MSG_ERR_MSGPACK;
    if (count != 7) return AGN_MSG_ERR_ENVELOPE;
    if (agn_mp_read_uint(&r, &v)) return AGN_MSG_ERR_VERSION;
    if (v != 1) return AGN_MSG_ERR_VERSION;
    if (agn_mp_read_uint(&r, &v) || v < AGN_MSG_INFER_REQUEST || v > AGN_MSG_COMMIT_REPLY) return AGN_MSG_ERR_TYPE;
    m->type = (uint8_t)v;
    if (agn_mp_read_uint(&r, &v) || v > 0xFFFFFFFFu) return AGN_MSG_ERR_ENVELOPE;
    m->request_id = (uint32_t)v;
    if (agn_mp_read_str(&r, &m->device_id, &m->device_id_len) || m->device_id_len > 64) return AGN_MSG_ERR_ENVELOPE;
    if (agn_mp_read_bin(&r, &p, &n) || (n != 0 && n != 8)) return AGN_MSG_ERR_ENVELOPE;
    m->model_hash = n ? p : 0;
    if (agn_msg_durations(&r)) return AGN_MSG_ERR_ENVELOPE;
    if (agn_mp_read_map(&r, &count) || count > 64) return AGN_MSG_ERR_ENVELOPE;
    for (i = 0; i < count; i++) {
        const agn_msg_field_t *field = 0;
        if (agn_mp_read_str(&r, &p, &n)) return AGN_MSG_ERR_FIELD;
        for (j = 0; j < AGN_MSG_FIELD_COUNT; j++) {
            if (agn_msg_fields[j].type == m->type && agn_msg_key_is(p, n, agn_msg_fields[j].key)) {
                field = &agn_msg_fields[j];
                break;
            }
        }
        if (field == 0 || (seen & (1u << j))) return AGN_MSG_ERR_FIELD;
        seen |= 1u << j;
        if (agn_msg_value(&r, field, m)) return AGN_MSG_ERR_FIELD;
    }
    for (j = 0; j < AGN_MSG_FIELD_COUNT; j++) {
        if (agn_msg_fields[j].type == m->type && agn_msg_fields[j].required && !(seen & (1u << j))) {
            return AGN_MSG_ERR_FIELD;
        }
    }
    if (r.position != length) return AGN_MSG_ERR_TRAILING;
    return 0;
}

const char *agn_msg_error(int code) {
    switch (code) {
    case 0: return "ok";
    case AGN_MSG_ERR_MSGPACK: return "not a msgpack message";
    case AGN_MSG_ERR_ENVELOPE: return "bad envelope";
    case AGN_MSG_ERR_VERSION: return "unsupported version";
    case AGN_MSG_ERR_TYPE: return "unknown message type";
    case AGN_MSG_ERR_FIELD: return "bad body field";
    case AGN_MSG_ERR_TRAILING: return "bytes after the message";
    default: return "malformed";
    }
}

void agn_msg_begin(agn_mp_writer_t *w, uint8_t type, uint32_t request_id, const char *device_id,
                   const uint8_t *model_hash, uint32_t body_fields) {
    agn_mp_write_array(w, 7);
    agn_mp_write_uint(w, 1);
    agn_mp_write_uint(w, type);
    agn_mp_write_uint(w, request_id);
    agn_mp_write_cstr(w, device_id);
    agn_mp_write_bin(w, model_hash, model_hash ? 8u : 0u);
    agn_mp_write_map(w, 0);
    agn_mp_write_map(w, body_fields);
}

static int32_t agn_msg_end(const agn_mp_writer_t *w) { return w->overflow ? -1 : (int32_t)w->len; }

int32_t agn_msg_write_hello(uint8_t *buf, uint32_t cap, uint32_t request_id, const char *device_id,
                            const uint8_t *model_hash, const char *firmware, int compact_session) {
    agn_mp_writer_t w;
    agn_mp_writer_init(&w, buf, cap);
    agn_msg_begin(&w, AGN_MSG_HELLO, request_id, device_id, model_hash, compact_session ? 2u : 1u);
    agn_mp_write_cstr(&w, "firmware");
    agn_mp_write_cstr(&w, firmware);
    if (compact_session) {
        agn_mp_write_cstr(&w, "cs");
        agn_mp_write_bool(&w, 1);
    }
    return agn_msg_end(&w);
}

int32_t agn_msg_write_commit_reply(uint8_t *buf, uint32_t cap, uint32_t request_id, const char *device_id,
                                   const uint8_t *model_hash, int accepted, const char *reason) {
    agn_mp_writer_t w;
    agn_mp_writer_init(&w, buf, cap);
    agn_msg_begin(&w, AGN_MSG_COMMIT_REPLY, request_id, device_id, model_hash, 2);
    agn_mp_write_cstr(&w, "accepted");
    agn_mp_write_bool(&w, accepted);
    agn_mp_write_cstr(&w, "reason");
    agn_mp_write_cstr(&w, reason);
    return agn_msg_end(&w);
}

int32_t agn_msg_write_error(uint8_t *buf, uint32_t cap, uint32_t request_id, const char *device_id,
                            const uint8_t *model_hash, const char *code, const char *reason) {
    agn_mp_writer_t w;
    agn_mp_writer_init(&w, buf, cap);
    agn_msg_begin(&w, AGN_MSG_ERROR, request_id, device_id, model_hash, 2);
    agn_mp_write_cstr(&w, "code");
    agn_mp_write_cstr(&w, code);
    agn_mp_write_cstr(&w, "reason");
    agn_mp_write_cstr(&w, reason);
    return agn_msg_end(&w);
}
