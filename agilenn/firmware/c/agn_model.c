/* agn_model.c: the AGW1 image check and the int8 kernels, bit-exact with agilenn/firmware/int8.py.
 * docs/FIRMWARE.md section 1 is the arithmetic, section 2 the image, section 5 the memory. */
#include <stddef.h>
#include "agn_bytes.h"
#include "agn_model.h"
#include "agn_rans.h"

/* Section indices, in the order of the AGW1 section table. */
enum {
    SEC_STEM_W, SEC_STEM_B, SEC_STEM_M, SEC_STEM_S,
    SEC_DW_W, SEC_DW_B, SEC_DW_M, SEC_DW_S,
    SEC_PW_W, SEC_PW_B, SEC_PW_M, SEC_PW_S,
    SEC_QMAX, SEC_LOCAL_W, SEC_LOCAL_B, SEC_LOCAL_SCALE, SEC_LUT, SEC_PRIOR
};

#define FORMAT_VERSION 1u
#define LUT_SIZE 256u
#define BIAS_LIMIT (1L << 30)   /* keeps bias + any sum of products inside int32 */
#define FEAT_PIXELS (AGN_FEAT_H * AGN_FEAT_W)
#define LOCAL_INPUTS (AGN_LOCAL_CH * FEAT_PIXELS)

/* Every activation buffer lives here, at the exporter's planned offsets (agn_config.h). */
static uint8_t arena[AGN_ARENA_BYTES];


/* Little-endian int32 at p, whatever the host's order or p's alignment. */
static int32_t rd_i32(const uint8_t *p) {
    uint32_t bits = agn_rd32(p);
    /* two's complement by hand: converting an out-of-range uint32_t to int32_t is implementation-defined */
    return bits < 0x80000000u ? (int32_t)bits : -(int32_t)(~bits) - 1;
}

/* The freestanding target has no <string.h>; C99 allows reading a union member other than the one
 * last written (TC3 footnote 82), which reinterprets the bits. */
typedef union {
    uint32_t bits;
    float value;
} f32_bits_t;

static float rd_f32(const uint8_t *p) {
    f32_bits_t u;
    u.bits = agn_rd32(p);
    return u.value;
}

static int same_bytes(const uint8_t *a, const uint8_t *b, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++) {
        if (a[i] != b[i]) return 0;
    }
    return 1;
}

static void clear_weights(agn_weights_t *weights) {
    uint32_t i;
    weights->image = NULL;
    weights->length = 0;
    for (i = 0; i < AGN_SECTIONS; i++) {
        weights->section[i] = NULL;
        weights->section_len[i] = 0;
    }
}

/* ------------------------------------------------------------------ the image check */

static const uint32_t expected_len[SEC_PRIOR] = {
    AGN_STEM_CH * AGN_IN_CH * 9, 4 * AGN_STEM_CH, 4 * AGN_STEM_CH, 4 * AGN_STEM_CH,
    AGN_STEM_CH * 9, 4 * AGN_STEM_CH, 4 * AGN_STEM_CH, 4 * AGN_STEM_CH,
    AGN_FEAT_CH * AGN_STEM_CH, 4 * AGN_FEAT_CH, 4 * AGN_FEAT_CH, 4 * AGN_FEAT_CH,
    12, AGN_CLASSES * LOCAL_INPUTS, 4 * AGN_CLASSES, 4 * AGN_CLASSES, LUT_SIZE,
};

static const uint8_t compiled_dims[12] = {
    AGN_IN_CH, AGN_IN_H, AGN_IN_W, AGN_STEM_CH, AGN_FEAT_CH, AGN_LOCAL_CH,
    AGN_FEAT_H, AGN_FEAT_W, AGN_CENTROIDS, AGN_CLASSES, AGN_STEM_STRIDE, AGN_DW_STRIDE,
};

static int check_bias(const uint8_t *bias, uint32_t count) {
    uint32_t i;
    for (i = 0; i < count; i++) {
        int32_t b = rd_i32(bias + 4u * i);
        if (b > BIAS_LIMIT || b < -BIAS_LIMIT) return AGN_ERR_BIAS;
    }
    return 0;
}

static int check_requant(const uint8_t *mult, const uint8_t *shift, uint32_t count) {
    uint32_t i;
    for (i = 0; i < count; i++) {
        int32_t s = rd_i32(shift + 4u * i);
        if (rd_i32(mult + 4u * i) < 0 || s < 1 || s > 62) return AGN_ERR_REQUANT;
    }
    return 0;
}

/* The values the kernels rely on: requantisation in range, biases that cannot overflow the
 * accumulators, finite logit scales, centroid symbols the coder knows, a usable prior. */
static int check_values(const agn_weights_t *w) {
    static const uint8_t layers[3] = {SEC_STEM_W, SEC_DW_W, SEC_PW_W};
    static const uint32_t channels[3] = {AGN_STEM_CH, AGN_STEM_CH, AGN_FEAT_CH};
    uint32_t l, i;
    int rc;
    for (l = 0; l < 3u; l++) {
        int32_t qmax = rd_i32(w->section[SEC_QMAX] + 4u * l);
        if ((rc = check_bias(w->section[layers[l] + 1], channels[l])) != 0) return rc;
        if ((rc = check_requant(w->section[layers[l] + 2], w->section[layers[l] + 3], channels[l])) != 0)
            return rc;
        if (qmax < 0 || qmax > 255) return AGN_ERR_REQUANT;
    }
    if ((rc = check_bias(w->section[SEC_LOCAL_B], AGN_CLASSES)) != 0) return rc;
    for (i = 0; i < AGN_CLASSES; i++) {
        if (((agn_rd32(w->section[SEC_LOCAL_SCALE] + 4u * i) >> 23) & 0xFFu) == 0xFFu) return AGN_ERR_SCALE;
    }
    for (i = 0; i < LUT_SIZE; i++) {
        if (w->section[SEC_LUT][i] >= AGN_CENTROIDS) return AGN_ERR_LUT;
    }
    if (agn_rans_check_prior(w->section[SEC_PRIOR], w->section_len[SEC_PRIOR], AGN_FEAT_CH - AGN_LOCAL_CH,
                             AGN_FEAT_H, AGN_FEAT_W, AGN_CENTROIDS) != AGN_RANS_OK) return AGN_ERR_PRIOR;
    return 0;
}

int agn_weights_open(agn_weights_t *weights, const uint8_t *image, uint32_t length) {
    uint32_t i, end = AGN_IMAGE_HEADER_BYTES;
    if (weights == NULL || image == NULL) return AGN_ERR_ARGUMENT;
    clear_weights(weights);
    if (length < AGN_IMAGE_HEADER_BYTES) return AGN_ERR_SHORT;
    if (!same_bytes(image, (const uint8_t *)"AGW1", 4)) return AGN_ERR_MAGIC;
    if (agn_rd16(image + 4) != FORMAT_VERSION) return AGN_ERR_VERSION;
    if (agn_rd16(image + 6) != AGN_IMAGE_HEADER_BYTES) return AGN_ERR_HEADER;
    if (agn_rd32(image + 16) != length) return AGN_ERR_LENGTH;
    if (!same_bytes(image + 20, compiled_dims, sizeof compiled_dims)) return AGN_ERR_DIMS;
    for (i = 0; i < AGN_SECTIONS; i++) {
        uint32_t offset = agn_rd32(image + 32u + 8u * i), len = agn_rd32(image + 36u + 8u * i);
        if (offset % 4u != 0u) return AGN_ERR_ALIGN;
        /* In order, after the header and the previous section, and inside the image
         * (written so that no sum can wrap). */
        if (offset < end || offset > length || len > length - offset) return AGN_ERR_BOUNDS;
        if (i < SEC_PRIOR && len != expected_len[i]) return AGN_ERR_SECTION_SIZE;
        weights->section[i] = image + offset;
        weights->section_len[i] = len;
        end = offset + len;
    }
    {
        int rc = check_values(weights);
        if (rc != 0) {
            clear_weights(weights);
            return rc;
        }
    }
    weights->image = image;
    weights->length = length;
    return 0;
}

const char *agn_weights_error(int code) {
    switch (code) {
    case 0: return "ok";
    case AGN_ERR_ARGUMENT: return "null argument";
    case AGN_ERR_SHORT: return "image shorter than the AGW1 header";
    case AGN_ERR_MAGIC: return "not an AGW1 image (bad magic)";
    case AGN_ERR_VERSION: return "unsupported AGW1 format version";
    case AGN_ERR_HEADER: return "header size is not that of 18 sections";
    case AGN_ERR_LENGTH: return "image length differs from its header";
    case AGN_ERR_DIMS: return "dims differ from those this firmware was compiled for";
    case AGN_ERR_ALIGN: return "a section is not 4-byte aligned";
    case AGN_ERR_BOUNDS: return "a section lies outside the image or overlaps another";
    case AGN_ERR_SECTION_SIZE: return "a section's length does not match the dims";
    case AGN_ERR_REQUANT: return "a requantisation multiplier, shift or limit is out of range";
    case AGN_ERR_BIAS: return "a bias exceeds +-2^30";
    case AGN_ERR_SCALE: return "a logit scale is not finite";
    case AGN_ERR_LUT: return "the centroid table names a symbol beyond the centroids";
    case AGN_ERR_PRIOR: return "the rans prior is malformed or codes another shape";
    case AGN_ERR_PAYLOAD_SPACE: return "the payload does not fit its buffer";
    default: return "unknown error";
    }
}

const uint8_t *agn_weights_model_hash(const agn_weights_t *weights) {
    return weights->image + 8;
}

uint8_t *agn_input_buffer(void) {
    return arena + AGN_ARENA_INPUT;
}

/* ------------------------------------------------------------------ the kernels */

/* The largest output row a 3x3 conv writes: its accumulators wait on the stack for requantisation. */
#define MAX_ROW (AGN_STEM_W > AGN_FEAT_W ? AGN_STEM_W : AGN_FEAT_W)
/* The pointwise conv's accumulators per pass (a0..a3 in pointwise()): each weight it loads serves this
 * many pixels. */
#define PW_GROUP 4u

/* One output channel's bias and requantisation, read from the image once per channel rather than
 * once per output. */
typedef struct {
    int32_t bias;
    int32_t mult;
    uint32_t shift;  /* in [1, 62] (the image check guarantees it) */
    uint32_t qmax;   /* in [0, 255] */
} requant_t;

static requant_t load_requant(const agn_weights_t *w, int bias_section, uint32_t channel, int32_t qmax) {
    requant_t rq;
    rq.bias = rd_i32(w->section[bias_section] + 4u * channel);
    rq.mult = rd_i32(w->section[bias_section + 1] + 4u * channel);
    rq.shift = (uint32_t)rd_i32(w->section[bias_section + 2] + 4u * channel);
    rq.qmax = (uint32_t)qmax;
    return rq;
}

/* clamp((acc * mult + 2^(shift-1)) >> shift, 0, qmax) with a flooring shift: a negative sum floors
 * to a negative value and clamps to 0, so only non-negative values are ever shifted. The general
 * case, in int64. */
static uint8_t requantize(int32_t acc, const requant_t *rq) {
    const int64_t sum = (int64_t)acc * rq->mult + ((int64_t)1 << (rq->shift - 1u));
    uint64_t y;
    if (sum < 0) return 0;
    y = (uint64_t)sum >> rq->shift;
    return (uint8_t)(y > rq->qmax ? rq->qmax : y);
}

/* requantize() of n accumulators. Where shift >= 33 (M < 2^-2, every layer of the shipped models)
 * the rounding term 2^(shift-1) is a whole multiple of 2^32: it adds 2^(shift-33) to the high word
 * of acc * mult, and the low word adds less than one output step, which the flooring shift drops.
 * So y = (high + 2^(shift-33)) >> (shift-32) exactly, with one 32x32->64 multiply and no 64-bit
 * add or shift. */
static void requantize_row(const int32_t *acc, uint32_t n, const requant_t *rq, uint8_t *out) {
    uint32_t i;
    if (rq->shift >= 33u) {
        const int32_t mult = rq->mult;
        const uint32_t round = 1u << (rq->shift - 33u), shift = rq->shift - 32u, qmax = rq->qmax;
        for (i = 0; i < n; i++) {
            /* the product's two's complement bits; |high + round| < 2^30, so bit 31 is the sign */
            const uint32_t high = (uint32_t)((uint64_t)((int64_t)acc[i] * mult) >> 32) + round;
            const uint32_t y = high >= 0x80000000u ? 0u : high >> shift;
            out[i] = (uint8_t)(y > qmax ? qmax : y);
        }
    } else {
        for (i = 0; i < n; i++) out[i] = requantize(acc[i], rq);
    }
}

/* A 3x3 kernel widened once to int32, the operand the multiply-accumulates want, rows top to
 * bottom. */
typedef struct {
    int32_t k[9];
} kernel_t;

/* A window whose left column is padding: the taps of columns 0 and 1 (p) with the kernel's right two
 * columns. */
static int32_t window_left(const uint8_t *p, uint32_t w, const kernel_t *k) {
    return p[0] * k->k[1] + p[1] * k->k[2] + p[w] * k->k[4] + p[w + 1u] * k->k[5] + p[2u * w] * k->k[7] +
           p[2u * w + 1u] * k->k[8];
}

/* A window whose right column is padding: the taps of the plane's last two columns (p) with the
 * kernel's left two columns. */
static int32_t window_right(const uint8_t *p, uint32_t w, const kernel_t *k) {
    return p[0] * k->k[0] + p[1] * k->k[1] + p[w] * k->k[3] + p[w + 1u] * k->k[4] + p[2u * w] * k->k[6] +
           p[2u * w + 1u] * k->k[7];
}

/* The accumulators of one output row of a padding-1 3x3 conv over one plane (in_w >= 2), bias
 * included. row is the first of the three input rows the kernel covers. Column 0 always reaches
 * into the left padding, the last column into the right padding only where the stride lands it
 * there; the columns between read nine taps with no checks, the weights held in locals (acc is
 * written through a pointer the compiler cannot tell apart from the kernel's). */
static inline void conv_row(const uint8_t *row, uint32_t in_w, uint32_t stride, uint32_t out_w,
                            const kernel_t *kernel, int32_t bias, int32_t *acc) {
    const int32_t k0 = kernel->k[0], k1 = kernel->k[1], k2 = kernel->k[2];
    const int32_t k3 = kernel->k[3], k4 = kernel->k[4], k5 = kernel->k[5];
    const int32_t k6 = kernel->k[6], k7 = kernel->k[7], k8 = kernel->k[8];
    const uint32_t right_pad = (out_w - 1u) * stride + 1u >= in_w ? 1u : 0u;
    const uint8_t *p = row + stride - 1u;  /* output column 1's window starts at input stride - 1 */
    int32_t *end = acc + out_w - right_pad, *a;
    acc[0] = bias + window_left(row, in_w, kernel);
    for (a = acc + 1; a < end; a++, p += stride) {
        const uint8_t *q = p + in_w, *r = p + 2u * in_w;
        *a = bias + p[0] * k0 + p[1] * k1 + p[2] * k2 + q[0] * k3 + q[1] * k4 + q[2] * k5 +
             r[0] * k6 + r[1] * k7 + r[2] * k8;
    }
    if (right_pad && out_w > 1u) acc[out_w - 1u] = bias + window_right(row + in_w - 2u, in_w, kernel);
}

/* One output channel of a padding-1 3x3 conv over a single input plane of at least 3 x 2.
 * A window that reaches into the top or bottom padding row reads the nearest three real rows
 * instead, with a kernel whose rows are moved down or up and zero where they meet a row the window
 * does not cover: every read stays inside the plane and no tap needs a bounds check. Inline so that
 * each layer gets its plane size as constants. */
static inline void conv_plane(const uint8_t *in, uint32_t in_h, uint32_t in_w, uint32_t stride,
                              const int8_t *weights, const requant_t *rq, uint8_t *out) {
    const uint32_t out_h = (in_h - 1u) / stride + 1u, out_w = (in_w - 1u) / stride + 1u;
    int32_t acc[MAX_ROW];
    kernel_t mid, top, bottom;
    uint32_t i, oy;
    for (i = 0; i < 9u; i++) {
        mid.k[i] = weights[i];
        top.k[i] = i < 6u ? weights[i + 3u] : 0;      /* kernel rows 1, 2 over input rows 0, 1 */
        bottom.k[i] = i < 3u ? 0 : weights[i - 3u];   /* kernel rows 0, 1 over the last two rows */
    }
    for (oy = 0; oy < out_h; oy++) {
        /* The window's first input row is oy * stride - 1 (<= in_h - 2: its middle row is always real). */
        const kernel_t *k = &mid;
        uint32_t first = oy * stride - 1u;
        if (oy == 0u) {  /* starts in the top padding */
            k = &top;
            first = 0;
        } else if (first + 2u >= in_h) {  /* ends in the bottom padding */
            k = &bottom;
            first = in_h - 3u;
        }
        conv_row(in + first * in_w, in_w, stride, out_w, k, rq->bias, acc);
        requantize_row(acc, out_w, rq, out + oy * out_w);
    }
}

/* The general padding-1 3x3 conv, with a bounds check per tap: for stems of more than one input
 * channel and planes too small for conv_plane. Output channel o reads per_out input channels
 * starting at o * in_step (the stem: all of them, in_step 0; the depthwise conv: its own, in_step 1). */
static void conv3x3_checked(const agn_weights_t *w, int first_section, const uint8_t *in, uint32_t in_h,
                            uint32_t in_w, uint32_t per_out, uint32_t in_step, uint32_t out_ch, uint32_t stride,
                            int32_t qmax, uint8_t *out) {
    const int8_t *weights = (const int8_t *)w->section[first_section];
    const uint32_t out_h = (in_h - 1u) / stride + 1u, out_w = (in_w - 1u) / stride + 1u;
    uint32_t o, oy, ox, c, ky, kx;
    for (o = 0; o < out_ch; o++) {
        const requant_t rq = load_requant(w, first_section + 1, o, qmax);
        const int8_t *kernel = weights + o * per_out * 9u;
        const uint8_t *plane0 = in + o * in_step * in_h * in_w;
        for (oy = 0; oy < out_h; oy++) {
            for (ox = 0; ox < out_w; ox++) {
                int32_t acc = rq.bias;
                for (c = 0; c < per_out; c++) {
                    const uint8_t *plane = plane0 + c * in_h * in_w;
                    const int8_t *k = kernel + c * 9u;
                    for (ky = 0; ky < 3u; ky++) {
                        /* iy = oy * stride + ky - 1, skipped where it falls in the zero padding */
                        const uint32_t iy = oy * stride + ky;
                        if (iy < 1u || iy > in_h) continue;
                        for (kx = 0; kx < 3u; kx++) {
                            const uint32_t ix = ox * stride + kx;
                            if (ix < 1u || ix > in_w) continue;
                            acc += (int32_t)plane[(iy - 1u) * in_w + (ix - 1u)] * (int32_t)k[ky * 3u + kx];
                        }
                    }
                }
                *out++ = requantize(acc, &rq);
            }
        }
    }
}

/* conv_plane needs a plane of at least 3 rows and 2 columns. */
#define PLANE_FITS(h, w) ((h) >= 3 && (w) >= 2)

/* The stem: with one input channel every output channel is a conv over the image plane. */
static void stem(const agn_weights_t *w, const uint8_t *in, int32_t qmax, uint8_t *out) {
    const int8_t *weights = (const int8_t *)w->section[SEC_STEM_W];
    uint32_t o;
    if (AGN_IN_CH != 1 || !PLANE_FITS(AGN_IN_H, AGN_IN_W)) {
        conv3x3_checked(w, SEC_STEM_W, in, AGN_IN_H, AGN_IN_W, AGN_IN_CH, 0u, AGN_STEM_CH, AGN_STEM_STRIDE,
                        qmax, out);
        return;
    }
    for (o = 0; o < AGN_STEM_CH; o++) {
        const requant_t rq = load_requant(w, SEC_STEM_B, o, qmax);
        conv_plane(in, AGN_IN_H, AGN_IN_W, AGN_STEM_STRIDE, weights + 9u * o, &rq,
                   out + o * (AGN_STEM_H * AGN_STEM_W));
    }
}

/* The depthwise conv: output channel o is a conv over stem plane o. */
static void depthwise(const agn_weights_t *w, const uint8_t *in, int32_t qmax, uint8_t *out) {
    const int8_t *weights = (const int8_t *)w->section[SEC_DW_W];
    uint32_t o;
    if (!PLANE_FITS(AGN_STEM_H, AGN_STEM_W)) {
        conv3x3_checked(w, SEC_DW_W, in, AGN_STEM_H, AGN_STEM_W, 1u, 1u, AGN_STEM_CH, AGN_DW_STRIDE, qmax, out);
        return;
    }
    for (o = 0; o < AGN_STEM_CH; o++) {
        const requant_t rq = load_requant(w, SEC_DW_B, o, qmax);
        conv_plane(in + o * (AGN_STEM_H * AGN_STEM_W), AGN_STEM_H, AGN_STEM_W, AGN_DW_STRIDE, weights + 9u * o,
                   &rq, out + o * FEAT_PIXELS);
    }
}

/* Pointwise 1x1 conv, out[f][p] = requant(bias[f] + sum_s in[s][p] * w[f][s]), PW_GROUP pixels at a
 * time so that each weight load serves PW_GROUP multiply-accumulates. */
static void pointwise(const agn_weights_t *w, const uint8_t *in, int32_t qmax, uint8_t *out) {
    const int8_t *weights = (const int8_t *)w->section[SEC_PW_W];
    int32_t acc[PW_GROUP];
    uint32_t f, p, s;
    for (f = 0; f < AGN_FEAT_CH; f++) {
        const requant_t rq = load_requant(w, SEC_PW_B, f, qmax);
        const int8_t *row = weights + f * AGN_STEM_CH;
        uint8_t *dst = out + f * FEAT_PIXELS;
        for (p = 0; p + PW_GROUP <= FEAT_PIXELS; p += PW_GROUP) {
            const uint8_t *x = in + p;
            int32_t a0 = rq.bias, a1 = rq.bias, a2 = rq.bias, a3 = rq.bias;
            for (s = 0; s < AGN_STEM_CH; s++, x += FEAT_PIXELS) {
                const int32_t k = row[s];
                a0 += x[0] * k;
                a1 += x[1] * k;
                a2 += x[2] * k;
                a3 += x[3] * k;
            }
            acc[0] = a0;
            acc[1] = a1;
            acc[2] = a2;
            acc[3] = a3;
            requantize_row(acc, PW_GROUP, &rq, dst + p);
        }
        for (; p < FEAT_PIXELS; p++) {  /* the pixels left over from the groups */
            int32_t sum = rq.bias;
            for (s = 0; s < AGN_STEM_CH; s++) sum += in[s * FEAT_PIXELS + p] * (int32_t)row[s];
            dst[p] = requantize(sum, &rq);
        }
    }
}

uint16_t agn_f32_to_f16(float value) {
    uint32_t bits, sign, exponent, mantissa, half, rest, halfway, shift;
    int32_t e;
    f32_bits_t u;
    u.value = value;
    bits = u.bits;
    sign = (bits >> 16) & 0x8000u;
    exponent = (bits >> 23) & 0xFFu;
    mantissa = bits & 0x7FFFFFu;
    if (exponent == 0xFFu) {  /* inf stays inf; a NaN keeps its top payload bits and stays a NaN */
        half = 0x7C00u | (mantissa >> 13);
        if (mantissa != 0u && half == 0x7C00u) half++;
        return (uint16_t)(sign | half);
    }
    e = (int32_t)exponent - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7C00u);
    if (e >= 1) {  /* normal: drop 13 mantissa bits, ties to even; a carry may reach inf, as it should */
        half = ((uint32_t)e << 10) | (mantissa >> 13);
        rest = mantissa & 0x1FFFu;
        if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    /* subnormal half (or zero): the value in units of 2^-24 is (1.mantissa) >> shift */
    if (exponent == 0u) return (uint16_t)sign;  /* float zero or subnormal: far below 2^-25 */
    shift = (uint32_t)(14 - e);
    if (shift > 25u) return (uint16_t)sign;
    mantissa |= 0x800000u;
    half = mantissa >> shift;
    rest = mantissa & ((1u << shift) - 1u);
    halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (half & 1u))) half++;
    return (uint16_t)(sign | half);
}

/* The float logit, its half bits and the running argmax (the first on a tie) of class j. */
static void local_logit(const agn_weights_t *w, uint32_t j, int32_t acc, float *best, agn_result_t *result) {
    const float logit = (float)acc * rd_f32(w->section[SEC_LOCAL_SCALE] + 4u * j);  /* one float32 multiply */
    result->acc[j] = acc;
    result->logits_f16[j] = agn_f32_to_f16(logit);
    if (j == 0u || logit > *best) {
        *best = logit;
        result->local_class = (uint8_t)j;
    }
}

/* The local linear layer, two classes per pass over the features so that each feature load serves
 * two multiply-accumulates. */
static void local_predictor(const agn_weights_t *w, const uint8_t *features, agn_result_t *result) {
    const int8_t *weights = (const int8_t *)w->section[SEC_LOCAL_W];
    float best = 0.0f;
    uint32_t j, i;
    for (j = 0; j + 2u <= AGN_CLASSES; j += 2u) {
        const int8_t *row0 = weights + j * LOCAL_INPUTS, *row1 = row0 + LOCAL_INPUTS;
        int32_t acc0 = rd_i32(w->section[SEC_LOCAL_B] + 4u * j);
        int32_t acc1 = rd_i32(w->section[SEC_LOCAL_B] + 4u * (j + 1u));
        for (i = 0; i < LOCAL_INPUTS; i++) {
            const int32_t x = features[i];
            acc0 += x * row0[i];
            acc1 += x * row1[i];
        }
        local_logit(w, j, acc0, &best, result);
        local_logit(w, j + 1u, acc1, &best, result);
    }
    if (j < AGN_CLASSES) {  /* an odd class count leaves one */
        const int8_t *row = weights + j * LOCAL_INPUTS;
        int32_t acc = rd_i32(w->section[SEC_LOCAL_B] + 4u * j);
        for (i = 0; i < LOCAL_INPUTS; i++) acc += (int32_t)features[i] * row[i];
        local_logit(w, j, acc, &best, result);
    }
}

int agn_infer(const agn_weights_t *weights, const uint8_t *image, agn_result_t *result,
              uint8_t *payload, uint16_t payload_cap) {
    uint8_t *input = arena + AGN_ARENA_INPUT;
    uint8_t *stem_out = arena + AGN_ARENA_STEM;
    uint8_t *dw = arena + AGN_ARENA_DW;
    uint8_t *pw = arena + AGN_ARENA_PW;
    const uint8_t *qmax = NULL;
    uint32_t length = 0;
    if (weights == NULL || weights->image == NULL || image == NULL || result == NULL || payload == NULL)
        return AGN_ERR_ARGUMENT;
    qmax = weights->section[SEC_QMAX];
    if (image != input) {
        uint32_t i;
        for (i = 0; i < AGN_IMAGE_BYTES; i++) input[i] = image[i];
    }
    /* Steps of the memory plan: 0 input -> stem, 1 stem -> dw, 2 dw -> pw, 3 pw -> logits, payload. */
    stem(weights, input, rd_i32(qmax), stem_out);
    depthwise(weights, stem_out, rd_i32(qmax + 4), dw);
    pointwise(weights, dw, rd_i32(qmax + 8), pw);
    local_predictor(weights, pw, result);
    result->payload_len = 0;
    if (agn_rans_encode(weights->section[SEC_PRIOR], pw + LOCAL_INPUTS, weights->section[SEC_LUT], payload,
                        payload_cap, &length) != AGN_RANS_OK) return AGN_ERR_PAYLOAD_SPACE;
    result->payload_len = (uint16_t)length;
    return 0;
}
