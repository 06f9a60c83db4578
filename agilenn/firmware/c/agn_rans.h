/* agn_rans.h: the payload coder, the C twin of ContextPrior.encode and FeatureCodec.encode
 * (agilenn/entropy.py, agilenn/codec.py; docs/FIRMWARE.md section 1, "Payload"). */
#ifndef AGN_RANS_H
#define AGN_RANS_H
#include <stdint.h>

#define AGN_RANS_OK 0
#define AGN_RANS_ERR_PRIOR 1   /* the prior is malformed or codes another shape */
#define AGN_RANS_ERR_SPACE 2   /* the payload does not fit the buffer */

/* 0 when prior (Prior.to_bytes() of a context prior) codes n_symbols symbols of shape
 * channels x height x width, with every frequency usable by the coder; else AGN_RANS_ERR_PRIOR. */
int agn_rans_check_prior(const uint8_t *prior, uint32_t length, uint32_t channels, uint32_t height,
                         uint32_t width, uint32_t n_symbols);

/* Writes the payload of the symbols lut[values[i]] (values in channel, row, column order, the shape
 * the checked prior codes) to out: the codec header, then the rans body. The body is coded from
 * out's end backwards and then moved behind the header, so no second buffer is needed.
 * Sets *length and returns 0, or AGN_RANS_ERR_SPACE if cap bytes are too few. */
int agn_rans_encode(const uint8_t *prior, const uint8_t *values, const uint8_t *lut, uint8_t *out,
                    uint32_t cap, uint32_t *length);
#endif
