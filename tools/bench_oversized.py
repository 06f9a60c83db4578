"""Good requests lost around one oversized message on the same ZeroMQ connection.

Found as a new user: a message over 1 MiB (a 2 MiB device id) made libzmq drop
the connection, and the 40 good requests sent around it got no answer. For
each size, 20 good requests, the oversized one and 20 more go out back to back
on one DEALER to a real ``agilenn server`` process; every answer is collected.

    python tools/bench_oversized.py

Below the hard cap (4 MiB) the goal is 0 lost and a ``too-large`` answer that
echoes the request id. Above it libzmq drops the connection (the cap keeps one
peer from making the server allocate any size): a raw socket loses what was in
flight, while agilenn's own client refuses to send such a message at all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence

import msgpack
import zmq

from bench_server import _requests
from agilenn.bench.servers import wait_until_serving
from agilenn.daemon import stop_process
from transports.errors import OversizedMessage
from transports.messages import ErrorReply, MessageType, decode_message, encode_message
from transports.zmq_transport import MAX_WIRE_MESSAGE_BYTES, ZmqClientTransport, free_loopback_endpoint

OVERSIZED_ID = 999_999


def _oversized(size: int, model_hash: bytes) -> bytes:
    """A request whose device id makes the whole message ``size`` bytes."""
    header = len(msgpack.packb([1, 1, OVERSIZED_ID, "", model_hash, {}, {}], use_bin_type=True))
    return msgpack.packb([1, 1, OVERSIZED_ID, "x" * (size - header - 4), model_hash, {}, {}],
                         use_bin_type=True)


def _round(endpoint: str, good: list[bytes], hostile: bytes, quiet_s: float) -> dict[str, object]:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    half = len(good) // 2
    for data in [*good[:half], hostile, *good[half:]]:
        sock.send(data)
    answers = {}
    while sock.poll(int(1000 * quiet_s)):
        reply = decode_message(sock.recv())
        answers[reply.request_id] = reply
    sock.close(0)
    context.term()
    wanted = {decode_message(data).request_id for data in good}
    oversized = answers.get(OVERSIZED_ID)
    return {
        "message_bytes": len(hostile),
        "good_sent": len(good),
        "good_answered": len(wanted & set(answers)),
        "good_lost": len(wanted - set(answers)),
        "oversized_answer": ErrorReply.parse(oversized).code if oversized is not None
        and oversized.type is MessageType.ERROR else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--good", type=int, default=40, help="good requests around each oversized one")
    parser.add_argument("--quiet-s", type=float, default=3.0, help="stop collecting after this long silent")
    args = parser.parse_args(argv)
    templates = _requests(args.good)
    model_hash = decode_message(templates[0]).model_hash
    endpoint = free_loopback_endpoint()
    server = subprocess.Popen([sys.executable, "-m", "agilenn", "server", "--bind", endpoint,
                               "--log-level", "WARNING"])
    rows = []
    try:
        wait_until_serving(endpoint, server)
        sizes = [300 * 1024, 1024 * 1024 + 1, 2 * 1024 * 1024, MAX_WIRE_MESSAGE_BYTES,
                 MAX_WIRE_MESSAGE_BYTES + 1]
        for round_index, size in enumerate(sizes):
            good = [encode_message(decode_message(t)._replace(request_id=1000 * round_index + i))
                    for i, t in enumerate(templates)]
            rows.append(_round(endpoint, good, _oversized(size, model_hash), args.quiet_s))
        client = ZmqClientTransport(endpoint)
        try:
            client.send(_oversized(MAX_WIRE_MESSAGE_BYTES + 1, model_hash))
            refused = False
        except OversizedMessage:
            refused = True
        finally:
            client.close()
        time.sleep(0.1)
        server_alive = server.poll() is None
    finally:
        exit_code = stop_process(server)
    below_cap = [row for row in rows if int(str(row["message_bytes"])) <= MAX_WIRE_MESSAGE_BYTES]
    print(f"{'message bytes':>14} {'good sent':>9} {'answered':>8} {'lost':>5}  oversized answer")
    for row in rows:
        print(f"{row['message_bytes']:>14} {row['good_sent']:>9} {row['good_answered']:>8} "
              f"{row['good_lost']:>5}  {row['oversized_answer']}")
    figures = {
        "hard_cap_bytes": MAX_WIRE_MESSAGE_BYTES,
        "good_lost_below_cap": sum(int(str(row["good_lost"])) for row in below_cap),
        "library_client_refuses_over_cap": refused,
        "server_alive_after": server_alive,
        "server_exit_code": exit_code,
        "rounds": rows,
    }
    print(f"good requests lost around one oversized message (up to the {MAX_WIRE_MESSAGE_BYTES}-byte "
          f"hard cap): {figures['good_lost_below_cap']}; agilenn's client refuses a message over the "
          f"cap: {refused}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
