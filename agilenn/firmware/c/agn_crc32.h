/* agn_crc32.h: the zlib/IEEE CRC-32 (what Python's zlib.crc32 computes). */
#ifndef AGN_CRC32_H
#define AGN_CRC32_H
#include <stddef.h>
#include <stdint.h>

/* Continues a CRC: agn_crc32(0, data, n) is zlib.crc32(data); chaining works as in zlib. */
uint32_t agn_crc32(uint32_t crc, const uint8_t *data, size_t length);
#endif
