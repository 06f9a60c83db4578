/* agn_arq.h: the device's half of transports/arq.py. Sans-IO: the caller feeds received bytes and
 * a millisecond clock, and writes out what agn_arq_output gives it.
 *
 * Sender: one message at a time, one frame in flight; a RESET handshake with a 4-byte epoch
 * starts every stream; a frame unanswered for AGN_ARQ_RTO_MS or NAKed is sent again, and after
 * AGN_ARQ_MAX_RETRIES the message fails (and the stream is RESET if any of it went out); a RESYNC
 * (the peer holds no stream from us) sends the message again whole in a new stream.
 * Receiver: ACKs every DATA cumulatively, accepts frames in order only, NAKs a gap once,
 * answers RESET with RESET_ACK (a repeated epoch does not rewind it), answers DATA before any
 * RESET with RESYNC, reassembles up to AGN_ARQ_RX_MAX bytes and drops a longer message whole. */
#ifndef AGN_ARQ_H
#define AGN_ARQ_H
#include <stdint.h>
#include "agn_config.h"
#include "agn_frame.h"

#define AGN_ARQ_MAX_RESYNC_RESTARTS 2 /* a message sent again whole after the peer's RESYNC */
#define AGN_ARQ_WINDOW 8          /* the peer's window: how far ahead a cumulative ACK may point */
#define AGN_ARQ_RTO_MS 300u
#define AGN_ARQ_MAX_RETRIES 10
#ifndef AGN_ARQ_RX_MAX
#define AGN_ARQ_RX_MAX 1400
#endif
/* What the device sends: a compact INFER_REQUEST is the largest (logits and the payload). */
#ifndef AGN_ARQ_TX_MAX
#if AGN_PAYLOAD_MAX + 2 * AGN_CLASSES + 16 > 1400
#define AGN_ARQ_TX_MAX (AGN_PAYLOAD_MAX + 2 * AGN_CLASSES + 16)
#else
#define AGN_ARQ_TX_MAX 1400
#endif
#endif
#define AGN_ARQ_OUT_MAX (2 * AGN_FRAME_WIRE_MAX + 64)

#define AGN_ARQ_TX_IDLE 0
#define AGN_ARQ_TX_BUSY 1
#define AGN_ARQ_TX_ACKED 2
#define AGN_ARQ_TX_FAILED 3

typedef struct {
    uint32_t frames_sent, retransmissions, resets, messages_sent, messages_failed;
    uint32_t bad_cobs, bad_short, bad_crc, bad_length, bad_too_long, bad_kind, bad_overrun;
    uint32_t bad_reset, duplicates, out_of_order, busy_drops, oversized, messages_delivered;
    uint32_t resyncs_sent, output_dropped;
} agn_arq_stats_t;

typedef struct {
    /* sender */
    uint8_t tx[AGN_ARQ_TX_MAX];
    uint16_t tx_len, tx_offset, inflight_offset, inflight_len;
    uint8_t tx_state, inflight, inflight_seq, inflight_more, retries;
    uint32_t sent_at;
    uint8_t next_seq, resetting, reset_sent, reset_retries;
    uint32_t reset_sent_at, epoch, seed;
    uint8_t epoch_chosen, resync_restarts;
    /* receiver */
    uint8_t has_peer, peer_epoch[4], expected, discarding, delivered;
    int16_t nak_for;
    uint16_t rx_len;
    uint8_t rx[AGN_ARQ_RX_MAX];
    /* bytes of the frame being received, and its decoded body */
    uint8_t in[AGN_FRAME_STUFFED_MAX];
    uint16_t in_len;
    uint8_t in_overrun;
    uint8_t body[AGN_FRAME_BODY_MAX];
    /* frames to write */
    uint8_t out[AGN_ARQ_OUT_MAX];
    uint16_t out_len;
    agn_arq_stats_t stats;
} agn_arq_t;

/* seed: entropy for the epoch (the clock at the first RESET is mixed in too). */
void agn_arq_init(agn_arq_t *arq, uint32_t seed);
/* The sender's buffer (AGN_ARQ_TX_MAX bytes): a message built in place here is sent without a copy. */
uint8_t *agn_arq_tx_buffer(agn_arq_t *arq);
/* Queues a message (copied unless it is agn_arq_tx_buffer). 0, or -1 while another is being sent, -2 if over AGN_ARQ_TX_MAX. */
int agn_arq_send(agn_arq_t *arq, const uint8_t *message, uint16_t length, uint32_t now);
/* AGN_ARQ_TX_*: the fate of the last message; ACKED and FAILED stay until the next send. */
int agn_arq_tx_state(const agn_arq_t *arq);
/* Gives up on the message being sent (the caller's timeout): it becomes FAILED. */
void agn_arq_abandon(agn_arq_t *arq, uint32_t now);
/* One received byte. Do not feed more while agn_arq_message has a message. */
void agn_arq_receive_byte(agn_arq_t *arq, uint8_t byte, uint32_t now);
/* Runs the retransmission timers. */
void agn_arq_poll(agn_arq_t *arq, uint32_t now);
/* Bytes to write (whole frames); call agn_arq_output_clear once written. */
uint16_t agn_arq_output(const agn_arq_t *arq, const uint8_t **data);
void agn_arq_output_clear(agn_arq_t *arq);
/* A reassembled message, if one waits (1); it stays until agn_arq_release. */
int agn_arq_message(const agn_arq_t *arq, const uint8_t **data, uint16_t *length);
void agn_arq_release(agn_arq_t *arq);
#endif
