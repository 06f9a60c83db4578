/* agn_rans.c: byte-wise rANS with a context prior, bit-exact with agilenn/entropy.py. */
#include <stddef.h>
#include "agn_bytes.h"
#include "agn_rans.h"

#define PROB_BITS 12u
#define PROB_SCALE (1u << PROB_BITS)
#define STATE_LOW (1u << 16)
#define PRIOR_HEADER 8u         /* kind, n_symbols - 1, channels, height, width (u16 LE each) */
#define PRIOR_KIND_CONTEXT 1u
#define PAYLOAD_MARKER 0xA1u    /* 0xA0 | codec format version 1 */
#define LAYOUT_RANS 2u


/* Where the prior's tables lie, from its header. */
typedef struct {
    uint32_t channels, height, width, n_symbols;
    const uint8_t *rows;    /* (C, H, 2) u16: frequency of "row holds a non-base symbol" */
    const uint8_t *flags;   /* (C, H, W, 4) u16: the same per position, context 2 * left + up */
    const uint8_t *values;  /* (C, n - 1) u16: a non-base symbol's index among the others */
    const uint8_t *base;    /* C bytes: each channel's base symbol */
} prior_t;

static uint32_t prior_layout(prior_t *t, const uint8_t *prior) {
    t->n_symbols = (uint32_t)prior[1] + 1u;
    t->channels = agn_rd16(prior + 2);
    t->height = agn_rd16(prior + 4);
    t->width = agn_rd16(prior + 6);
    t->rows = prior + PRIOR_HEADER;
    t->flags = t->rows + 2u * t->channels * t->height * 2u;
    t->values = t->flags + 2u * t->channels * t->height * t->width * 4u;
    t->base = t->values + 2u * t->channels * (t->n_symbols - 1u);
    return (uint32_t)(t->base + t->channels - prior);  /* the prior's length */
}

static int binary_ok(const uint8_t *table, uint32_t count) {
    uint32_t i;
    for (i = 0; i < count; i++) {
        uint32_t f = agn_rd16(table + 2u * i);
        if (f < 1u || f >= PROB_SCALE) return 0;
    }
    return 1;
}

int agn_rans_check_prior(const uint8_t *prior, uint32_t length, uint32_t channels, uint32_t height,
                         uint32_t width, uint32_t n_symbols) {
    prior_t t;
    uint32_t c, v;
    if (prior == NULL || length < PRIOR_HEADER || prior[0] != PRIOR_KIND_CONTEXT) return AGN_RANS_ERR_PRIOR;
    if (n_symbols < 2u || n_symbols > 256u || channels == 0u || height == 0u || width == 0u ||
        channels > 0xFFFFu || height > 0xFFFFu || width > 0xFFFFu) return AGN_RANS_ERR_PRIOR;
    /* The shape comes from the caller's compiled dims, so the layout's sizes cannot overflow. */
    if ((uint32_t)prior[1] + 1u != n_symbols || agn_rd16(prior + 2) != channels || agn_rd16(prior + 4) != height ||
        agn_rd16(prior + 6) != width) return AGN_RANS_ERR_PRIOR;
    if (prior_layout(&t, prior) != length) return AGN_RANS_ERR_PRIOR;
    /* A zero frequency would divide by zero; binary events need both outcomes possible. */
    if (!binary_ok(t.rows, channels * height * 2u) || !binary_ok(t.flags, channels * height * width * 4u))
        return AGN_RANS_ERR_PRIOR;
    for (c = 0; c < channels; c++) {
        uint32_t sum = 0;
        for (v = 0; v + 1u < n_symbols; v++) {
            uint32_t f = agn_rd16(t.values + 2u * (c * (n_symbols - 1u) + v));
            if (f == 0u) return AGN_RANS_ERR_PRIOR;
            sum += f;
        }
        if (sum != PROB_SCALE || t.base[c] >= n_symbols) return AGN_RANS_ERR_PRIOR;
    }
    return AGN_RANS_OK;
}

typedef struct {
    uint32_t x;          /* the state, in [STATE_LOW, 2^24) between events */
    uint8_t *low;        /* the first byte the body may use */
    uint8_t *p;          /* the body so far is [p, end): bytes go in from the end */
} encoder_t;

/* Codes one event of frequency f at cumulative frequency cum (encode runs the decoder's events
 * backwards). Returns 0, or -1 when the buffer is full. */
static int put(encoder_t *e, uint32_t f, uint32_t cum) {
    uint32_t limit = f << PROB_BITS;
    while (e->x >= limit) {
        if (e->p == e->low) return -1;
        *--e->p = (uint8_t)(e->x & 0xFFu);
        e->x >>= 8;
    }
    e->x = ((e->x / f) << PROB_BITS) + e->x % f + cum;
    return 0;
}

/* Outcome 0 owns the slots [0, 2^12 - f1), outcome 1 the f1 slots above. */
static int put_bit(encoder_t *e, uint32_t f1, int bit) {
    return bit ? put(e, f1, PROB_SCALE - f1) : put(e, PROB_SCALE - f1, 0u);
}

/* Whether any of the first count positions of a row holds a non-base symbol. */
static int any_non_base(const uint8_t *row, const uint8_t *lut, uint32_t base, uint32_t count) {
    uint32_t i;
    for (i = 0; i < count; i++) {
        if (lut[row[i]] != base) return 1;
    }
    return 0;
}

static uint32_t write_varint(uint8_t *out, uint32_t value) {
    uint32_t n = 0;
    while (value >= 0x80u) {
        out[n++] = (uint8_t)((value & 0x7Fu) | 0x80u);
        value >>= 7;
    }
    out[n++] = (uint8_t)value;
    return n;
}

static uint32_t varint_size(uint32_t value) {
    uint32_t n = 1;
    while (value >= 0x80u) {
        value >>= 7;
        n++;
    }
    return n;
}

/* Codes the events of a flagged row (one with a non-base symbol), backwards: each position's value
 * and flag from the last position to the first. up is the row above, or NULL for the first row. */
static int encode_row(encoder_t *e, const prior_t *t, const uint8_t *row, const uint8_t *up, const uint8_t *lut,
                      uint32_t base, const uint8_t *value_freqs, const uint8_t *flag_freqs) {
    const uint32_t W = t->width;
    /* Only the last position non-base: the decoder infers its flag, so none is coded. */
    const int implied = !any_non_base(row, lut, base, W - 1u);
    uint32_t i = W;
    while (i-- > 0u) {
        const uint32_t s = lut[row[i]];
        const int non_base = s != base;
        uint32_t left, above;
        if (non_base) {
            const uint32_t v = s - (s > base ? 1u : 0u);
            uint32_t u, cum = 0;
            for (u = 0; u < v; u++) cum += agn_rd16(value_freqs + 2u * u);
            if (put(e, agn_rd16(value_freqs + 2u * v), cum)) return -1;
            if (implied && i == W - 1u) continue;
        }
        left = i > 0u && lut[row[i - 1u]] != base;
        above = up != NULL && lut[up[i]] != base;
        if (put_bit(e, agn_rd16(flag_freqs + 2u * (4u * i + 2u * left + above)), non_base)) return -1;
    }
    return 0;
}

/* The body's events, backwards: per row (last first) each position's value and flag from the
 * last position to the first, then the row's flag. Most rows hold only the base symbol and cost
 * one scan and one row-flag event; each row is scanned once, its flag carried to the row below's
 * context. */
static int encode_body(encoder_t *e, const prior_t *t, const uint8_t *values, const uint8_t *lut) {
    const uint32_t H = t->height, W = t->width, n1 = t->n_symbols - 1u;
    uint32_t c = t->channels;
    while (c-- > 0u) {
        const uint32_t base = t->base[c];
        const uint8_t *value_freqs = t->values + 2u * c * n1;
        uint32_t h = H;
        int flagged = any_non_base(values + (c * H + H - 1u) * W, lut, base, W);
        while (h-- > 0u) {
            const uint32_t row_index = c * H + h;
            const uint8_t *row = values + row_index * W;
            const int up_row = h > 0u && any_non_base(row - W, lut, base, W);
            if (flagged && encode_row(e, t, row, h > 0u ? row - W : NULL, lut, base, value_freqs,
                                      t->flags + 2u * 4u * row_index * W)) return -1;
            if (put_bit(e, agn_rd16(t->rows + 2u * (2u * row_index + (up_row ? 1u : 0u))), flagged)) return -1;
            flagged = up_row;  /* the row above is the next one coded */
        }
    }
    return 0;
}

int agn_rans_encode(const uint8_t *prior, const uint8_t *values, const uint8_t *lut, uint8_t *out,
                    uint32_t cap, uint32_t *length) {
    prior_t t;
    encoder_t e;
    uint32_t head, bits = 1, body, i;
    prior_layout(&t, prior);
    while ((1u << bits) < t.n_symbols) bits++;
    head = 2u + varint_size(t.channels) + varint_size(t.height) + varint_size(t.width);
    if (cap < head + 3u) return AGN_RANS_ERR_SPACE;
    out[0] = (uint8_t)PAYLOAD_MARKER;
    out[1] = (uint8_t)(LAYOUT_RANS | ((bits - 1u) << 2));
    i = 2;
    i += write_varint(out + i, t.channels);
    i += write_varint(out + i, t.height);
    i += write_varint(out + i, t.width);
    e.x = STATE_LOW;
    e.low = out + head;
    e.p = out + cap;
    if (encode_body(&e, &t, values, lut)) return AGN_RANS_ERR_SPACE;
    if ((uint32_t)(e.p - e.low) < 3u) return AGN_RANS_ERR_SPACE;
    /* The final state opens the body, big-endian, so the decoder meets it first. */
    *--e.p = (uint8_t)(e.x & 0xFFu);
    *--e.p = (uint8_t)((e.x >> 8) & 0xFFu);
    *--e.p = (uint8_t)(e.x >> 16);
    body = (uint32_t)(out + cap - e.p);
    for (i = 0; i < body; i++) out[head + i] = e.p[i];  /* forward copy: the body only moves down */
    *length = head + body;
    return AGN_RANS_OK;
}
