/* agn_msgpack.h: the msgpack the device needs: a minimal writer, a bounds-checked reader, and the
 * protocol envelope of transports/messages.py:
 *   [version=1, type, request_id, device_id, model_hash (bin 0 or 8), timestamps map, body map]
 * The reader never reads past its buffer and refuses what it cannot parse or what breaks the
 * schema (the checks of messages._validate for the types it knows). */
#ifndef AGN_MSGPACK_H
#define AGN_MSGPACK_H
#include <stdint.h>

/* ------------------------------------------------------------------ writer */
typedef struct {
    uint8_t *buf;
    uint32_t cap, len;
    uint8_t overflow; /* set once anything did not fit; len then stops growing */
} agn_mp_writer_t;

void agn_mp_writer_init(agn_mp_writer_t *w, uint8_t *buf, uint32_t cap);
void agn_mp_write_array(agn_mp_writer_t *w, uint32_t count);
void agn_mp_write_map(agn_mp_writer_t *w, uint32_t count);
void agn_mp_write_uint(agn_mp_writer_t *w, uint32_t value);
void agn_mp_write_bool(agn_mp_writer_t *w, int value);
void agn_mp_write_str(agn_mp_writer_t *w, const uint8_t *text, uint32_t length);
void agn_mp_write_cstr(agn_mp_writer_t *w, const char *text);
void agn_mp_write_bin(agn_mp_writer_t *w, const uint8_t *data, uint32_t length);

/* ------------------------------------------------------------------ reader */
typedef struct {
    const uint8_t *data;
    uint32_t length, position;
} agn_mp_reader_t;

void agn_mp_reader_init(agn_mp_reader_t *r, const uint8_t *data, uint32_t length);
/* Each returns 0, or -1 when the next object is not of that kind or runs past the buffer. */
int agn_mp_read_array(agn_mp_reader_t *r, uint32_t *count);
int agn_mp_read_map(agn_mp_reader_t *r, uint32_t *count);
int agn_mp_read_uint(agn_mp_reader_t *r, uint64_t *value);   /* any int format holding a value >= 0 */
int agn_mp_read_bool(agn_mp_reader_t *r, int *value);
int agn_mp_read_str(agn_mp_reader_t *r, const uint8_t **text, uint32_t *length);
int agn_mp_read_bin(agn_mp_reader_t *r, const uint8_t **data, uint32_t *length);
/* A number (int of any sign, or a finite float32/float64): what a timings map holds. */
int agn_mp_read_number(agn_mp_reader_t *r);

/* ------------------------------------------------------------------ messages */
#define AGN_MSG_INFER_REQUEST 1
#define AGN_MSG_INFER_REPLY 2
#define AGN_MSG_ERROR 3
#define AGN_MSG_PING 4
#define AGN_MSG_PONG 5
#define AGN_MSG_HELLO 6
#define AGN_MSG_HELLO_REPLY 7
#define AGN_MSG_WEIGHT_CHUNK 8
#define AGN_MSG_WEIGHT_COMMIT 9
#define AGN_MSG_COMMIT_REPLY 10

#define AGN_MSG_HELLO_REQUEST_ID 0xFFFFFFFFu /* the compact-session HELLO's request id */

typedef struct {
    uint8_t type;
    uint32_t request_id;
    const uint8_t *device_id;
    uint32_t device_id_len;
    const uint8_t *model_hash; /* 8 bytes, or NULL when the message carries none */
    /* body fields, by type; pointers point into the decoded buffer */
    uint8_t accepted;          /* HELLO_REPLY, COMMIT_REPLY */
    const uint8_t *reason;     /* HELLO_REPLY, COMMIT_REPLY, ERROR */
    uint32_t reason_len;
    uint32_t update_chunks;    /* HELLO_REPLY */
    int32_t session;           /* HELLO_REPLY "s", -1 when absent */
    uint32_t index, crc32;     /* WEIGHT_CHUNK */
    const uint8_t *data;       /* WEIGHT_CHUNK data, INFER_REQUEST payload */
    uint32_t data_len;
    uint32_t chunks;           /* WEIGHT_COMMIT */
    const uint8_t *sha256;     /* WEIGHT_COMMIT, 32 bytes */
    const uint8_t *code;       /* ERROR */
    uint32_t code_len;
    const uint8_t *firmware;   /* HELLO */
    uint32_t firmware_len;
    uint8_t compact_session;   /* HELLO "cs" */
    uint32_t label;            /* INFER_REPLY "c" */
    const uint8_t *logits;     /* INFER_REQUEST "l", INFER_REPLY "pr" or "lg" (float16 LE) */
    uint32_t logits_len;
} agn_msg_t;

#define AGN_MSG_ERR_MSGPACK (-1)   /* not msgpack, or truncated */
#define AGN_MSG_ERR_ENVELOPE (-2)  /* not an array of 7, or a bad envelope field */
#define AGN_MSG_ERR_VERSION (-3)
#define AGN_MSG_ERR_TYPE (-4)      /* a type this device does not read */
#define AGN_MSG_ERR_FIELD (-5)     /* a body field missing, unknown, repeated or out of range */
#define AGN_MSG_ERR_TRAILING (-6)  /* bytes after the message */

int agn_msg_decode(const uint8_t *data, uint32_t length, agn_msg_t *message);
const char *agn_msg_error(int code);

/* Writes the envelope up to the body map's header (the caller writes body_fields pairs).
 * model_hash: 8 bytes, or NULL for none. */
void agn_msg_begin(agn_mp_writer_t *w, uint8_t type, uint32_t request_id, const char *device_id,
                   const uint8_t *model_hash, uint32_t body_fields);
/* Whole messages; each returns the length, or -1 if cap is too small. */
int32_t agn_msg_write_hello(uint8_t *buf, uint32_t cap, uint32_t request_id, const char *device_id,
                            const uint8_t *model_hash, const char *firmware, int compact_session);
int32_t agn_msg_write_commit_reply(uint8_t *buf, uint32_t cap, uint32_t request_id, const char *device_id,
                                   const uint8_t *model_hash, int accepted, const char *reason);
int32_t agn_msg_write_error(uint8_t *buf, uint32_t cap, uint32_t request_id, const char *device_id,
                            const uint8_t *model_hash, const char *code, const char *reason);
#endif
