"""Run every chosen scheme on the same test images through real daemons, and report.

Each family that needs a model served gets a real ``agilenn server`` process
on loopback, one per distinct model (today one for the AgileNN model, one for
the baseline full CNN), with batching off (``max_batch_size`` 1, no queue
delay), because one closed-loop device never fills a batch and a queue delay
would only add to every request. Each scheme first sends ``warmup`` requests
(images from the end of the set, excluded), then the ``n`` measured requests
in windows of ``window``; stability follows perf_analyzer: the last three
windows' p50 latency and throughput must lie within ``stability_percentage``
of their mean. With ``until_stable`` more windows run (cycling the images)
until that holds or ``max_windows`` is hit. Accuracy is always over the first
``n`` images, the same for every scheme.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from transports.emulator import LinkProfile, get_profile

from ..data import ImageDataset, load_dataset
from .config import BenchConfig, BenchError
from .devices import DeviceModel, get_device, host_macs_per_second
from .report import comparisons, end_to_end_ms, scheme_stages, summarise, window_stability
from .schemes import FAMILIES, Outcome, Scheme, SchemeContext, select_families
from .servers import SERVER_SETTINGS, running_server


def _measure(
    scheme: Scheme, images: np.ndarray, warmup: np.ndarray, config: BenchConfig, device: DeviceModel
) -> list[Outcome]:
    for image in warmup:
        scheme.classify(image)
    outcomes: list[Outcome] = []
    total = len(images)
    with tqdm(total=total, desc=f"{scheme.name:22s}", disable=not config.progress, unit="req",
              mininterval=1.0, leave=False, file=sys.stderr) as bar:
        while True:
            for image in images[len(outcomes) % len(images) :][: total - len(outcomes)]:
                outcomes.append(scheme.classify(image))
                bar.update()
            if not config.until_stable or len(outcomes) >= config.max_windows * config.window:
                return outcomes
            totals = end_to_end_ms(scheme_stages(scheme, outcomes, device))
            if window_stability(totals, config.window, config.stability_percentage)["stable"]:
                return outcomes
            total += config.window
            bar.total = total
            bar.refresh()


def _check(config: BenchConfig) -> tuple[tuple[str, ...], ImageDataset]:
    """The chosen families and the test set, or a BenchError before any server starts."""
    try:
        families = select_families(config.families)
        for name in families:
            FAMILIES[name]().check(config)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    dataset = load_dataset(config.dataset, "test", config.data_dir)
    if config.n + config.warmup > len(dataset):
        raise BenchError(
            f"{config.dataset} has {len(dataset)} test images; n + warmup = {config.n + config.warmup}"
        )
    if config.n < 1 or config.window < 1:
        raise BenchError(f"n ({config.n}) and window ({config.window}) must be at least 1")
    if config.n < config.window:
        raise BenchError(f"n ({config.n}) must be at least one window ({config.window})")
    return families, dataset


def build_schemes(
    families: tuple[str, ...], config: BenchConfig, link: LinkProfile, stack: ExitStack
) -> list[Scheme]:
    """Every family's schemes, starting one server per distinct served model as it is first needed.

    The servers and whatever the schemes open are closed by ``stack``, so a
    family that fails to build leaves nothing of the earlier ones open.
    """
    endpoints: dict[str, str] = {}
    schemes: list[Scheme] = []
    for name in families:
        family = FAMILIES[name]()
        model = family.served_model(config)
        if model is not None and model not in endpoints:
            endpoints[model] = stack.enter_context(running_server(model))
        context = SchemeContext(config, link, endpoints[model] if model is not None else "", stack)
        schemes += family.schemes(context)
    return schemes


def run_bench(
    config: BenchConfig,
    on_scheme: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    families, dataset = _check(config)
    images, labels = dataset.images[: config.n], dataset.labels[: config.n]
    warmup = dataset.images[len(dataset) - config.warmup :] if config.warmup else dataset.images[:0]
    link = get_profile(config.link)
    device_profile = get_device(config.device)
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        # The device is one core (an MCU has one); more intra-op threads would also fight the servers.
        torch.set_num_threads(1)
        # Measured like the device stages: one thread, after the change above.
        device = DeviceModel(device_profile, host_macs_per_second(), config.cpi)
        for scheme in build_schemes(families, config, link, stack):
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
        "firmware_report": config.firmware_report,
        "cpi": config.cpi if config.firmware_report else None,
        "dataset": config.dataset,
        "n": config.n,
        "warmup": config.warmup,
        "window": config.window,
        "server": dict(SERVER_SETTINGS),
        "schemes": results,
        "comparisons": comparisons(results),
        **config.extra,
    }
