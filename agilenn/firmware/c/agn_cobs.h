/* agn_cobs.h: Consistent Overhead Byte Stuffing, as Python's `cobs` package does it. */
#ifndef AGN_COBS_H
#define AGN_COBS_H
#include <stddef.h>
#include <stdint.h>

/* Worst-case encoded size of n bytes (no delimiter). */
#define AGN_COBS_MAX(n) ((n) + (n) / 254u + 1u)

/* Encodes src into dst (no trailing 0x00). Returns the encoded length, or -1 if it does not fit cap. */
int32_t agn_cobs_encode(const uint8_t *src, size_t length, uint8_t *dst, size_t cap);
/* Decodes (input without the delimiter). Returns the decoded length, or -1 for bad stuffing
 * (a zero byte, a code running past the input) or output past cap. */
int32_t agn_cobs_decode(const uint8_t *src, size_t length, uint8_t *dst, size_t cap);
#endif
