"""Run every scheme on the same test images through real daemons, and report.

Servers are real ``agilenn server`` processes on loopback (one for the
AgileNN model, one for the baseline full CNN) with batching off
(``max_batch_size`` 1, no queue delay), because one closed-loop device never
fills a batch and a queue delay would only add to every request. Each scheme
first sends ``warmup`` requests (images from the end of the set, excluded),
then the ``n`` measured requests in windows of ``window``; stability follows
perf_analyzer: the last three windows' p50 latency and throughput must lie
within ``stability_percentage`` of their mean. With ``until_stable`` more
windows run (cycling the images) until that holds or ``max_windows`` is hit.
Accuracy is always over the first ``n`` images, the same for every scheme.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from transports.emulator import get_profile
from transports.errors import TransportError
from transports.messages import Message, MessageType, decode_message, encode_message
from transports.zmq_transport import Requester, ZmqClientTransport, free_loopback_endpoint

from ..baselines.checkpoint import load_baseline_checkpoint
from ..cli.common import DEFAULT_MODEL, load_checkpoint, stop_process
from ..data import load_dataset
from ..errors import AgileNNError
from .devices import DeviceModel, get_device, host_macs_per_second
from .schemes import (
    FAMILIES,
    STAGES,
    Outcome,
    Scheme,
    agilenn_local_scheme,
    agilenn_scheme,
    baseline_schemes,
    tiny_cnn_scheme,
)
from .stats import latency_percentiles

BASELINE_FAMILIES = {"raw-offload", "jpeg-offload", "split8"}
GOALS = {"bytes_up_vs_raw": 0.5, "accuracy_gap_pp": 0.5, "p50_vs_raw": 0.5, "p50_vs_split8": 1 / 6}


@dataclass
class BenchConfig:
    model: str = DEFAULT_MODEL
    baseline: str = "pretrained:mnist-full-cnn"
    tiny: str = "pretrained:mnist-tiny-cnn"
    link: str = "serial-115200"
    device: str = "host"
    n: int = 500
    warmup: int = 20
    families: tuple[str, ...] = FAMILIES
    jpeg_qualities: tuple[int, ...] = (10, 50, 90)
    split_layers: tuple[int, ...] = (2, 4, 5)
    dataset: str = "mnist-sample"
    data_dir: str | None = None
    window: int = 100
    stability_percentage: float = 10.0
    until_stable: bool = False
    max_windows: int = 20
    timeout_s: float = 2.0
    seed: int = 0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class BenchError(AgileNNError):
    pass


# ------------------------------------------------------------------ servers
def wait_until_serving(endpoint: str, process: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """PING until a PONG comes back; a server that exits or stays silent is an error."""
    deadline = time.monotonic() + timeout
    client = ZmqClientTransport(endpoint)
    try:
        requester = Requester(client, timeout=0.5, attempts=1)
        ping = encode_message(Message(MessageType.PING, 1, "bench"))
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"server {endpoint} exited with {process.returncode} while starting")
            try:
                requester.request(ping, lambda d: decode_message(d).type is MessageType.PONG)
                return
            except TransportError:
                client.reconnect()
    finally:
        client.close()
    raise BenchError(f"server {endpoint} did not answer a ping within {timeout:.0f} s")


@contextmanager
def running_server(model: str) -> Iterator[str]:
    """An ``agilenn server`` process for ``model``, batching off; yields its endpoint."""
    endpoint = free_loopback_endpoint()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agilenn",
            "server",
            "--model",
            model,
            "--bind",
            endpoint,
            "--max-batch-size",
            "1",
            "--max-queue-delay-us",
            "0",
            "--log-level",
            "WARNING",
        ]
    )
    try:
        wait_until_serving(endpoint, process)
        yield endpoint
    finally:
        stop_process(process)


# ------------------------------------------------------------------ statistics
def modelled_stages(
    outcome: Outcome, scheme: Scheme, device: DeviceModel, codec_ms: float | None = None
) -> dict[str, float]:
    """The outcome's stages with the device-side ones turned into the device profile's.

    ``codec_ms`` replaces the outcome's own codec time when given: a device's codec
    time depends on the payload, not on this host's scheduling jitter, so the
    report scales the scheme's median.
    """
    stages = {stage: outcome.stages_ms.get(stage, 0.0) for stage in STAGES}
    stages["device"] = device.compute_ms(stages["device"], scheme.device_macs)
    stages["encode"] = device.encode_ms(stages["encode"], outcome.codec_ms if codec_ms is None else codec_ms)
    stages["merge"] = device.compute_ms(stages["merge"], scheme.merge_macs)
    return stages


def window_stability(latencies: np.ndarray, window: int, percentage: float) -> dict[str, Any]:
    """perf_analyzer's rule: the last three windows agree within ``percentage``."""
    count = len(latencies) // window
    windows = [latencies[i * window : (i + 1) * window] for i in range(count)]
    p50s = [float(np.percentile(w, 50)) for w in windows]
    rates = [1e3 * len(w) / float(w.sum()) for w in windows]

    def steady(values: list[float]) -> bool:
        if len(values) < 3:
            return False
        last = np.array(values[-3:])
        return bool(np.all(np.abs(last - last.mean()) <= percentage / 100 * last.mean()))

    return {
        "windows": count,
        "stable": steady(p50s) and steady(rates),
        "window_p50_ms": [round(v, 3) for v in p50s],
        "window_throughput_rps": [round(v, 2) for v in rates],
    }


def _stages(scheme: Scheme, outcomes: list[Outcome], device: DeviceModel) -> list[dict[str, float]]:
    typical_codec = float(np.median([o.codec_ms for o in outcomes])) if outcomes else 0.0
    return [
        modelled_stages(o, scheme, device, typical_codec if device.profile.modelled else None)
        for o in outcomes
    ]


def summarise(
    scheme: Scheme, outcomes: list[Outcome], labels: np.ndarray, device: DeviceModel, config: BenchConfig
) -> dict[str, Any]:
    stages = _stages(scheme, outcomes, device)
    latencies = np.array([sum(s.values()) for s in stages])
    first_pass = outcomes[: len(labels)]
    offloaded = [o for o in outcomes if not o.failure] if scheme.offloads else []
    return {
        "family": scheme.family,
        "accuracy": round(
            float(np.mean([o.predicted == label for o, label in zip(first_pass, labels, strict=True)])), 4
        ),
        "latency_ms": latency_percentiles(latencies),
        "stage_ms": {stage: round(float(np.mean([s[stage] for s in stages])), 3) for stage in STAGES},
        "bytes_up_mean": round(float(np.mean([o.bytes_up for o in outcomes])), 1),
        "bytes_down_mean": round(float(np.mean([o.bytes_down for o in outcomes])), 1),
        "throughput_rps": round(1e3 / float(latencies.mean()), 2),
        "requests": len(outcomes),
        "offloaded": len(offloaded),
        "failures": sum(bool(o.failure) for o in outcomes),
        "failure_reasons": sorted({o.failure for o in outcomes if o.failure})[:5],
        "device_macs": scheme.device_macs,
        "stability": window_stability(latencies, config.window, config.stability_percentage),
        "latencies_ms": [round(float(v), 3) for v in latencies],  # for the CDF plot
    }


def comparisons(schemes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's figures: AgileNN against raw-offload and each split8 split, with the goals."""
    agilenn, raw = schemes.get("agilenn"), schemes.get("raw-offload")
    result: dict[str, Any] = {"goals": GOALS}
    if agilenn and raw:
        bytes_ratio = agilenn["bytes_up_mean"] / raw["bytes_up_mean"]
        gap_pp = 100 * (raw["accuracy"] - agilenn["accuracy"])
        p50_ratio = agilenn["latency_ms"]["p50"] / raw["latency_ms"]["p50"]
        result.update(
            {
                "bytes_up_vs_raw": round(bytes_ratio, 3),
                "accuracy_gap_pp": round(gap_pp, 2),
                "bytes_goal_met": bytes_ratio <= GOALS["bytes_up_vs_raw"]
                and abs(gap_pp) <= GOALS["accuracy_gap_pp"],
                "p50_vs_raw": round(p50_ratio, 3),
                "p50_vs_raw_goal_met": p50_ratio <= GOALS["p50_vs_raw"],
            }
        )
    if agilenn:
        splits = {
            name: agilenn["latency_ms"]["p50"] / values["latency_ms"]["p50"]
            for name, values in schemes.items()
            if values["family"] == "split8"
        }
        result["p50_vs_split8"] = {name: round(ratio, 3) for name, ratio in splits.items()}
        result["p50_vs_split8_goal_met"] = {
            name: ratio <= GOALS["p50_vs_split8"] for name, ratio in splits.items()
        }
    return result


# ------------------------------------------------------------------ the run
def _measure(
    scheme: Scheme, images: np.ndarray, warmup: np.ndarray, config: BenchConfig, device: DeviceModel
) -> list[Outcome]:
    for image in warmup:
        scheme.classify(image)
    outcomes: list[Outcome] = []
    total = len(images)
    with tqdm(
        total=total,
        desc=f"{scheme.name:22s}",
        disable=not config.progress,
        unit="req",
        mininterval=1.0,
        leave=False,
        file=sys.stderr,
    ) as bar:
        while True:
            for image in images[len(outcomes) % len(images) :][: total - len(outcomes)]:
                outcomes.append(scheme.classify(image))
                bar.update()
            if not config.until_stable or len(outcomes) >= config.max_windows * config.window:
                return outcomes
            latencies = np.array([sum(s.values()) for s in _stages(scheme, outcomes, device)])
            if window_stability(latencies, config.window, config.stability_percentage)["stable"]:
                return outcomes
            total += config.window
            bar.total = total
            bar.refresh()


def run_bench(
    config: BenchConfig,
    on_scheme: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    unknown = set(config.families) - set(FAMILIES)
    if unknown:
        raise BenchError(f"unknown schemes {sorted(unknown)}; pick from {', '.join(FAMILIES)} or all")
    dataset = load_dataset(config.dataset, "test", config.data_dir)
    if config.n + config.warmup > len(dataset):
        raise BenchError(
            f"{config.dataset} has {len(dataset)} test images; n + warmup = {config.n + config.warmup}"
        )
    if config.n < 1 or config.window < 1:
        raise BenchError(f"n ({config.n}) and window ({config.window}) must be at least 1")
    if config.n < config.window:
        raise BenchError(f"n ({config.n}) must be at least one window ({config.window})")
    images, labels = dataset.images[: config.n], dataset.labels[: config.n]
    warmup = dataset.images[len(dataset) - config.warmup :] if config.warmup else dataset.images[:0]
    link = get_profile(config.link)
    device_profile = get_device(config.device)
    families = set(config.families)
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        schemes: list[Scheme] = []

        def add(*built: Scheme) -> None:
            for scheme in built:  # closed on the way out even if a later one fails to build
                schemes.append(scheme)
                stack.callback(scheme.close)

        previous_threads = torch.get_num_threads()
        stack.callback(torch.set_num_threads, previous_threads)
        # The device is one core (an MCU has one); more intra-op threads would also fight the servers.
        torch.set_num_threads(1)
        # Measured like the device stages: one thread, after the change above.
        device = DeviceModel(device_profile, host_macs_per_second())
        if "agilenn" in families:
            endpoint = stack.enter_context(running_server(config.model))
            add(agilenn_scheme(config.model, endpoint, link, config.timeout_s, config.seed))
        if "local-only" in families:
            add(agilenn_local_scheme(load_checkpoint(config.model)))
            add(tiny_cnn_scheme(load_baseline_checkpoint(config.tiny)))
        if families & BASELINE_FAMILIES:
            endpoint = stack.enter_context(running_server(config.baseline))
            add(
                *baseline_schemes(
                    load_baseline_checkpoint(config.baseline),
                    endpoint,
                    link,
                    config.timeout_s,
                    config.seed,
                    families,
                    list(config.jpeg_qualities),
                    list(config.split_layers),
                )
            )
        for scheme in schemes:
            results[scheme.name] = summarise(
                scheme, _measure(scheme, images, warmup, config, device), labels, device, config
            )
            if on_scheme is not None:
                on_scheme(scheme.name, results[scheme.name])
    return {
        "link": config.link,
        "link_profile": asdict(link),
        "device": config.device,
        "device_modelled": device.profile.modelled,
        "device_model_source": device.profile.source,
        "host_macs_per_second": round(device.host_macs_per_second),
        "host_torch_threads": 1,
        "device_slowdown": round(device.slowdown, 2),
        "dataset": config.dataset,
        "n": config.n,
        "warmup": config.warmup,
        "window": config.window,
        "server": {"max_batch_size": 1, "max_queue_delay_us": 0},
        "schemes": results,
        "comparisons": comparisons(results),
        **config.extra,
    }


def format_table(report: dict[str, Any]) -> str:
    """The readable summary printed at the end of a run."""
    modelled = " (device stages MODELLED, not measured)" if report["device_modelled"] else ""
    lines = [
        f"link {report['link']}, device {report['device']}{modelled}, {report['n']} requests per scheme "
        f"on {report['dataset']}",
        f"{'scheme':22s} {'acc':>6s} {'up B':>7s} {'down B':>6s} {'p50':>8s} {'p95':>8s} {'p99':>8s}  "
        + " ".join(f"{s:>8s}" for s in STAGES)
        + f" {'req/s':>7s}",
    ]
    for name, values in report["schemes"].items():
        latency = values["latency_ms"]
        lines.append(
            f"{name:22s} {values['accuracy']:6.4f} {values['bytes_up_mean']:7.1f} "
            f"{values['bytes_down_mean']:6.1f} {latency['p50']:8.2f} {latency['p95']:8.2f} "
            f"{latency['p99']:8.2f}  "
            + " ".join(f"{values['stage_ms'][s]:8.3f}" for s in STAGES)
            + f" {values['throughput_rps']:7.1f}"
        )
    figures = report["comparisons"]
    if "bytes_up_vs_raw" in figures:
        lines.append(
            f"agilenn vs raw-offload: bytes up {figures['bytes_up_vs_raw']:.3f}x at an accuracy gap of "
            f"{figures['accuracy_gap_pp']:+.2f} pp (goal <= 0.5x within 0.5 pp: "
            f"{'met' if figures['bytes_goal_met'] else 'NOT met'}); p50 {figures['p50_vs_raw']:.3f}x "
            f"(goal <= 0.5x: {'met' if figures['p50_vs_raw_goal_met'] else 'NOT met'})"
        )
    for name, ratio in figures.get("p50_vs_split8", {}).items():
        met = figures["p50_vs_split8_goal_met"][name]
        lines.append(f"agilenn vs {name}: p50 {ratio:.3f}x (goal <= 0.167x: {'met' if met else 'NOT met'})")
    return "\n".join(lines)
