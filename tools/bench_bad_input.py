"""Malformed, oversized, wrong-hash, NaN and unauthenticated requests mixed into the load.

A CURVE-protected ``agilenn server`` process gets ``--seconds`` of traffic
from allowed devices, a third of it bad in one of several ways, while a device
with a key not in the allowlist keeps trying to connect. Every request from an
allowed device must be answered (a prediction, or an ERROR with its reason),
the unknown key must be refused, and the server's resident memory must stay
flat.

    python tools/bench_bad_input.py --seconds 20
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zmq

from bench_server import _requests
from transports.curve import CurveClientConfig, configure_client, generate_keypair
from transports.errors import DeliveryFailed, RequestTimeout
from transports.messages import (
    MAX_PAYLOAD_BYTES,
    ErrorReply,
    InferRequest,
    MessageType,
    decode_message,
    encode_message,
    encode_unchecked,
)
from transports.zmq_transport import Requester, ZmqClientTransport, free_loopback_endpoint


def _bad(kind: str, request_id: int, valid: bytes) -> bytes:
    template = decode_message(valid)._replace(request_id=request_id)
    if kind == "malformed":
        return b"\xc1" + bytes(random.randrange(256) for _ in range(40))
    if kind == "oversized":
        return encode_unchecked(InferRequest(bytes(MAX_PAYLOAD_BYTES + 1)).message(
            request_id, "d", template.model_hash))
    if kind == "wrong-hash":
        return encode_message(template._replace(model_hash=bytes(8)))
    if kind == "nan":
        request = InferRequest.parse(template)
        return encode_unchecked(InferRequest(request.payload, np.full(10, np.nan)).message(
            request_id, "d", template.model_hash))
    return encode_message(template)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args(argv)
    random.seed(0)
    keys = Path(tempfile.mkdtemp())
    _, server_secret = generate_keypair(keys, "server")
    device_public, device_secret = generate_keypair(keys, "device")
    _, stranger_secret = generate_keypair(keys, "stranger")
    (keys / "allowed").mkdir()
    (keys / "allowed" / device_public.name).write_bytes(device_public.read_bytes())
    endpoint = free_loopback_endpoint()
    server = subprocess.Popen([sys.executable, "-m", "agilenn", "server", "--bind", endpoint,
                               "--curve-secret-key", str(server_secret),
                               "--curve-allowlist", str(keys / "allowed"), "--log-level", "ERROR"])
    time.sleep(3.0)
    templates = _requests(64)
    context = zmq.Context()
    allowed = CurveClientConfig(device_secret, keys / "server.key")
    sockets = []
    for _ in range(args.devices):
        sock = context.socket(zmq.DEALER)
        configure_client(sock, allowed)
        sock.connect(endpoint)
        sockets.append(sock)
    kinds = ["valid"] * 6 + ["malformed", "oversized", "wrong-hash", "nan"]
    counts: dict[str, int] = {}
    outstanding: dict[zmq.Socket, tuple[int, float]] = {}
    next_id, unanswered, refused = 0, 0, 0
    rss = [_rss_kib(server.pid)]
    started = last_sample = time.monotonic()
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)

    def send(sock: zmq.Socket) -> None:
        nonlocal next_id
        kind = random.choice(kinds)
        sock.send(_bad(kind, next_id, templates[next_id % len(templates)]))
        outstanding[sock] = (next_id, time.monotonic())
        next_id += 1

    for sock in sockets:
        send(sock)
    while time.monotonic() - started < args.seconds:
        for sock, _ in poller.poll(100):
            reply = decode_message(sock.recv())
            code = ErrorReply.parse(reply).code if reply.type is MessageType.ERROR else "prediction"
            counts[code] = counts.get(code, 0) + 1
            send(sock)
        for sock, (_, sent) in list(outstanding.items()):
            if time.monotonic() - sent > 5.0:
                unanswered += 1
                send(sock)
        if time.monotonic() - last_sample > 2.0:
            rss.append(_rss_kib(server.pid))
            last_sample = time.monotonic()
            stranger_keys = CurveClientConfig(stranger_secret, keys / "server.key")
            stranger = ZmqClientTransport(endpoint, curve=stranger_keys)
            try:
                Requester(stranger, timeout=0.3, attempts=1).request(templates[0], lambda d: True)
            except (DeliveryFailed, RequestTimeout):  # refused by the server, or no service at all
                refused += 1
            finally:
                stranger.close()
    for sock in sockets:
        sock.close(0)
    context.term()
    server.terminate()
    exit_code = server.wait()
    print(json.dumps({
        "seconds": args.seconds, "requests": sum(counts.values()), "answers_by_kind": counts,
        "unanswered": unanswered, "unknown_key_attempts_refused": refused,
        "server_rss_kib": {"start": rss[0], "end": rss[-1], "max": max(rss), "every_2s": rss},
        "server_exit_code": exit_code,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
