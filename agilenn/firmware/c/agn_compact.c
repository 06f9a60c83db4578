/* agn_compact.c: the device's compact frames. */
#include "agn_compact.h"

int32_t agn_compact_write_request(uint8_t *out, uint32_t cap, uint16_t session, uint8_t sequence,
                                  const uint16_t *logits_f16, uint8_t classes, const uint8_t *payload,
                                  uint32_t payload_len) {
    uint32_t n = 0, i, need;
    if (session > AGN_COMPACT_MAX_SESSION) return -1;
    need = 2u + (session >= 128 ? 2u : 1u) + 1u + 1u + 2u * classes + payload_len;
    if (need > cap) return -1;
    out[n++] = AGN_COMPACT_MARKER;
    out[n++] = (uint8_t)(AGN_COMPACT_INFER_REQUEST << 4 | AGN_COMPACT_HAS_LOCAL_LOGITS);
    if (session >= 128) {
        out[n++] = (uint8_t)((session & 0x7F) | 0x80);
        out[n++] = (uint8_t)(session >> 7);
    } else {
        out[n++] = (uint8_t)session;
    }
    out[n++] = sequence;
    out[n++] = classes;
    for (i = 0; i < classes; i++) {
        out[n++] = (uint8_t)logits_f16[i];
        out[n++] = (uint8_t)(logits_f16[i] >> 8);
    }
    for (i = 0; i < payload_len; i++) out[n++] = payload[i];
    return (int32_t)n;
}

static int agn_compact_varint(const uint8_t *data, uint32_t length, uint32_t *position, uint32_t max_bytes,
                              uint32_t *value) {
    uint32_t i, v = 0;
    for (i = 0; i < max_bytes; i++) {
        uint8_t byte;
        if (*position >= length) return -1;
        byte = data[(*position)++];
        v |= (uint32_t)(byte & 0x7F) << (7 * i);
        if (!(byte & 0x80)) {
            *value = v;
            return 0;
        }
    }
    return -1;
}

static int agn_compact_is_unknown_session(const uint8_t *reason, uint32_t length) {
    static const char word[] = "unknown-session";
    uint32_t i;
    for (i = 0; i < sizeof(word) - 1; i++) {
        if (i >= length || reason[i] != (uint8_t)word[i]) return 0;
    }
    return length == sizeof(word) - 1 || reason[sizeof(word) - 1] == ' ';
}

int agn_compact_read_reply(const uint8_t *data, uint32_t length, agn_compact_reply_t *reply) {
    uint32_t position = 2, session, unused, i;
    uint8_t *clear = (uint8_t *)reply;
    for (i = 0; i < sizeof(*reply); i++) clear[i] = 0;
    if (length < 4 || data[0] != AGN_COMPACT_MARKER) return -1;
    reply->kind = (uint8_t)(data[1] >> 4);
    reply->flags = (uint8_t)(data[1] & 0x0F);
    if (reply->kind != AGN_COMPACT_INFER_REPLY && reply->kind != AGN_COMPACT_ERROR) return -1;
    if (agn_compact_varint(data, length, &position, 2, &session)) return -1;
    if (position >= length) return -1;
    reply->session = (uint16_t)session;
    reply->sequence = data[position++];
    if (reply->kind == AGN_COMPACT_ERROR) {
        if (position >= length || data[position] > 15) return -1;
        reply->code = data[position++];
        reply->reason = data + position;
        reply->reason_len = length - position;
        reply->unknown_session = (uint8_t)(reply->code == AGN_COMPACT_CODE_UNKNOWN_SESSION ||
                                           (reply->code == 0 &&
                                            agn_compact_is_unknown_session(reply->reason, reply->reason_len)));
        return 0;
    }
    if (length - position < 2) return -1;
    reply->label = data[position];
    reply->classes = data[position + 1];
    position += 2;
    if (reply->classes == 0 || reply->label >= reply->classes) return -1;
    if (reply->flags & AGN_COMPACT_MERGED) {
        if (position >= length) return -1;
        reply->merged = 1;
        reply->confidence = data[position++];
    } else {
        if (length - position < (uint32_t)reply->classes + 2u) return -1;
        if ((data[position + reply->classes + 1] & 0x7C) == 0x7C) return -1; /* a scale that is not finite */
        position += reply->classes + 2u;
    }
    if (reply->flags & AGN_COMPACT_WANT_TIMINGS) {
        if (agn_compact_varint(data, length, &position, 5, &unused)) return -1;
        if (agn_compact_varint(data, length, &position, 5, &unused)) return -1;
        if (agn_compact_varint(data, length, &position, 3, &unused)) return -1;
    }
    return position == length ? 0 : -1;
}
