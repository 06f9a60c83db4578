"""The three PNG figures of a bench report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from .schemes import FAMILIES, STAGES, Family  # noqa: E402

# tab10 without its red, which is AgileNN's alone
OTHER_COLOURS = [to_hex(plt.get_cmap("tab10")(i)) for i in range(10) if i != 3]


def _colours(report: dict[str, Any]) -> dict[str, str]:
    """One colour per scheme, the same in every figure."""
    others = [name for name in report["schemes"] if name != "agilenn"]
    colours = {name: OTHER_COLOURS[i % len(OTHER_COLOURS)] for i, name in enumerate(others)}
    colours["agilenn"] = "#d62728"
    return colours


def _style(family: str) -> type[Family]:
    """The family's marker and line style; a report from a family not registered here gets the defaults."""
    return FAMILIES.get(family, Family)


def _title(report: dict[str, Any], what: str) -> str:
    device = f"{report['device']} (modelled)" if report["device_modelled"] else report["device"]
    return f"{what}\nlink {report['link']}, device {device}, {report['n']} MNIST test images"


def _finish(figure: Any, axes: Any, report: dict[str, Any], path: Path, title: str, xlabel: str,
            ylabel: str) -> None:
    """Log x axis, grid, the legend outside on the right, title; then save."""
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes.set_title(_title(report, title), fontsize=10)
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_accuracy_vs_bytes(report: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.8))
    colours = _colours(report)
    for name, values in report["schemes"].items():
        x = max(values["bytes_up_mean"], 1.0)  # local-only sends nothing: drawn at 1 so a log axis shows it
        marker = _style(values["family"]).marker
        size = 160 if name == "agilenn" else 50
        axes.scatter(x, 100 * values["accuracy"], color=colours[name], marker=marker, s=size, zorder=3,
                     label=name, edgecolors="black", linewidths=0.5)
    _finish(figure, axes, report, path, "Accuracy against bytes sent",
            "bytes up per request (mean; local-only drawn at 1)", "accuracy (%)")


def plot_latency_cdf(report: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.8))
    colours = _colours(report)
    for name, values in report["schemes"].items():
        latencies = np.sort(np.asarray(values["latencies_ms"]))
        fraction = np.arange(1, len(latencies) + 1) / len(latencies)
        axes.step(latencies, fraction, where="post", label=name, color=colours[name],
                  linestyle=_style(values["family"]).linestyle, linewidth=2.4 if name == "agilenn" else 1.3)
    _finish(figure, axes, report, path, "Latency CDF per scheme", "end-to-end latency (ms, log scale)",
            "fraction of requests")


def plot_stage_breakdown(report: dict[str, Any], path: Path) -> None:
    names = list(report["schemes"])
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(names) + 2.0))
    left = np.zeros(len(names))
    palette = plt.get_cmap("tab10")
    for index, stage in enumerate(STAGES):
        widths = np.array([report["schemes"][name]["stage_ms"][stage] for name in names])
        axes.barh(names, widths, left=left, label=stage, color=palette(index))
        left += widths
    for row, total in enumerate(left):
        axes.annotate(f"{total:.1f} ms", (total, row), textcoords="offset points", xytext=(4, -3), fontsize=8)
    axes.set_xlim(0, 1.15 * max(left.max(), 1e-3))
    axes.invert_yaxis()
    axes.set_xlabel("mean time per request (ms)")
    axes.legend(fontsize=8, ncol=len(STAGES), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    axes.set_title(_title(report, "Where the time goes (mean per stage)"), fontsize=10)
    _save(figure, path)


def write_plots(report: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{report['link']}_{report['device']}"
    plots = {"accuracy_vs_bytes": plot_accuracy_vs_bytes, "latency_cdf": plot_latency_cdf,
             "stages": plot_stage_breakdown}
    paths = []
    for suffix, plot in plots.items():
        paths.append(folder / f"{stem}_{suffix}.png")
        plot(report, paths[-1])
    return paths
