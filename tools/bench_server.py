"""Server throughput with dynamic batching against batch size 1, many devices.

Starts ``agilenn server`` as a process, then ``--devices`` closed-loop devices
(each sends its next request when the last reply arrives) spread over
``--client-processes`` processes, for ``--seconds`` per configuration. Reports
throughput, latency percentiles and the server's batch sizes, side by side.
The goal: batching >= 5x the batch-1 throughput, with p99 <= max_queue_delay
+ 2 x one batch's compute time.

It also times the model alone in this process (``compute_ceiling``): the
remote forward pass per sample at batch 1 against a full batch, with the
server's thread count. No server can gain more from batching than that
ratio, since every request also costs the same decode and reply work in both
configurations.

    python tools/bench_server.py --devices 64
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import zmq

from agilenn.codec import FeatureCodec
from agilenn.data import load_mnist_sample
from agilenn.pretrained import load_pretrained
from transports.messages import InferReply, InferRequest, MessageType, decode_message, encode_message
from transports.zmq_transport import free_loopback_endpoint


def _requests(count: int) -> list[bytes]:
    """Real encoded requests for the first ``count`` sample images."""
    checkpoint = load_pretrained("mnist")
    model, codec = checkpoint.build_model(), FeatureCodec(checkpoint.codec)
    images, _ = load_mnist_sample().batch(slice(0, count))
    device = model.device_forward(images)
    model_hash = bytes.fromhex(checkpoint.model_hash)
    pairs = zip(device.symbols.numpy(), device.local_logits.numpy(), strict=True)
    return [encode_message(InferRequest(codec.encode(symbols), logits).message(0, f"bench-{i}", model_hash))
            for i, (symbols, logits) in enumerate(pairs)]


def _devices(endpoint: str, count: int, seconds: float, requests: list[bytes], results: Any) -> None:
    context = zmq.Context()
    sockets = [context.socket(zmq.DEALER) for _ in range(count)]
    poller = zmq.Poller()
    sent_at: dict[zmq.Socket, float] = {}
    for sock in sockets:
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
    latencies, batches, computes, errors = [], [], [], 0
    started = time.monotonic()
    for index, sock in enumerate(sockets):
        sock.send(requests[index % len(requests)])
        sent_at[sock] = time.monotonic()
    while time.monotonic() - started < seconds:
        for sock, _ in poller.poll(100):
            reply = decode_message(sock.recv())
            now = time.monotonic()
            latencies.append(now - sent_at[sock])
            if reply.type is MessageType.INFER_REPLY:
                timings = InferReply.parse(reply).timings
                batches.append(timings.batch)
                computes.append(timings.compute_us / 1e3)
            else:
                errors += 1
            sock.send(requests[len(latencies) % len(requests)])
            sent_at[sock] = now
    for sock in sockets:
        sock.close(0)
    context.term()
    results.put((latencies, batches, computes, errors))


def compute_ceiling(batch: int, threads: int, repeats: int = 50) -> dict[str, float]:
    """Median per-sample time of the server's model call at batch 1 and at ``batch``."""
    torch.set_num_threads(threads)
    checkpoint = load_pretrained("mnist")
    model = checkpoint.build_model().prepare_for_serving()  # as the server does
    images, _ = load_mnist_sample().batch(slice(0, batch))
    device = model.device_forward(images)
    per_sample = {}
    for size in (1, batch):
        symbols, local = device.symbols[:size], device.local_logits[:size]
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.server_forward(symbols, local)
            timings.append(time.perf_counter() - started)
        per_sample[size] = float(np.median(timings[5:])) / size
    return {"batch_1_us_per_sample": round(per_sample[1] * 1e6, 1),
            f"batch_{batch}_us_per_sample": round(per_sample[batch] * 1e6, 1),
            "ratio": round(per_sample[1] / per_sample[batch], 2)}


def run_config(max_batch: int, delay_us: int, devices: int, processes: int, seconds: float,
               requests: list[bytes], torch_threads: int) -> dict[str, Any]:
    endpoint = free_loopback_endpoint()
    server = subprocess.Popen([sys.executable, "-m", "agilenn", "server", "--bind", endpoint,
                               "--max-batch-size", str(max_batch), "--max-queue-delay-us", str(delay_us),
                               "--torch-threads", str(torch_threads), "--log-level", "ERROR"])
    time.sleep(3.0)  # model load
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    per_process = [devices // processes + (i < devices % processes) for i in range(processes)]
    workers = [context.Process(target=_devices, args=(endpoint, n, seconds, requests, results))
               for n in per_process]
    for worker in workers:
        worker.start()
    collected = [results.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join()
    server.terminate()
    server.wait(timeout=30)
    latencies = np.concatenate([np.array(c[0]) for c in collected]) * 1e3
    batches = np.concatenate([np.array(c[1]) for c in collected])
    computes = np.concatenate([np.array(c[2]) for c in collected])
    return {"max_batch_size": max_batch, "max_queue_delay_us": delay_us,
            "throughput_rps": round(len(latencies) / seconds, 1),
            "latency_ms": {q: round(float(np.percentile(latencies, p)), 2)
                           for q, p in (("p50", 50), ("p99", 99))},
            "batch_size_mean": round(float(batches.mean()), 2),
            "batch_compute_ms_mean": round(float(computes.mean()), 2),
            "errors": sum(c[3] for c in collected)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=5000)
    parser.add_argument("--torch-threads", type=int, default=1, help="the server's, in both configurations")
    args = parser.parse_args(argv)
    requests = _requests(256)
    single = run_config(1, 0, args.devices, args.client_processes, args.seconds, requests, args.torch_threads)
    batched = run_config(args.max_batch_size, args.max_queue_delay_us, args.devices, args.client_processes,
                         args.seconds, requests, args.torch_threads)
    p99_bound = args.max_queue_delay_us / 1e3 + 2 * batched["batch_compute_ms_mean"]
    print(json.dumps({"devices": args.devices, "batch_1": single, "dynamic": batched,
                      "speedup": round(batched["throughput_rps"] / single["throughput_rps"], 2),
                      "p99_bound_ms": round(p99_bound, 2),
                      "torch_threads": args.torch_threads,
                      "compute_ceiling": compute_ceiling(args.max_batch_size, args.torch_threads)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
