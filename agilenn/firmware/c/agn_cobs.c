/* agn_cobs.c: COBS encode and decode, bounds-checked on both sides. */
#include "agn_cobs.h"

int32_t agn_cobs_encode(const uint8_t *src, size_t length, uint8_t *dst, size_t cap) {
    size_t out = 1, code_at = 0, i;
    uint8_t code = 1;
    if (cap < 1) return -1;
    for (i = 0; i < length; i++) {
        if (src[i] == 0) {
            dst[code_at] = code;
            code_at = out++;
            code = 1;
            if (code_at >= cap) return -1;
        } else {
            if (out >= cap) return -1;
            dst[out++] = src[i];
            code++;
            if (code == 0xFF) {
                dst[code_at] = code;
                if (i + 1 == length) return (int32_t)out; /* a full block at the end needs no successor */
                code_at = out++;
                code = 1;
                if (code_at >= cap) return -1;
            }
        }
    }
    dst[code_at] = code;
    return (int32_t)out;
}

int32_t agn_cobs_decode(const uint8_t *src, size_t length, uint8_t *dst, size_t cap) {
    size_t in = 0, out = 0;
    while (in < length) {
        uint8_t code = src[in++];
        uint8_t k;
        if (code == 0) return -1;
        for (k = 1; k < code; k++) {
            if (in >= length || src[in] == 0 || out >= cap) return -1;
            dst[out++] = src[in++];
        }
        if (code != 0xFF && in < length) {
            if (out >= cap) return -1;
            dst[out++] = 0;
        }
    }
    return (int32_t)out;
}
