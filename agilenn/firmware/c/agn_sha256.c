/* agn_sha256.c: SHA-256 per FIPS 180-4. */
#include "agn_sha256.h"

static const uint32_t agn_sha256_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

#define AGN_ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void agn_sha256_block(agn_sha256_t *ctx, const uint8_t *p) {
    uint32_t w[64];
    uint32_t a, b, c, d, e, f, g, h, t1, t2;
    int i;
    for (i = 0; i < 16; i++) {
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) |
               ((uint32_t)p[4 * i + 2] << 8) | (uint32_t)p[4 * i + 3];
    }
    for (i = 16; i < 64; i++) {
        uint32_t s0 = AGN_ROTR(w[i - 15], 7) ^ AGN_ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = AGN_ROTR(w[i - 2], 17) ^ AGN_ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = ctx->state[0]; b = ctx->state[1]; c = ctx->state[2]; d = ctx->state[3];
    e = ctx->state[4]; f = ctx->state[5]; g = ctx->state[6]; h = ctx->state[7];
    for (i = 0; i < 64; i++) {
        t1 = h + (AGN_ROTR(e, 6) ^ AGN_ROTR(e, 11) ^ AGN_ROTR(e, 25)) + ((e & f) ^ (~e & g)) +
             agn_sha256_k[i] + w[i];
        t2 = (AGN_ROTR(a, 2) ^ AGN_ROTR(a, 13) ^ AGN_ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    ctx->state[0] += a; ctx->state[1] += b; ctx->state[2] += c; ctx->state[3] += d;
    ctx->state[4] += e; ctx->state[5] += f; ctx->state[6] += g; ctx->state[7] += h;
}

void agn_sha256_init(agn_sha256_t *ctx) {
    static const uint32_t initial[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                        0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    int i;
    for (i = 0; i < 8; i++) ctx->state[i] = initial[i];
    ctx->length = 0;
    ctx->used = 0;
}

void agn_sha256_update(agn_sha256_t *ctx, const uint8_t *data, size_t length) {
    size_t i;
    for (i = 0; i < length; i++) {
        ctx->block[ctx->used++] = data[i];
        if (ctx->used == 64) {
            agn_sha256_block(ctx, ctx->block);
            ctx->used = 0;
        }
    }
    ctx->length += length;
}

void agn_sha256_final(agn_sha256_t *ctx, uint8_t digest[32]) {
    uint64_t bits = ctx->length * 8u;
    int i;
    ctx->block[ctx->used++] = 0x80;
    if (ctx->used > 56) {
        while (ctx->used < 64) ctx->block[ctx->used++] = 0;
        agn_sha256_block(ctx, ctx->block);
        ctx->used = 0;
    }
    while (ctx->used < 56) ctx->block[ctx->used++] = 0;
    for (i = 0; i < 8; i++) ctx->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    agn_sha256_block(ctx, ctx->block);
    for (i = 0; i < 8; i++) {
        digest[4 * i] = (uint8_t)(ctx->state[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(ctx->state[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(ctx->state[i] >> 8);
        digest[4 * i + 3] = (uint8_t)ctx->state[i];
    }
}

void agn_sha256(const uint8_t *data, size_t length, uint8_t digest[32]) {
    agn_sha256_t ctx;
    agn_sha256_init(&ctx);
    agn_sha256_update(&ctx, data, length);
    agn_sha256_final(&ctx, digest);
}
