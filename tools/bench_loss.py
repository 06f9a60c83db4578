"""Issue #13's loss figure: what a lost message costs AgileNN, with a fixed and an adaptive timeout.

    nice python tools/bench_loss.py --link wifi-10m --n 5000 --seed 0

Starts one real ``agilenn server`` (``agilenn bench``'s own, batching off) and
two EdgeClients over the same emulated link, seeded alike. ``fixed`` waits the
whole ``--timeout-s`` for a reply, as the Requester did before it estimated a
retransmission timeout: a lost request or reply then costs that timeout and the
device answers alone. ``adaptive`` resends after the RFC 6298 RTO estimated from
the round trips it measured (docs/LINKS.md). The two take turns image by image,
so both see the same machine and server; the order within each turn alternates.

Prints one JSON object: per mode, latency mean, p50, p90, p99, p99.9 and max in
ms, mean/p50, offloaded and fallback counts (with reasons), the Requester's
resends (a resend whose twin reply came back too, ``stale_discarded``, was
spurious: the first copy was only late), the messages the emulated link lost,
and the adaptive timer's state at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from agilenn.bench.servers import running_server
from agilenn.data import load_mnist_sample
from agilenn.pretrained import DEFAULT_MODEL
from edge_node.client import OFFLOADED, EdgeClient, Prediction
from transports.emulator import EmulatedTransport
from transports.rto import RetransmitTimer
from transports.zmq_transport import REQUEST_RTO, Requester

MODES = {"fixed": False, "adaptive": True}  # mode -> Requester.adaptive_timeout


def _requester(client: EdgeClient) -> Requester:
    requester = client.requester
    assert requester is not None, "the client has no server"
    return requester


def _summary(predictions: list[Prediction], labels: np.ndarray, requester: Requester) -> dict[str, Any]:
    latency = np.array([p.latency_ms for p in predictions])
    correct = [p.label == label for p, label in zip(predictions, labels, strict=True)]
    p50 = float(np.percentile(latency, 50))
    link = requester.client
    stats = requester.stats
    return {
        "n": len(predictions),
        "mean_ms": round(float(latency.mean()), 3),
        **{f"p{q}_ms": round(float(np.percentile(latency, q)), 3) for q in (50, 90, 99, 99.9)},
        "max_ms": round(float(latency.max()), 3),
        "mean_over_p50": round(float(latency.mean()) / p50, 3),
        "accuracy": round(float(np.mean(correct)), 4),
        "offloaded": sum(p.source == OFFLOADED for p in predictions),
        "fallbacks": dict(Counter(p.reason_code for p in predictions if p.source != OFFLOADED)),
        "requester": {"sent": stats.sent, "retransmits": stats.retransmits, "timeouts": stats.timeouts,
                      "stale_discarded": stats.stale_discarded},
        "link_lost": link.stats.dropped_chunks if isinstance(link, EmulatedTransport) else None,
        **_timer(requester),
    }


def _timer(requester: Requester) -> dict[str, Any]:
    timer = requester.retransmit_timer
    if not requester.adaptive_timeout or timer.srtt is None or timer.rttvar is None:
        return {}
    return {"rto_floor_ms": 1e3 * timer.config.floor, "rto_ms_at_end": round(1e3 * timer.rto, 3),
            "srtt_ms_at_end": round(1e3 * timer.srtt, 3), "rttvar_ms_at_end": round(1e3 * timer.rttvar, 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    sample = load_mnist_sample()
    order = np.random.default_rng(args.seed).integers(0, len(sample), size=args.warmup + args.n)
    images, labels = sample.images[order], sample.labels[order]
    predictions: dict[str, list[Prediction]] = {mode: [] for mode in MODES}
    started = time.monotonic()
    with running_server(args.model) as endpoint:
        clients = {mode: EdgeClient(args.model, server=endpoint, link=args.link, timeout_s=args.timeout_s,
                                    seed=args.seed, device_id=f"loss-{mode}", adaptive_timeout=adaptive)
                   for mode, adaptive in MODES.items()}
        try:
            for mode in MODES:
                requester = _requester(clients[mode])
                if args.rto_floor_ms is not None:
                    floor = dataclasses.replace(REQUEST_RTO, floor=args.rto_floor_ms / 1e3)
                    requester.retransmit_timer = RetransmitTimer(floor)
            for index, image in enumerate(images):
                turn = list(MODES) if index % 2 == 0 else list(reversed(MODES))
                for mode in turn:
                    prediction = clients[mode].infer(image)
                    if index >= args.warmup:
                        predictions[mode].append(prediction)
            summaries = {mode: _summary(predictions[mode], labels[args.warmup:], _requester(clients[mode]))
                         for mode in MODES}
        finally:
            for client in clients.values():
                client.close()
    return {"link": args.link, "n": args.n, "warmup": args.warmup, "timeout_s": args.timeout_s,
            "seed": args.seed, "model": args.model, "seconds": round(time.monotonic() - started, 1),
            **summaries}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--link", default="wifi-10m")
    parser.add_argument("--n", type=int, default=5000, help="measured requests per mode")
    parser.add_argument("--warmup", type=int, default=50, help="requests per mode before measuring")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="agilenn bench's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--rto-floor-ms", type=float, default=None,
                        help=f"the adaptive timer's floor (default: the Requester's, "
                             f"{1e3 * REQUEST_RTO.floor:g})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
