/* agn_sha256.h: SHA-256 (FIPS 180-4), streaming, no allocation. */
#ifndef AGN_SHA256_H
#define AGN_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[8];
    uint64_t length;     /* bytes hashed so far */
    uint8_t block[64];
    uint32_t used;       /* bytes waiting in block */
} agn_sha256_t;

void agn_sha256_init(agn_sha256_t *ctx);
void agn_sha256_update(agn_sha256_t *ctx, const uint8_t *data, size_t length);
void agn_sha256_final(agn_sha256_t *ctx, uint8_t digest[32]);
void agn_sha256(const uint8_t *data, size_t length, uint8_t digest[32]);
#endif
