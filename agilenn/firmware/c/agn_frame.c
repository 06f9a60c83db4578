/* agn_frame.c: frame encode and decode (pure, no I/O). */
#include "agn_frame.h"
#include "agn_crc32.h"

int32_t agn_frame_encode(uint8_t kind, uint8_t seq, int more, const uint8_t *payload, uint16_t length,
                         uint8_t *out, size_t cap) {
    uint8_t body[AGN_FRAME_BODY_MAX];
    uint32_t crc;
    size_t n, i;
    int32_t stuffed;
    if ((size_t)length > AGN_FRAME_MAX_PAYLOAD) return -1;
    body[0] = (uint8_t)((kind & 0x0F) | (more ? AGN_FRAME_FLAG_MORE : 0));
    body[1] = seq;
    body[2] = (uint8_t)(length & 0xFF);
    body[3] = (uint8_t)(length >> 8);
    for (i = 0; i < length; i++) body[4 + i] = payload[i];
    n = 4u + length;
    crc = agn_crc32(0, body, n);
    body[n++] = (uint8_t)crc;
    body[n++] = (uint8_t)(crc >> 8);
    body[n++] = (uint8_t)(crc >> 16);
    body[n++] = (uint8_t)(crc >> 24);
    if (cap < 1) return -1;
    stuffed = agn_cobs_encode(body, n, out, cap - 1);
    if (stuffed < 0) return -1;
    out[stuffed] = 0;
    return stuffed + 1;
}

int agn_frame_decode(const uint8_t *stuffed, size_t length, uint16_t max_payload, uint8_t *body,
                     size_t body_cap, agn_frame_t *frame) {
    int32_t n = agn_cobs_decode(stuffed, length, body, body_cap);
    uint32_t crc, want;
    uint16_t field;
    size_t content;
    if (n < 0) {
        /* Output past body_cap: the frame is too long to hold, not necessarily badly stuffed;
         * either way it is refused. */
        return AGN_FRAME_ERR_COBS;
    }
    if (n < 8) return AGN_FRAME_ERR_SHORT;
    content = (size_t)n - 4u;
    crc = (uint32_t)body[content] | ((uint32_t)body[content + 1] << 8) |
          ((uint32_t)body[content + 2] << 16) | ((uint32_t)body[content + 3] << 24);
    want = agn_crc32(0, body, content);
    if (crc != want) return AGN_FRAME_ERR_CRC;
    field = (uint16_t)(body[2] | (body[3] << 8));
    if ((size_t)field != content - 4u) return AGN_FRAME_ERR_LENGTH;
    if (field > max_payload) return AGN_FRAME_ERR_TOO_LONG;
    if ((body[0] & 0x0F) < AGN_FRAME_DATA || (body[0] & 0x0F) > AGN_FRAME_RESYNC) return AGN_FRAME_ERR_KIND;
    frame->kind = (uint8_t)(body[0] & 0x0F);
    frame->more = (uint8_t)((body[0] & AGN_FRAME_FLAG_MORE) ? 1 : 0);
    frame->seq = body[1];
    frame->length = field;
    frame->payload = body + 4;
    return 0;
}
