/* agn_device.c: the device side of docs/FIRMWARE.md sections 3 and 4. */
#include "agn_device.h"
#include "agn_arq.h"
#include "agn_bytes.h"
#include "agn_compact.h"
#include "agn_crc32.h"
#include "agn_model.h"
#include "agn_msgpack.h"
#include "agn_port.h"
#include "agn_sha256.h"

/* Slot B and the boot record live in flash (mps2.ld); slot A comes with the default image. */
uint8_t agn_slot_b[AGN_SLOT_BYTES] __attribute__((aligned(4), section(".agn_slot_b")));
/* Two records of 16 bytes: "AGB1", u32 generation, u32 slot, u32 CRC-32 of the first 12 bytes.
 * The valid one with the higher generation names the active slot; a commit rewrites the older one,
 * so a write cut midway leaves the other record standing. None valid: slot A. */
uint8_t agn_boot_record[AGN_BOOT_RECORD_BYTES] __attribute__((aligned(4), section(".agn_boot")));

#define AGN_REASON_MAX 96
/* The full messages the device writes, HELLO and COMMIT_REPLY: the device id and the longest reason
 * (or the firmware string) plus msgpack's envelope and keys, which take under 96 bytes. */
#define AGN_MSG_MAX (sizeof(AGN_DEVICE_ID) + AGN_REASON_MAX + sizeof(AGN_FIRMWARE) + 96)

static agn_arq_t agn_link;
static agn_weights_t agn_weights;
static uint8_t agn_weights_ok;
static uint8_t agn_active;             /* 0: slot A, 1: slot B */
static uint32_t agn_generation;
static uint8_t agn_payload[AGN_PAYLOAD_MAX];
static uint8_t agn_msg[AGN_MSG_MAX];
static agn_device_stats_t agn_stats;
static uint32_t agn_hello_id;          /* pairing HELLOs count up from 1 */
static uint32_t agn_request_id;        /* compact requests */
static int32_t agn_session = -1;
static uint32_t agn_overhead;          /* what an empty measured region counts */
static char agn_reason[AGN_REASON_MAX];
static uint8_t agn_final;              /* the last pairing attempt's outcome is not worth repeating */
static agn_msg_t agn_in;               /* the last decoded message */

/* console request being received */
static uint8_t agn_cmd;
static uint32_t agn_cmd_need, agn_cmd_have, agn_cmd_last;
static uint8_t agn_cmd_args[4];

static const uint8_t agn_zero_hash[8] = {0, 0, 0, 0, 0, 0, 0, 0};

/* ------------------------------------------------------------------ helpers */

static int same(const uint8_t *a, const uint8_t *b, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++) {
        if (a[i] != b[i]) return 0;
    }
    return 1;
}

static void set_reason(const char *text) {
    uint32_t i = 0;
    while (text[i] != '\0' && i < AGN_REASON_MAX - 1) {
        agn_reason[i] = text[i];
        i++;
    }
    agn_reason[i] = '\0';
}

/* reason = prefix + the peer's text (bounded, bytes copied as they are) */
static void set_reason2(const char *prefix, const uint8_t *text, uint32_t length) {
    uint32_t i = 0, j;
    while (prefix[i] != '\0' && i < AGN_REASON_MAX - 1) {
        agn_reason[i] = prefix[i];
        i++;
    }
    for (j = 0; j < length && i < AGN_REASON_MAX - 1; j++) {
        agn_reason[i++] = (text[j] == 0) ? '?' : (char)text[j];
    }
    agn_reason[i] = '\0';
}

static uint8_t *slot(uint8_t index) { return index ? agn_slot_b : agn_slot_a; }

static const uint8_t *model_hash(void) { return agn_weights_ok ? agn_weights_model_hash(&agn_weights) : 0; }

/* ------------------------------------------------------------------ slots and the boot record */
static int open_slot(uint8_t index) {
    const uint8_t *image = slot(index);
    uint32_t length = agn_rd32(image + 16);
    if (length > AGN_SLOT_BYTES) return -1;
    return agn_weights_open(&agn_weights, image, length) == 0 ? 0 : -1;
}

static void boot(void) {
    uint8_t r, best = 0xFF;
    uint32_t best_generation = 0;
    for (r = 0; r < 2; r++) {
        const uint8_t *rec = agn_boot_record + 16 * r;
        if (same(rec, (const uint8_t *)"AGB1", 4) && agn_rd32(rec + 12) == agn_crc32(0, rec, 12) && agn_rd32(rec + 8) < 2 &&
            (best == 0xFF || agn_rd32(rec + 4) > best_generation)) {
            best = r;
            best_generation = agn_rd32(rec + 4);
        }
    }
    agn_active = best == 0xFF ? 0 : (uint8_t)agn_rd32(agn_boot_record + 16 * best + 8);
    agn_generation = best == 0xFF ? 0 : best_generation;
    agn_weights_ok = open_slot(agn_active) == 0;
    if (!agn_weights_ok && open_slot((uint8_t)(1 - agn_active)) == 0) {
        agn_active = (uint8_t)(1 - agn_active); /* the named slot is broken: run the other one */
        agn_weights_ok = 1;
    }
}

static int switch_slot(uint8_t index) {
    uint8_t rec[16];
    uint32_t generation = agn_generation + 1;
    rec[0] = 'A'; rec[1] = 'G'; rec[2] = 'B'; rec[3] = '1';
    agn_wr32(rec + 4, generation);
    agn_wr32(rec + 8, index);
    agn_wr32(rec + 12, agn_crc32(0, rec, 12));
    if (agn_port_flash_write(agn_boot_record + 16 * (generation & 1u), rec, 16) != 0) return -1;
    agn_generation = generation;
    agn_active = index;
    return 0;
}

/* ------------------------------------------------------------------ the link */
static void flush_link(void) {
    const uint8_t *out;
    uint16_t n = agn_arq_output(&agn_link, &out);
    if (n) {
        agn_port_link_write(out, n);
        agn_arq_output_clear(&agn_link);
    }
}

/* Reads what the link UART holds (stopping at a whole message unless always), runs the timers. */
static int pump_link(int always) {
    const uint8_t *data;
    uint16_t length;
    int worked = 0, byte;
    uint32_t now = agn_port_millis();
    while (always || !agn_arq_message(&agn_link, &data, &length)) {
        byte = agn_port_link_read();
        if (byte < 0) break;
        worked = 1;
        agn_arq_receive_byte(&agn_link, (uint8_t)byte, now);
        flush_link();
    }
    agn_arq_poll(&agn_link, now);
    flush_link();
    return worked;
}

static int expired(uint32_t deadline) { return (int32_t)(agn_port_millis() - deadline) >= 0; }

/* Sends a message (built in agn_arq_tx_buffer or elsewhere); 0 once acknowledged, -1 if it failed or
 * the deadline passed. */
static int link_send(const uint8_t *message, uint16_t length, uint32_t deadline) {
    if (agn_arq_send(&agn_link, message, length, agn_port_millis()) != 0) return -1;
    for (;;) {
        int state;
        pump_link(1);
        state = agn_arq_tx_state(&agn_link);
        if (state == AGN_ARQ_TX_ACKED) return 0;
        if (state == AGN_ARQ_TX_FAILED) return -1;
        if (expired(deadline)) {
            agn_arq_abandon(&agn_link, agn_port_millis());
            return -1;
        }
        agn_port_idle();
    }
}

/* The next message from the link, or 0 at the deadline. Valid until release_message. */
static int link_recv(const uint8_t **data, uint16_t *length, uint32_t deadline) {
    for (;;) {
        pump_link(0);
        if (agn_arq_message(&agn_link, data, length)) return 1;
        if (expired(deadline)) return 0;
        agn_port_idle();
    }
}

static void release_message(void) { agn_arq_release(&agn_link); }

/* The next full message of one of two types with request id `id`; others are dropped (counted).
 * 1 with agn_in filled (released already: its pointers stay valid until the next receive), or 0. */
static int expect_message(uint8_t type, uint8_t other_type, uint32_t id, uint32_t deadline) {
    const uint8_t *data;
    uint16_t length;
    while (link_recv(&data, &length, deadline)) {
        int code = agn_msg_decode(data, length, &agn_in);
        /* The arq's buffer is not reused before the next receive: keep the pointers, free the slot. */
        release_message();
        if (code == 0 && agn_in.request_id == id && (agn_in.type == type || agn_in.type == other_type)) return 1;
        agn_stats.link_dropped++;
    }
    return 0;
}

/* ------------------------------------------------------------------ pairing */
static int send_hello(uint32_t id, int compact, uint32_t deadline) {
    int32_t n = agn_msg_write_hello(agn_msg, sizeof(agn_msg), id, AGN_DEVICE_ID, model_hash(), AGN_FIRMWARE,
                                    compact);
    if (n < 0) return -1;
    return link_send(agn_msg, (uint16_t)n, deadline);
}

/* One pairing attempt: the outcome (AGN_PAIR_*), agn_reason says why. */
static uint8_t pair_once(uint32_t timeout_ms) {
    uint32_t id = ++agn_hello_id, chunks, index, used = 0;
    uint8_t target = (uint8_t)(1 - agn_active);
    uint8_t host_hash[8], digest[32];
    int have_hash, problem = 0, code;
    agn_weights_t candidate;
    int32_t n;
    if (send_hello(id, 0, agn_port_millis() + timeout_ms) != 0) {
        set_reason("HELLO not acknowledged");
        return AGN_PAIR_FAILED;
    }
    if (!expect_message(AGN_MSG_HELLO_REPLY, AGN_MSG_HELLO_REPLY, id, agn_port_millis() + timeout_ms)) {
        set_reason("no HELLO_REPLY");
        return AGN_PAIR_FAILED;
    }
    if (!agn_in.accepted) {
        set_reason2("refused by the host: ", agn_in.reason, agn_in.reason_len);
        agn_final = 1;
        return AGN_PAIR_REFUSED;
    }
    chunks = agn_in.update_chunks;
    if (chunks == 0) {
        agn_final = 1;
        set_reason2("", agn_in.reason, agn_in.reason_len);
        return AGN_PAIR_SAME;
    }
    have_hash = agn_in.model_hash != 0;
    if (have_hash) {
        for (index = 0; index < 8; index++) host_hash[index] = agn_in.model_hash[index];
    } else {
        problem = 1;
        set_reason("the push names no model hash");
    }
    for (index = 0; index < chunks; index++) {
        if (!expect_message(AGN_MSG_WEIGHT_CHUNK, AGN_MSG_ERROR, id, agn_port_millis() + timeout_ms)) {
            set_reason("push cut: a WEIGHT_CHUNK did not come");
            agn_stats.pushes_failed++;
            return AGN_PAIR_FAILED;
        }
        if (agn_in.type != AGN_MSG_WEIGHT_CHUNK) {
            set_reason2("push ended by the host: ", agn_in.reason, agn_in.reason_len);
            agn_stats.pushes_failed++;
            return AGN_PAIR_FAILED;
        }
        if (problem) continue;
        if (agn_in.index != index || agn_crc32(0, agn_in.data, agn_in.data_len) != agn_in.crc32) {
            problem = 1;
            set_reason("a chunk failed its CRC or arrived out of order");
        } else if (agn_in.data_len > AGN_SLOT_BYTES - used) {
            problem = 1;
            set_reason("image larger than the slot");
        } else if (agn_port_flash_write(slot(target) + used, agn_in.data, agn_in.data_len) != 0) {
            problem = 1;
            set_reason("flash write failed");
        } else {
            used += agn_in.data_len;
        }
    }
    if (!expect_message(AGN_MSG_WEIGHT_COMMIT, AGN_MSG_ERROR, id, agn_port_millis() + timeout_ms) ||
        agn_in.type != AGN_MSG_WEIGHT_COMMIT) {
        set_reason("push cut: no WEIGHT_COMMIT");
        agn_stats.pushes_failed++;
        return AGN_PAIR_FAILED;
    }
    if (!problem && agn_in.chunks != chunks) {
        problem = 1;
        set_reason("the commit counts other chunks than the reply");
    }
    if (!problem) {
        agn_sha256(slot(target), used, digest);
        if (!same(digest, agn_in.sha256, 32)) {
            problem = 1;
            set_reason("SHA-256 of the image does not match the commit");
        }
    }
    if (!problem && (code = agn_weights_open(&candidate, slot(target), used)) != 0) {
        problem = 1;
        const char *why = agn_weights_error(code);
        uint32_t k = 0;
        while (why[k] != '\0') k++;
        set_reason2("not a valid image: ", (const uint8_t *)why, k);
    }
    if (!problem && !same(agn_weights_model_hash(&candidate), host_hash, 8)) {
        problem = 1;
        set_reason("the image's model hash is not the one pushed");
    }
    if (!problem && switch_slot(target) != 0) {
        problem = 1;
        set_reason("boot record write failed");
    }
    if (!problem) {
        agn_final = 1;
        agn_weights = candidate;
        agn_weights_ok = 1;
        agn_session = -1; /* the session stood for the old model */
        agn_stats.pushes_applied++;
        set_reason("applied");
    } else {
        agn_stats.pushes_failed++;
    }
    n = agn_msg_write_commit_reply(agn_msg, sizeof(agn_msg), id, AGN_DEVICE_ID, have_hash ? host_hash : 0,
                                   !problem, agn_reason);
    if (n > 0) (void)link_send(agn_msg, (uint16_t)n, agn_port_millis() + timeout_ms);
    return problem ? AGN_PAIR_REFUSED : AGN_PAIR_UPDATED;
}

static void backoff(uint32_t ms) {
    const uint8_t *data;
    uint16_t length;
    uint32_t deadline = agn_port_millis() + ms;
    while (link_recv(&data, &length, deadline)) { /* the rest of a cut push: dropped */
        release_message();
        agn_stats.link_dropped++;
    }
}

/* ------------------------------------------------------------------ offloading */
/* 1 and the class when the gateway answers within the deadline; 0 for the local class. */
static int offload(const agn_result_t *result, uint8_t *label) {
    uint32_t deadline = agn_port_millis() + AGN_OFFLOAD_TIMEOUT_MS;
    const uint8_t *data;
    uint16_t length;
    uint8_t sequence;
    int32_t n;
    agn_compact_reply_t reply;
    if (agn_session < 0) {
        if (send_hello(AGN_MSG_HELLO_REQUEST_ID, 1, deadline) != 0) return 0;
        if (!expect_message(AGN_MSG_HELLO_REPLY, AGN_MSG_ERROR, AGN_MSG_HELLO_REQUEST_ID, deadline)) return 0;
        if (agn_in.type != AGN_MSG_HELLO_REPLY || !agn_in.accepted || agn_in.session < 0) return 0;
        agn_session = agn_in.session;
    }
    sequence = (uint8_t)(++agn_request_id);
    n = agn_compact_write_request(agn_arq_tx_buffer(&agn_link), AGN_ARQ_TX_MAX, (uint16_t)agn_session, sequence,
                                  result->logits_f16, AGN_CLASSES, agn_payload, result->payload_len);
    if (n < 0) return 0;
    if (link_send(agn_arq_tx_buffer(&agn_link), (uint16_t)n, deadline) != 0) return 0;
    while (link_recv(&data, &length, deadline)) {
        int ok = agn_compact_read_reply(data, length, &reply) == 0;
        release_message();
        if (!ok || reply.sequence != sequence || reply.session != (uint16_t)agn_session) {
            agn_stats.link_dropped++;
            continue;
        }
        if (reply.kind == AGN_COMPACT_INFER_REPLY && reply.classes == AGN_CLASSES && reply.label < AGN_CLASSES) {
            *label = reply.label;
            return 1;
        }
        if (reply.kind == AGN_COMPACT_ERROR && reply.unknown_session) agn_session = -1;
        return 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ the console */
static void console_error(const char *reason) {
    uint8_t head[2];
    uint32_t n = 0;
    while (reason[n] != '\0' && n < 255) n++;
    head[0] = AGN_RSP_ERROR;
    head[1] = (uint8_t)n;
    agn_port_console_write(head, 2);
    agn_port_console_write((const uint8_t *)reason, n);
}

/* Runs the model on the image in the arena's input buffer; the instructions it took. */
static int run_model(agn_result_t *result, uint32_t *instructions) {
    uint32_t start, end;
    int code;
    agn_port_irq_disable();
    start = agn_port_instructions();
    code = agn_infer(&agn_weights, agn_input_buffer(), result, agn_payload, (uint16_t)sizeof(agn_payload));
    end = agn_port_instructions();
    agn_port_irq_enable();
    *instructions = end == start ? 0 : agn_port_instructions_elapsed(start, end) - agn_overhead;
    return code;
}

/* The console's VERIFY and CLASSIFY: 0 with the model's result, or the console told why not. */
static int run_model_or_say_why(agn_result_t *result, uint32_t *instructions) {
    if (!agn_weights_ok) {
        console_error("no valid weights in either slot");
        return -1;
    }
    if (run_model(result, instructions) != 0) {
        console_error("the payload does not fit its buffer");
        return -1;
    }
    return 0;
}

static void command_verify(void) {
    agn_result_t result;
    uint32_t instructions, i;
    uint8_t buf[8];
    if (run_model_or_say_why(&result, &instructions) != 0) return;
    buf[0] = 0x81;
    agn_wr32(buf + 1, instructions);
    agn_port_console_write(buf, 5);
    for (i = 0; i < AGN_CLASSES; i++) {
        agn_wr32(buf, (uint32_t)result.acc[i]);
        agn_port_console_write(buf, 4);
    }
    for (i = 0; i < AGN_CLASSES; i++) {
        agn_wr16(buf, result.logits_f16[i]);
        agn_port_console_write(buf, 2);
    }
    agn_wr16(buf, result.payload_len);
    agn_port_console_write(buf, 2);
    agn_port_console_write(agn_payload, result.payload_len);
}

static void command_classify(void) {
    agn_result_t result;
    uint32_t instructions, started = agn_port_micros();
    uint8_t buf[12], label;
    int offloaded;
    if (run_model_or_say_why(&result, &instructions) != 0) return;
    label = result.local_class;
    offloaded = offload(&result, &label);
    if (offloaded) agn_stats.offloaded++;
    else agn_stats.local++;
    buf[0] = 0x82;
    buf[1] = offloaded ? label : result.local_class;
    buf[2] = offloaded ? 0 : 1;
    buf[3] = result.local_class;
    agn_wr32(buf + 4, instructions);
    agn_wr32(buf + 8, agn_port_micros() - started);
    agn_port_console_write(buf, 12);
}

static void command_pair(uint8_t attempts, uint16_t timeout_ms) {
    uint8_t outcome = AGN_PAIR_FAILED, used = 0, head[4];
    uint32_t n = 0;
    const uint8_t *hash;
    if (timeout_ms < 10) timeout_ms = 10;
    set_reason("no attempt asked for");
    while (used < attempts) {
        if (used > 0) backoff(AGN_PAIR_BACKOFF_MS);
        used++;
        agn_final = 0;
        outcome = pair_once(timeout_ms);
        if (agn_final) break; /* same model, updated, or the host refused: done; a failed push is retried */
    }
    while (agn_reason[n] != '\0') n++;
    head[0] = 0x83;
    head[1] = outcome;
    head[2] = used;
    head[3] = agn_active;
    agn_port_console_write(head, 4);
    hash = model_hash();
    agn_port_console_write(hash ? hash : agn_zero_hash, 8);
    head[0] = (uint8_t)n;
    agn_port_console_write(head, 1);
    agn_port_console_write((const uint8_t *)agn_reason, n);
}

static void command_status(void) {
    uint8_t buf[2 + 8 + 16];
    const uint8_t *hash = model_hash();
    uint32_t i;
    buf[0] = 0x84;
    buf[1] = agn_active;
    for (i = 0; i < 8; i++) buf[2 + i] = hash ? hash[i] : 0;
    agn_wr32(buf + 10, agn_stats.pushes_applied);
    agn_wr32(buf + 14, agn_stats.pushes_failed);
    agn_wr32(buf + 18, agn_stats.offloaded);
    agn_wr32(buf + 22, agn_stats.local);
    agn_port_console_write(buf, sizeof(buf));
}

static void command_calibrate(uint32_t n) {
    uint8_t buf[5];
    uint32_t start, end;
    agn_port_irq_disable();
    start = agn_port_instructions();
    agn_port_calibration_loop(n);
    end = agn_port_instructions();
    agn_port_irq_enable();
    buf[0] = 0x85;
    agn_wr32(buf + 1, end == start ? 0 : agn_port_instructions_elapsed(start, end) - agn_overhead);
    agn_port_console_write(buf, 5);
}

static void run_command(void) {
    switch (agn_cmd) {
    case AGN_CMD_VERIFY: command_verify(); break;
    case AGN_CMD_CLASSIFY: command_classify(); break;
    case AGN_CMD_PAIR: command_pair(agn_cmd_args[0], (uint16_t)(agn_cmd_args[1] | (agn_cmd_args[2] << 8))); break;
    case AGN_CMD_STATUS: command_status(); break;
    default: command_calibrate(agn_rd32(agn_cmd_args)); break;
    }
}

static int pump_console(void) {
    int byte, worked = 0;
    uint8_t *image = agn_input_buffer();
    if (agn_cmd && (uint32_t)(agn_port_millis() - agn_cmd_last) > AGN_CONSOLE_TIMEOUT_MS) {
        agn_cmd = 0;
        agn_stats.console_timeouts++;
        console_error("request timed out inside its fields");
    }
    while ((byte = agn_port_console_read()) >= 0) {
        worked = 1;
        agn_cmd_last = agn_port_millis();
        if (!agn_cmd) {
            agn_cmd_have = 0;
            switch (byte) {
            case AGN_CMD_VERIFY:
            case AGN_CMD_CLASSIFY: agn_cmd_need = AGN_IMAGE_BYTES; break;
            case AGN_CMD_PAIR: agn_cmd_need = 3; break;
            case AGN_CMD_STATUS: agn_cmd_need = 0; break;
            case AGN_CMD_CALIBRATE: agn_cmd_need = 4; break;
            default:
                agn_stats.console_unknown++;
                console_error("unknown command");
                continue;
            }
            agn_cmd = (uint8_t)byte;
        } else if (agn_cmd == AGN_CMD_VERIFY || agn_cmd == AGN_CMD_CLASSIFY) {
            image[agn_cmd_have++] = (uint8_t)byte;
        } else {
            agn_cmd_args[agn_cmd_have++] = (uint8_t)byte;
        }
        if (agn_cmd_have == agn_cmd_need) {
            run_command();
            agn_cmd = 0;
            return 1; /* one request at a time: the link gets its turn */
        }
    }
    return worked;
}

/* ------------------------------------------------------------------ main loop */
void agn_device_init(void) {
    uint32_t a, b;
    agn_port_init();
    agn_arq_init(&agn_link, agn_port_seed());
    boot();
    agn_port_irq_disable();
    a = agn_port_instructions();
    b = agn_port_instructions();
    agn_port_irq_enable();
    agn_overhead = agn_port_instructions_elapsed(a, b);
}

int agn_device_step(void) {
    const uint8_t *data;
    uint16_t length;
    int worked = pump_link(0);
    if (agn_arq_message(&agn_link, &data, &length)) {
        /* nobody waits for it: a late reply, a stray message */
        release_message();
        agn_stats.link_dropped++;
        worked = 1;
    }
    worked |= pump_console();
    return worked;
}

void agn_device_run(void) {
    agn_device_init();
    for (;;) {
        if (!agn_device_step()) agn_port_idle();
    }
}

const agn_device_stats_t *agn_device_stats(void) { return &agn_stats; }
