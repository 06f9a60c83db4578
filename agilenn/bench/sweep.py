"""``agilenn bench --sweep``: where AgileNN pays, over link profiles and workloads (input sizes).

A workload ``W`` is a shipped model ``pretrained:W``, its baselines
``pretrained:W-full-cnn`` and ``pretrained:W-tiny-cnn`` and its test set ``W``:
``mnist`` (28×28) and ``cluttered-mnist`` (64×64). For each workload and each
link the bench runs AgileNN, raw offload and split8 at the cut the planner
finds fastest for that link and device, all side by side in one run, and the
sweep reports AgileNN's p50 over raw offload's and over that split's. The plot
shows both ratios by link, one line a workload, with the 1.0 line where
AgileNN starts to win.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transports.emulator import get_profile

from .config import BenchConfig
from .runner import run_bench

SWEEP_FAMILIES = ("agilenn", "raw-offload", "split8")


def workload_config(base: BenchConfig, workload: str, link: str) -> BenchConfig:
    shipped = f"pretrained:{workload}"
    return dataclasses.replace(base, model=shipped, baseline=f"{shipped}-full-cnn",
                               tiny=f"{shipped}-tiny-cnn", dataset=workload, link=link,
                               families=SWEEP_FAMILIES, split_layers=())


def run_sweep(base: BenchConfig, workloads: list[str], links: list[str],
              on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    points = []
    for workload in workloads:
        for link in links:
            report = run_bench(workload_config(base, workload, link))
            schemes, figures = report["schemes"], report["comparisons"]
            split = figures.get("best_split8", "")
            point = {
                "workload": workload, "link": link, "split8": split,
                "agilenn_p50_ms": schemes["agilenn"]["latency_ms"]["p50"],
                "raw_p50_ms": schemes["raw-offload"]["latency_ms"]["p50"],
                "split8_p50_ms": schemes[split]["latency_ms"]["p50"] if split else None,
                "p50_vs_raw": figures.get("p50_vs_raw"),
                "p50_vs_best_split8": figures.get("p50_vs_best_split8"),
                "p50_vs_link_bound": figures.get("p50_vs_link_bound"),
                "accuracy": {name: values["accuracy"] for name, values in schemes.items()},
                "bytes_up": {name: values["bytes_up_mean"] for name, values in schemes.items()},
            }
            points.append(point)
            if on_point is not None:
                on_point(point)
    return {"device": base.device, "n": base.n, "links": links, "workloads": workloads, "points": points}


def plot_sweep(sweep: dict[str, Any], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = sorted(sweep["links"], key=lambda name: get_profile(name).bandwidth_bytes_per_s)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, key, title in ((axes[0], "p50_vs_raw", "over raw offload"),
                             (axes[1], "p50_vs_best_split8", "over the best split8")):
        for workload in sweep["workloads"]:
            by_link = {p["link"]: p[key] for p in sweep["points"] if p["workload"] == workload}
            axis.plot(links, [by_link.get(link) for link in links], marker="o", label=workload)
        axis.axhline(1.0, color="grey", linestyle=":")
        axis.set_title(f"AgileNN p50 {title}")
        axis.set_xlabel("link (slowest first)")
        axis.set_yscale("log")
    axes[0].set_ylabel("latency ratio (below 1: AgileNN wins)")
    axes[0].legend(fontsize=8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.png"
    figure.suptitle(f"device {sweep['device']}, {sweep['n']} test images a point")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
