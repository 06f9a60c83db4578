"""Server killed and restarted mid-stream: does the edge recover by itself?

An ``EdgeClient`` sends ``--requests`` images one after another to an
``agilenn server`` process, which is SIGKILLed after a third of them and
started again on the same port after ``--down-s`` seconds. Every request must
be answered (offloaded, or local-fallback while the server is down), and
offloading must resume without any action from the client's user.

    python tools/bench_restart.py --requests 600
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from agilenn.data import load_mnist_sample
from edge_node.client import OFFLOADED, EdgeClient
from transports.zmq_transport import free_loopback_endpoint


def _server(endpoint: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "agilenn", "server", "--bind", endpoint,
                             "--log-level", "ERROR"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--down-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    endpoint = free_loopback_endpoint()
    sample = load_mnist_sample()
    server = _server(endpoint)
    time.sleep(3.0)
    sources: list[str] = []
    events: dict[str, float] = {}
    started = time.monotonic()
    with EdgeClient(server=endpoint, timeout_s=0.3) as client:
        for index in range(args.requests):
            if index == args.requests // 3:
                os.kill(server.pid, signal.SIGKILL)
                server.wait()
                events["killed_at_request"] = index
                restart_at = time.monotonic() + args.down_s
            if "killed_at_request" in events and "restarted_at_request" not in events \
                    and time.monotonic() >= restart_at:
                server = _server(endpoint)
                events["restarted_at_request"] = index
            prediction = client.infer(sample.images[index % len(sample)])
            sources.append(prediction.source)
            if "restarted_at_request" in events and "first_offload_after_restart" not in events \
                    and prediction.source == OFFLOADED:
                events["first_offload_after_restart"] = index
    server.terminate()
    server.wait()
    after = sources[int(events.get("first_offload_after_restart", len(sources))):]
    print(json.dumps({
        "requests": args.requests, "answered": len(sources),
        "offloaded": sources.count(OFFLOADED), "local_fallback": len(sources) - sources.count(OFFLOADED),
        "offloaded_after_recovery_fraction": round(after.count(OFFLOADED) / max(len(after), 1), 4),
        "seconds": round(time.monotonic() - started, 1), **events,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
