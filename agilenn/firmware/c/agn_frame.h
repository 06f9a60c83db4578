/* agn_frame.h: serial frames as transports/framing.py: COBS(header + payload + crc32) + 0x00.
 * header: kind | flags (0x10 more), seq, u16 length LE; crc32 LE over header + payload. */
#ifndef AGN_FRAME_H
#define AGN_FRAME_H
#include <stddef.h>
#include <stdint.h>
#include "agn_cobs.h"

#define AGN_FRAME_DATA 1
#define AGN_FRAME_ACK 2
#define AGN_FRAME_NAK 3
#define AGN_FRAME_RESET 4
#define AGN_FRAME_RESET_ACK 5
#define AGN_FRAME_RESYNC 6
#define AGN_FRAME_FLAG_MORE 0x10

#define AGN_FRAME_MAX_PAYLOAD 240
#define AGN_FRAME_BODY_MAX (4 + AGN_FRAME_MAX_PAYLOAD + 4)
/* Stuffed bytes of the largest frame without its delimiter (framing.max_wire_size(240) - 1). */
#define AGN_FRAME_STUFFED_MAX AGN_COBS_MAX(AGN_FRAME_BODY_MAX)
#define AGN_FRAME_WIRE_MAX (AGN_FRAME_STUFFED_MAX + 1)

typedef struct {
    uint8_t kind;
    uint8_t seq;
    uint8_t more;
    uint16_t length;
    const uint8_t *payload; /* points into the decoder's body buffer */
} agn_frame_t;

/* The reasons a frame is refused (negative return codes of agn_frame_decode). */
#define AGN_FRAME_ERR_COBS (-1)
#define AGN_FRAME_ERR_SHORT (-2)
#define AGN_FRAME_ERR_CRC (-3)
#define AGN_FRAME_ERR_LENGTH (-4)
#define AGN_FRAME_ERR_TOO_LONG (-5)
#define AGN_FRAME_ERR_KIND (-6)
#define AGN_FRAME_ERR_OVERRUN (-7) /* no delimiter within the largest frame */

/* Encodes one frame with its 0x00 delimiter into out. Returns the wire length, or -1 if the payload
 * is over AGN_FRAME_MAX_PAYLOAD bytes or the frame does not fit cap. */
int32_t agn_frame_encode(uint8_t kind, uint8_t seq, int more, const uint8_t *payload, uint16_t length,
                         uint8_t *out, size_t cap);

/* Decodes the stuffed bytes of one frame (without the delimiter, at least one byte) into body
 * (cap body_cap), refusing payloads over max_payload. Returns 0 with *frame filled, or an
 * AGN_FRAME_ERR_ code (the same defects framing.decode_frame reports). */
int agn_frame_decode(const uint8_t *stuffed, size_t length, uint16_t max_payload, uint8_t *body,
                     size_t body_cap, agn_frame_t *frame);
#endif
