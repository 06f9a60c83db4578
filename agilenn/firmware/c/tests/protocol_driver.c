/* protocol_driver.c: the protocol modules driven line by line from stdin, for tests against the
 * Python side (tests/test_firmware_protocol.py). One request per line, one answer per line;
 * binary travels as hex ("-" for empty). Build: cc -I.. -I<dir of agn_config.h> protocol_driver.c
 * ../agn_{crc32,sha256,cobs,frame,arq,msgpack,compact}.c */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agn_arq.h"
#include "agn_cobs.h"
#include "agn_compact.h"
#include "agn_crc32.h"
#include "agn_frame.h"
#include "agn_msgpack.h"
#include "agn_sha256.h"

#define MAX_BYTES 70000

static uint8_t in_a[MAX_BYTES], in_b[MAX_BYTES], out[2 * MAX_BYTES];
static char line[4 * MAX_BYTES];
static agn_arq_t arq;

static int unhex(const char *text, uint8_t *dst, size_t cap) {
    size_t n = 0;
    if (strcmp(text, "-") == 0) return 0;
    while (text[0] && text[1]) {
        unsigned v;
        if (n >= cap || sscanf(text, "%2x", &v) != 1) return -1;
        dst[n++] = (uint8_t)v;
        text += 2;
    }
    return (int)n;
}

static void hex(const uint8_t *data, size_t n) {
    size_t i;
    if (n == 0) fputs("-", stdout);
    for (i = 0; i < n; i++) printf("%02x", data[i]);
}

static void dump_str(const char *name, const uint8_t *p, uint32_t n) {
    printf(" %s=", name);
    hex(p, n);
}

static void print_message(const agn_msg_t *m) {
    printf("OK type=%u rid=%u", m->type, (unsigned)m->request_id);
    dump_str("device", m->device_id, m->device_id_len);
    dump_str("hash", m->model_hash, m->model_hash ? 8 : 0);
    switch (m->type) {
    case AGN_MSG_HELLO_REPLY:
        printf(" accepted=%u update_chunks=%u s=%d", m->accepted, (unsigned)m->update_chunks, (int)m->session);
        dump_str("reason", m->reason, m->reason_len);
        break;
    case AGN_MSG_COMMIT_REPLY:
        printf(" accepted=%u", m->accepted);
        dump_str("reason", m->reason, m->reason_len);
        break;
    case AGN_MSG_WEIGHT_CHUNK:
        printf(" index=%u crc32=%u", (unsigned)m->index, (unsigned)m->crc32);
        dump_str("data", m->data, m->data_len);
        break;
    case AGN_MSG_WEIGHT_COMMIT:
        printf(" chunks=%u", (unsigned)m->chunks);
        dump_str("sha256", m->sha256, 32);
        break;
    case AGN_MSG_ERROR:
        dump_str("code", m->code, m->code_len);
        dump_str("reason", m->reason, m->reason_len);
        break;
    case AGN_MSG_HELLO:
        printf(" cs=%u", m->compact_session);
        dump_str("firmware", m->firmware, m->firmware_len);
        break;
    case AGN_MSG_INFER_REPLY:
        printf(" c=%u", (unsigned)m->label);
        dump_str("logits", m->logits, m->logits_len);
        break;
    case AGN_MSG_INFER_REQUEST:
        dump_str("p", m->data, m->data_len);
        dump_str("logits", m->logits, m->logits_len);
        break;
    default:
        break;
    }
}

static void arq_flush(void) {
    const uint8_t *data;
    uint16_t n = agn_arq_output(&arq, &data);
    hex(data, n);
    agn_arq_output_clear(&arq);
}

int main(void) {
    agn_arq_init(&arq, 12345);
    while (fgets(line, sizeof(line), stdin)) {
        char op[32], a[16], b[16], c[16];
        char *args;
        int n, m;
        line[strcspn(line, "\n")] = 0;
        if (sscanf(line, "%31s", op) != 1) continue;
        args = line + strlen(op);
        while (*args == ' ') args++;
        if (strcmp(op, "crc") == 0) {
            n = unhex(args, in_a, MAX_BYTES);
            printf("%u", (unsigned)agn_crc32(0, in_a, (size_t)n));
        } else if (strcmp(op, "sha") == 0) {
            n = unhex(args, in_a, MAX_BYTES);
            agn_sha256(in_a, (size_t)n, out);
            hex(out, 32);
        } else if (strcmp(op, "cobs_enc") == 0) {
            n = unhex(args, in_a, MAX_BYTES);
            m = agn_cobs_encode(in_a, (size_t)n, out, sizeof(out));
            if (m < 0) fputs("ERR", stdout);
            else hex(out, (size_t)m);
        } else if (strcmp(op, "cobs_dec") == 0) {
            n = unhex(args, in_a, MAX_BYTES);
            m = agn_cobs_decode(in_a, (size_t)n, out, sizeof(out));
            if (m < 0) fputs("ERR", stdout);
            else hex(out, (size_t)m);
        } else if (strcmp(op, "frame_enc") == 0) {
            /* kind seq more payload */
            char payload[1024];
            if (sscanf(args, "%15s %15s %15s %1000s", a, b, c, payload) != 4) return 2;
            n = unhex(payload, in_a, MAX_BYTES);
            m = agn_frame_encode((uint8_t)atoi(a), (uint8_t)atoi(b), atoi(c), in_a, (uint16_t)n, out, sizeof(out));
            if (m < 0) fputs("ERR", stdout);
            else hex(out, (size_t)m);
        } else if (strcmp(op, "frame_dec") == 0) {
            agn_frame_t frame;
            uint8_t body[AGN_FRAME_BODY_MAX];
            n = unhex(args, in_a, MAX_BYTES);
            m = agn_frame_decode(in_a, (size_t)n, AGN_FRAME_MAX_PAYLOAD, body, sizeof(body), &frame);
            if (m != 0) {
                printf("ERR %d", m);
            } else {
                printf("OK %u %u %u ", frame.kind, frame.seq, frame.more);
                hex(frame.payload, frame.length);
            }
        } else if (strcmp(op, "msg_dec") == 0) {
            agn_msg_t msg;
            n = unhex(args, in_a, MAX_BYTES);
            /* decode a copy that ends where the message ends: a read past it is caught by ASan */
            {
                uint8_t *exact = (uint8_t *)malloc(n ? (size_t)n : 1u);
                memcpy(exact, in_a, (size_t)n);
                m = agn_msg_decode(exact, (uint32_t)n, &msg);
                if (m != 0) printf("ERR %d", m);
                else print_message(&msg);
                free(exact);
            }
        } else if (strcmp(op, "hello") == 0) {
            /* rid cs hash device firmware */
            char hash[40], device[80], firmware[80];
            unsigned long rid;
            if (sscanf(args, "%lu %15s %39s %79s %79s", &rid, a, hash, device, firmware) != 5) return 2;
            n = unhex(hash, in_b, 8);
            m = agn_msg_write_hello(out, sizeof(out), (uint32_t)rid, device, n == 8 ? in_b : NULL, firmware, atoi(a));
            hex(out, m < 0 ? 0 : (size_t)m);
        } else if (strcmp(op, "commit") == 0) {
            /* rid accepted hash device reason */
            char hash[40], device[80], reason[300];
            unsigned long rid;
            if (sscanf(args, "%lu %15s %39s %79s %299s", &rid, a, hash, device, reason) != 5) return 2;
            n = unhex(hash, in_b, 8);
            m = agn_msg_write_commit_reply(out, sizeof(out), (uint32_t)rid, device, n == 8 ? in_b : NULL, atoi(a),
                                           reason);
            hex(out, m < 0 ? 0 : (size_t)m);
        } else if (strcmp(op, "error") == 0) {
            char device[80], code[40], reason[300];
            unsigned long rid;
            if (sscanf(args, "%lu %79s %39s %299s", &rid, device, code, reason) != 4) return 2;
            m = agn_msg_write_error(out, sizeof(out), (uint32_t)rid, device, NULL, code, reason);
            hex(out, m < 0 ? 0 : (size_t)m);
        } else if (strcmp(op, "compact_req") == 0) {
            /* session seq logits(hex, u16 LE) payload */
            char logits[600];
            char *payload = malloc(2 * MAX_BYTES);
            uint16_t halves[256];
            int i;
            if (sscanf(args, "%15s %15s %599s %139999s", a, b, logits, payload) != 4) return 2;
            n = unhex(logits, in_b, sizeof(in_b));
            for (i = 0; i < n / 2; i++) halves[i] = (uint16_t)(in_b[2 * i] | (in_b[2 * i + 1] << 8));
            m = unhex(payload, in_a, MAX_BYTES);
            n = agn_compact_write_request(out, sizeof(out), (uint16_t)atoi(a), (uint8_t)atoi(b), halves,
                                          (uint8_t)(n / 2), in_a, (uint32_t)m);
            if (n < 0) fputs("ERR", stdout);
            else hex(out, (size_t)n);
            free(payload);
        } else if (strcmp(op, "compact_rep") == 0) {
            agn_compact_reply_t r;
            uint8_t *exact;
            n = unhex(args, in_a, MAX_BYTES);
            exact = (uint8_t *)malloc(n ? (size_t)n : 1u);
            memcpy(exact, in_a, (size_t)n);
            if (agn_compact_read_reply(exact, (uint32_t)n, &r) != 0) {
                fputs("ERR", stdout);
            } else {
                printf("OK kind=%u seq=%u session=%u label=%u classes=%u merged=%u code=%u unknown_session=%u",
                       r.kind, r.sequence, r.session, r.label, r.classes, r.merged, r.code, r.unknown_session);
            }
            free(exact);
        } else if (strcmp(op, "arq_send") == 0) { /* now message -> output */
            char *message = malloc(2 * MAX_BYTES);
            unsigned long now;
            if (sscanf(args, "%lu %139999s", &now, message) != 2) return 2;
            n = unhex(message, in_a, MAX_BYTES);
            m = agn_arq_send(&arq, in_a, (uint16_t)n, (uint32_t)now);
            printf("%d ", m);
            arq_flush();
            free(message);
        } else if (strcmp(op, "arq_feed") == 0) { /* now bytes -> output */
            char *bytes = malloc(2 * MAX_BYTES);
            unsigned long now;
            int i;
            if (sscanf(args, "%lu %139999s", &now, bytes) != 2) return 2;
            n = unhex(bytes, in_a, MAX_BYTES);
            for (i = 0; i < n; i++) agn_arq_receive_byte(&arq, in_a[i], (uint32_t)now);
            arq_flush();
            free(bytes);
        } else if (strcmp(op, "arq_init") == 0) {
            agn_arq_init(&arq, (uint32_t)strtoul(args, NULL, 10));
        } else if (strcmp(op, "arq_poll") == 0) {
            agn_arq_poll(&arq, (uint32_t)strtoul(args, NULL, 10));
            arq_flush();
        } else if (strcmp(op, "arq_state") == 0) {
            const uint8_t *data;
            uint16_t length;
            printf("%d ", agn_arq_tx_state(&arq));
            if (agn_arq_message(&arq, &data, &length)) {
                hex(data, length);
                agn_arq_release(&arq);
            } else {
                fputs("none", stdout);
            }
        } else {
            printf("ERR unknown op %s", op);
        }
        putchar('\n');
        fflush(stdout);
    }
    return 0;
}
