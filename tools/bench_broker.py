"""64 devices x 1,000 requests through the broker with 2 workers, one killed midway.

Every request must be answered (a prediction, or an ERROR saying why); a
request with no answer within ``--reply-timeout`` counts as lost, and a
second answer to one request counts as duplicated.

    python tools/bench_broker.py --devices 64 --requests 1000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import zmq

from bench_server import _requests
from agilenn.daemon import DaemonThread
from server_node.broker import Broker
from server_node.config import BrokerConfig
from transports.messages import ErrorReply, MessageType, decode_message, encode_message


def _devices(endpoint: str, first: int, count: int, per_device: int, templates: list[bytes],
             reply_timeout: float, results: Any) -> None:
    context = zmq.Context()
    poller = zmq.Poller()
    state: dict[zmq.Socket, list[int]] = {}  # socket -> [device, next index, outstanding id, sent at]
    counts = {"sent": 0, "replies": 0, "errors": 0, "lost": 0, "duplicated": 0}
    codes: dict[str, int] = {}

    def send(sock: zmq.Socket) -> None:
        device, index = state[sock][0], state[sock][1]
        request_id = device * per_device + index
        template = decode_message(templates[request_id % len(templates)])
        sock.send(encode_message(template._replace(request_id=request_id)))
        state[sock][1:] = [index + 1, request_id, int(time.monotonic() * 1e6)]
        counts["sent"] += 1

    for device in range(first, first + count):
        sock = context.socket(zmq.DEALER)
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
        state[sock] = [device, 0, -1, 0]
        send(sock)
    while state:
        for sock, _ in poller.poll(100):
            reply = decode_message(sock.recv())
            if reply.request_id != state[sock][2]:
                counts["duplicated"] += 1
                continue
            counts["replies" if reply.type is MessageType.INFER_REPLY else "errors"] += 1
            if reply.type is MessageType.ERROR:
                code = ErrorReply.parse(reply).code
                codes[code] = codes.get(code, 0) + 1
            state[sock][2] = -1
            if state[sock][1] < per_device:
                send(sock)
        now = time.monotonic() * 1e6
        for sock in [s for s, v in state.items() if v[2] < 0 or now - v[3] > reply_timeout * 1e6]:
            if state[sock][2] >= 0:
                counts["lost"] += 1  # no answer in time
                if state[sock][1] < per_device:
                    send(sock)
                    continue
            if state[sock][1] >= per_device and state[sock][2] < 0:
                poller.unregister(sock)
                sock.close(0)
                del state[sock]
    context.term()
    results.put((counts, codes))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--requests", type=int, default=1000, help="per device")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--kill-after", type=float, default=0.5,
                        help="fraction of requests answered before the kill")
    parser.add_argument("--reply-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    broker = Broker(BrokerConfig(frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0"))
    broker_thread = DaemonThread(broker, name="broker")
    broker_thread.start()
    worker_command = [sys.executable, "-m", "agilenn", "server", "--connect", broker.backend_endpoint,
                      "--max-batch-size", "32", "--log-level", "ERROR"]
    workers = [subprocess.Popen(worker_command) for _ in range(2)]
    while len(broker._workers) < 2:
        time.sleep(0.1)
    templates = _requests(256)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    share = args.devices // args.client_processes
    clients = [context.Process(target=_devices,
                               args=(broker.frontend_endpoint, i * share, share, args.requests, templates,
                                     args.reply_timeout, results))
               for i in range(args.client_processes)]
    started = time.monotonic()
    for client in clients:
        client.start()
    total = share * args.client_processes * args.requests
    while broker.stats["replies"] < args.kill_after * total:
        time.sleep(0.05)
    os.kill(workers[0].pid, signal.SIGKILL)
    killed_at = time.monotonic() - started
    collected = [results.get(timeout=600) for _ in clients]
    seconds = time.monotonic() - started
    for client in clients:
        client.join()
    for worker in workers:
        worker.kill()
        worker.wait()
    broker_thread.stop()
    counts = {key: sum(c[0][key] for c in collected) for key in collected[0][0]}
    codes: dict[str, int] = {}
    for _, part in collected:
        for code, n in part.items():
            codes[code] = codes.get(code, 0) + n
    print(json.dumps({"devices": share * args.client_processes, "requests_per_device": args.requests,
                      "killed_worker_at_s": round(killed_at, 2), "seconds": round(seconds, 2), **counts,
                      "error_codes": codes, "answered": counts["replies"] + counts["errors"],
                      "broker": dict(broker.stats)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
