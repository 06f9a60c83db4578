/* agn_compact.h: compact frames (transports/compact.py) as the device uses them.
 *   0xC1, kind << 4 | flags, LEB128 session id (1-2 bytes), sequence byte, body
 * The device writes INFER_REQUEST with flag 2 (n, n float16 local logits, then the payload) and
 * reads INFER_REPLY (merged or not, with or without timings) and ERROR. */
#ifndef AGN_COMPACT_H
#define AGN_COMPACT_H
#include <stdint.h>

#define AGN_COMPACT_MARKER 0xC1
#define AGN_COMPACT_INFER_REQUEST 1
#define AGN_COMPACT_INFER_REPLY 2
#define AGN_COMPACT_ERROR 3
#define AGN_COMPACT_WANT_TIMINGS 1
#define AGN_COMPACT_HAS_LOCAL_LOGITS 2
#define AGN_COMPACT_MERGED 2
#define AGN_COMPACT_MAX_SESSION 16383
#define AGN_COMPACT_CODE_UNKNOWN_SESSION 13

/* Writes an INFER_REQUEST with local logits. Returns its length, or -1 if it does not fit cap,
 * the session id is over 16383 or there are more than 255 classes. */
int32_t agn_compact_write_request(uint8_t *out, uint32_t cap, uint16_t session, uint8_t sequence,
                                  const uint16_t *logits_f16, uint8_t classes, const uint8_t *payload,
                                  uint32_t payload_len);

typedef struct {
    uint8_t kind;       /* AGN_COMPACT_INFER_REPLY or AGN_COMPACT_ERROR */
    uint8_t flags;
    uint16_t session;
    uint8_t sequence;
    /* INFER_REPLY */
    uint8_t label, classes, merged, confidence;
    /* ERROR */
    uint8_t code;              /* index into compact.CODES; 0: the code is the reason's first word */
    uint8_t unknown_session;   /* the code is "unknown-session" */
    const uint8_t *reason;
    uint32_t reason_len;
} agn_compact_reply_t;

/* Parses a compact frame from the server side. 0, or -1 for any defect (not compact, unknown or
 * unexpected kind, truncated, a class out of range, bytes after the reply). */
int agn_compact_read_reply(const uint8_t *data, uint32_t length, agn_compact_reply_t *reply);
#endif
