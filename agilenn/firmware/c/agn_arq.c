/* agn_arq.c: the device's ARQ endpoint (see agn_arq.h and transports/arq.py). */
#include "agn_arq.h"

static uint8_t agn_arq_distance(uint8_t a, uint8_t b) { return (uint8_t)(b - a); }

static void agn_arq_emit(agn_arq_t *arq, uint8_t kind, uint8_t seq, int more, const uint8_t *payload,
                         uint16_t length) {
    int32_t n = agn_frame_encode(kind, seq, more, payload, length, arq->out + arq->out_len,
                                 (size_t)(AGN_ARQ_OUT_MAX - arq->out_len));
    if (n < 0) {
        arq->stats.output_dropped++; /* the peer's timers recover it */
        return;
    }
    arq->out_len = (uint16_t)(arq->out_len + n);
    arq->stats.frames_sent++;
}

static void agn_arq_epoch_bytes(uint32_t epoch, uint8_t out[4]) {
    out[0] = (uint8_t)epoch;
    out[1] = (uint8_t)(epoch >> 8);
    out[2] = (uint8_t)(epoch >> 16);
    out[3] = (uint8_t)(epoch >> 24);
}

void agn_arq_init(agn_arq_t *arq, uint32_t seed) {
    uint8_t *p = (uint8_t *)arq;
    uint32_t i;
    for (i = 0; i < sizeof(*arq); i++) p[i] = 0;
    arq->seed = seed;
    arq->resetting = 1;
    arq->nak_for = -1;
}

static void agn_arq_send_reset(agn_arq_t *arq, uint32_t now) {
    uint8_t epoch[4];
    if (!arq->epoch_chosen) {
        arq->epoch = arq->seed ^ (now * 0x9E3779B1u) ^ 0xA5A5A5A5u;
        arq->epoch_chosen = 1;
    }
    agn_arq_epoch_bytes(arq->epoch, epoch);
    arq->reset_sent = 1;
    arq->reset_sent_at = now;
    agn_arq_emit(arq, AGN_FRAME_RESET, arq->next_seq, 0, epoch, 4);
}

static void agn_arq_send_fragment(agn_arq_t *arq, uint32_t now) {
    agn_arq_emit(arq, AGN_FRAME_DATA, arq->inflight_seq, arq->inflight_more, arq->tx + arq->inflight_offset,
                 arq->inflight_len);
    arq->sent_at = now;
}

static void agn_arq_pump(agn_arq_t *arq, uint32_t now) {
    uint16_t piece;
    if (arq->tx_state != AGN_ARQ_TX_BUSY) return;
    if (arq->resetting) {
        if (!arq->reset_sent) {
            arq->reset_retries = 0;
            agn_arq_send_reset(arq, now);
        }
        return;
    }
    if (arq->inflight) return;
    piece = (uint16_t)(arq->tx_len - arq->tx_offset);
    if (piece > AGN_FRAME_MAX_PAYLOAD) piece = AGN_FRAME_MAX_PAYLOAD;
    arq->inflight = 1;
    arq->inflight_offset = arq->tx_offset;
    arq->inflight_len = piece;
    arq->inflight_more = (uint8_t)(arq->tx_offset + piece < arq->tx_len);
    arq->inflight_seq = arq->next_seq;
    arq->next_seq = (uint8_t)(arq->next_seq + 1);
    arq->retries = 0;
    agn_arq_send_fragment(arq, now);
}

static void agn_arq_fail(agn_arq_t *arq, uint32_t now) {
    (void)now;
    if (arq->tx_state != AGN_ARQ_TX_BUSY) return;
    if (arq->inflight || arq->tx_offset > 0) {
        /* Part of it went out: the peer may hold fragments; restart the stream. */
        arq->inflight = 0;
        arq->resetting = 1;
        arq->reset_sent = 0;
        arq->epoch++;
        arq->stats.resets++;
    } else if (arq->resetting) {
        arq->reset_sent = 0; /* the next message starts the handshake afresh */
    }
    arq->tx_state = AGN_ARQ_TX_FAILED;
    arq->stats.messages_failed++;
}

/* A RESYNC: the peer holds no stream from us (it restarted, or another host opened the port), so it
 * delivered none of this message. Sending it again whole in a new stream loses nothing and duplicates
 * nothing, where failing it would cost the caller a timeout (a pairing HELLO, a request). Twice per
 * message at most, so two peers that keep restarting cannot hold it forever. */
static void agn_arq_resend_in_new_stream(agn_arq_t *arq, uint32_t now) {
    if (arq->resync_restarts >= AGN_ARQ_MAX_RESYNC_RESTARTS) {
        agn_arq_fail(arq, now);
        return;
    }
    arq->resync_restarts++;
    arq->inflight = 0;
    arq->tx_offset = 0;
    arq->resetting = 1;
    arq->reset_sent = 0;
    arq->epoch++;
    arq->stats.resets++;
}

int agn_arq_send(agn_arq_t *arq, const uint8_t *message, uint16_t length, uint32_t now) {
    uint16_t i;
    if (arq->tx_state == AGN_ARQ_TX_BUSY) return -1;
    if (length > AGN_ARQ_TX_MAX) return -2;
    if (message != arq->tx) {
        for (i = 0; i < length; i++) arq->tx[i] = message[i];
    }
    arq->tx_len = length;
    arq->tx_offset = 0;
    arq->inflight = 0;
    arq->resync_restarts = 0;
    arq->tx_state = AGN_ARQ_TX_BUSY;
    agn_arq_pump(arq, now);
    return 0;
}

uint8_t *agn_arq_tx_buffer(agn_arq_t *arq) { return arq->tx; }

int agn_arq_tx_state(const agn_arq_t *arq) { return arq->tx_state; }

void agn_arq_abandon(agn_arq_t *arq, uint32_t now) { agn_arq_fail(arq, now); }

static void agn_arq_on_ack(agn_arq_t *arq, uint8_t next_expected) {
    uint8_t d;
    if (!arq->inflight || arq->resetting) return;
    d = agn_arq_distance(arq->inflight_seq, next_expected);
    if (d == 0 || d > AGN_ARQ_WINDOW) return;
    arq->inflight = 0;
    arq->tx_offset = (uint16_t)(arq->inflight_offset + arq->inflight_len);
    if (!arq->inflight_more) {
        arq->tx_state = AGN_ARQ_TX_ACKED;
        arq->stats.messages_sent++;
    }
}

static void agn_arq_on_reset(agn_arq_t *arq, const agn_frame_t *frame) {
    uint8_t i, same = 1;
    if (frame->length != 4) {
        arq->stats.bad_reset++;
        return;
    }
    for (i = 0; i < 4; i++) {
        if (frame->payload[i] != arq->peer_epoch[i]) same = 0;
    }
    if (!arq->has_peer || !same) {
        arq->has_peer = 1;
        for (i = 0; i < 4; i++) arq->peer_epoch[i] = frame->payload[i];
        arq->expected = frame->seq;
        if (!arq->delivered) arq->rx_len = 0; /* a message waiting to be taken stays */
        arq->discarding = 0;
        arq->nak_for = -1;
    }
    agn_arq_emit(arq, AGN_FRAME_RESET_ACK, frame->seq, 0, frame->payload, 4);
}

static void agn_arq_accept(agn_arq_t *arq, const agn_frame_t *frame) {
    uint16_t i;
    if (arq->discarding) {
        arq->discarding = frame->more;
        return;
    }
    if ((uint32_t)arq->rx_len + frame->length > AGN_ARQ_RX_MAX) {
        arq->rx_len = 0;
        arq->discarding = frame->more;
        arq->stats.oversized++;
        return;
    }
    for (i = 0; i < frame->length; i++) arq->rx[arq->rx_len + i] = frame->payload[i];
    arq->rx_len = (uint16_t)(arq->rx_len + frame->length);
    if (!frame->more) {
        arq->delivered = 1;
        arq->stats.messages_delivered++;
    }
}

static void agn_arq_on_data(agn_arq_t *arq, const agn_frame_t *frame) {
    uint8_t ahead;
    if (!arq->has_peer) {
        arq->stats.resyncs_sent++;
        agn_arq_emit(arq, AGN_FRAME_RESYNC, frame->seq, 0, 0, 0);
        return;
    }
    ahead = agn_arq_distance(arq->expected, frame->seq);
    if (ahead >= AGN_ARQ_WINDOW) {
        arq->stats.duplicates++;
    } else if (ahead == 0) {
        if (arq->delivered) {
            arq->stats.busy_drops++; /* a message waits to be taken: the peer sends this again */
        } else {
            agn_arq_accept(arq, frame);
            arq->expected = (uint8_t)(arq->expected + 1);
            arq->nak_for = -1;
        }
    } else {
        arq->stats.out_of_order++; /* dropped: only in-order frames are kept */
        if (arq->nak_for != (int16_t)arq->expected) {
            arq->nak_for = (int16_t)arq->expected;
            agn_arq_emit(arq, AGN_FRAME_NAK, arq->expected, 0, 0, 0);
        }
    }
    agn_arq_emit(arq, AGN_FRAME_ACK, arq->expected, 0, 0, 0);
}

static void agn_arq_on_frame(agn_arq_t *arq, const agn_frame_t *frame, uint32_t now) {
    uint8_t epoch[4];
    uint8_t i, same = 1;
    switch (frame->kind) {
    case AGN_FRAME_DATA:
        agn_arq_on_data(arq, frame);
        break;
    case AGN_FRAME_ACK:
        agn_arq_on_ack(arq, frame->seq);
        break;
    case AGN_FRAME_NAK:
        agn_arq_on_ack(arq, frame->seq);
        if (arq->inflight && !arq->resetting && frame->seq == arq->inflight_seq) {
            if (arq->retries >= AGN_ARQ_MAX_RETRIES) { /* a peer NAKing forever gets no more */
                agn_arq_fail(arq, now);
                break;
            }
            arq->retries++;
            arq->stats.retransmissions++;
            agn_arq_send_fragment(arq, now);
        }
        break;
    case AGN_FRAME_RESET:
        agn_arq_on_reset(arq, frame);
        break;
    case AGN_FRAME_RESET_ACK:
        agn_arq_epoch_bytes(arq->epoch, epoch);
        if (frame->length != 4) same = 0;
        for (i = 0; same && i < 4; i++) {
            if (frame->payload[i] != epoch[i]) same = 0;
        }
        if (arq->resetting && arq->reset_sent && frame->seq == arq->next_seq && same) {
            arq->resetting = 0;
            arq->reset_sent = 0;
        }
        break;
    case AGN_FRAME_RESYNC:
        if (!arq->resetting && arq->inflight) agn_arq_resend_in_new_stream(arq, now);
        break;
    default:
        break;
    }
    agn_arq_pump(arq, now);
}

void agn_arq_receive_byte(agn_arq_t *arq, uint8_t byte, uint32_t now) {
    agn_frame_t frame;
    int code;
    if (byte != 0) {
        if (arq->in_overrun) return;
        if (arq->in_len >= sizeof(arq->in)) {
            arq->in_overrun = 1; /* skip to the next delimiter */
            arq->stats.bad_overrun++;
            return;
        }
        arq->in[arq->in_len++] = byte;
        return;
    }
    if (arq->in_overrun) {
        arq->in_overrun = 0;
        arq->in_len = 0;
        return;
    }
    if (arq->in_len == 0) return; /* an idle delimiter */
    code = agn_frame_decode(arq->in, arq->in_len, AGN_FRAME_MAX_PAYLOAD, arq->body, sizeof(arq->body), &frame);
    arq->in_len = 0;
    switch (code) {
    case 0:
        agn_arq_on_frame(arq, &frame, now);
        break;
    case AGN_FRAME_ERR_COBS: arq->stats.bad_cobs++; break;
    case AGN_FRAME_ERR_SHORT: arq->stats.bad_short++; break;
    case AGN_FRAME_ERR_CRC: arq->stats.bad_crc++; break;
    case AGN_FRAME_ERR_LENGTH: arq->stats.bad_length++; break;
    case AGN_FRAME_ERR_TOO_LONG: arq->stats.bad_too_long++; break;
    default: arq->stats.bad_kind++; break;
    }
}

void agn_arq_poll(agn_arq_t *arq, uint32_t now) {
    if (arq->tx_state != AGN_ARQ_TX_BUSY) return;
    if (arq->resetting) {
        if (arq->reset_sent && (uint32_t)(now - arq->reset_sent_at) >= AGN_ARQ_RTO_MS) {
            if (arq->reset_retries >= AGN_ARQ_MAX_RETRIES) {
                agn_arq_fail(arq, now); /* nobody answers */
                return;
            }
            arq->reset_retries++;
            arq->stats.retransmissions++;
            agn_arq_send_reset(arq, now);
        }
        return;
    }
    if (arq->inflight && (uint32_t)(now - arq->sent_at) >= AGN_ARQ_RTO_MS) {
        if (arq->retries >= AGN_ARQ_MAX_RETRIES) {
            agn_arq_fail(arq, now);
            return;
        }
        arq->retries++;
        arq->stats.retransmissions++;
        agn_arq_send_fragment(arq, now);
    }
    agn_arq_pump(arq, now);
}

uint16_t agn_arq_output(const agn_arq_t *arq, const uint8_t **data) {
    *data = arq->out;
    return arq->out_len;
}

void agn_arq_output_clear(agn_arq_t *arq) { arq->out_len = 0; }

int agn_arq_message(const agn_arq_t *arq, const uint8_t **data, uint16_t *length) {
    if (!arq->delivered) return 0;
    *data = arq->rx;
    *length = arq->rx_len;
    return 1;
}

void agn_arq_release(agn_arq_t *arq) {
    arq->delivered = 0;
    arq->rx_len = 0;
}
