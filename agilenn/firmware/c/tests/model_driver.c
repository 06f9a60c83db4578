/* model_driver.c: a host-only harness that runs the C model for tests/test_firmware_int8.py.
 *
 *   model_driver IMAGE      open the AGW1 file (or "--default": the compiled-in slot A), then per
 *                           AGN_IMAGE_BYTES image on stdin write: acc (classes x int32 LE),
 *                           logits_f16 (classes x u16 LE), local_class (u8), payload_len (u16 LE),
 *                           payload
 *   model_driver --f16      per 4-byte float on stdin write its u16 half bits
 *   model_driver --rans IMAGE CAP
 *                           per (F - k) x FH x FW symbol bytes on stdin write u16 length and the
 *                           payload, or length 0xFFFF if it does not fit CAP bytes
 * An image the model refuses exits 2 with the reason on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "agn_model.h"
#include "agn_rans.h"

extern uint8_t agn_slot_a[AGN_SLOT_BYTES];
extern const uint32_t agn_default_image_len;

#define MAX_FILE (1u << 22)
#define SYMBOLS ((AGN_FEAT_CH - AGN_LOCAL_CH) * AGN_FEAT_H * AGN_FEAT_W)

static uint8_t file_buffer[MAX_FILE];

static void put_u16(uint32_t v, FILE *out) {
    fputc((int)(v & 0xFFu), out);
    fputc((int)((v >> 8) & 0xFFu), out);
}

static int open_weights(agn_weights_t *weights, const char *path) {
    const uint8_t *image = file_buffer;
    uint32_t length;
    int rc;
    if (strcmp(path, "--default") == 0) {
        image = agn_slot_a;
        length = agn_default_image_len;
    } else {
        FILE *file = fopen(path, "rb");
        if (file == NULL) {
            fprintf(stderr, "cannot open %s\n", path);
            return 1;
        }
        length = (uint32_t)fread(file_buffer, 1, MAX_FILE, file);
        fclose(file);
    }
    rc = agn_weights_open(weights, image, length);
    if (rc != 0) fprintf(stderr, "image refused: %s (code %d)\n", agn_weights_error(rc), rc);
    return rc;
}

static int run_model(const agn_weights_t *weights) {
    static uint8_t image[AGN_IMAGE_BYTES];
    static uint8_t payload[AGN_PAYLOAD_MAX];
    agn_result_t result;
    uint32_t j;
    while (fread(image, 1, AGN_IMAGE_BYTES, stdin) == AGN_IMAGE_BYTES) {
        int rc = agn_infer(weights, image, &result, payload, AGN_PAYLOAD_MAX);
        if (rc != 0) {
            fprintf(stderr, "inference failed: %s\n", agn_weights_error(rc));
            return 3;
        }
        for (j = 0; j < AGN_CLASSES; j++) {
            uint32_t bits = (uint32_t)result.acc[j];
            put_u16(bits & 0xFFFFu, stdout);
            put_u16(bits >> 16, stdout);
        }
        for (j = 0; j < AGN_CLASSES; j++) put_u16(result.logits_f16[j], stdout);
        fputc(result.local_class, stdout);
        put_u16(result.payload_len, stdout);
        fwrite(payload, 1, result.payload_len, stdout);
    }
    return 0;
}

static int run_f16(void) {
    float value;
    while (fread(&value, sizeof value, 1, stdin) == 1) put_u16(agn_f32_to_f16(value), stdout);
    return 0;
}

static int run_rans(const agn_weights_t *weights, uint32_t cap) {
    static uint8_t symbols[SYMBOLS];
    static uint8_t identity[256];
    static uint8_t payload[1u << 16];
    uint32_t i, length;
    if (cap > sizeof payload) cap = sizeof payload;
    for (i = 0; i < 256u; i++) identity[i] = (uint8_t)i;
    while (fread(symbols, 1, SYMBOLS, stdin) == SYMBOLS) {
        if (agn_rans_encode(weights->section[17], symbols, identity, payload, cap, &length) != AGN_RANS_OK) {
            put_u16(0xFFFFu, stdout);
            continue;
        }
        put_u16(length, stdout);
        fwrite(payload, 1, length, stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    agn_weights_t weights;
    if (argc == 2 && strcmp(argv[1], "--f16") == 0) return run_f16();
    if (argc == 4 && strcmp(argv[1], "--rans") == 0) {
        if (open_weights(&weights, argv[2]) != 0) return 2;
        return run_rans(&weights, (uint32_t)strtoul(argv[3], NULL, 10));
    }
    if (argc != 2) {
        fprintf(stderr, "usage: model_driver IMAGE|--default | --f16 | --rans IMAGE CAP\n");
        return 64;
    }
    if (open_weights(&weights, argv[1]) != 0) return 2;
    return run_model(&weights);
}
