"""Per-scheme statistics, the comparisons against the issue's goals, and the printed table."""

from __future__ import annotations

from typing import Any

import numpy as np

from transports.emulator import LinkProfile, get_profile

from .config import BenchConfig
from .devices import DeviceModel
from .schemes import STAGES, Outcome, Scheme
from .stats import latency_percentiles

GOALS = {"bytes_up_vs_raw": 0.5, "accuracy_gap_pp": 0.5, "p50_vs_raw": 0.5, "p50_vs_split8": 1 / 6,
         "p50_vs_best_split8": 0.5, "p50_vs_link_bound": 1.3}
DEVICE_STAGES = ("device", "encode", "merge")


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
    stages["encode"] = device.encode_ms(stages["encode"], outcome.codec_ms if codec_ms is None else codec_ms,
                                        scheme.codec_cycles)
    stages["merge"] = device.compute_ms(stages["merge"], scheme.merge_macs)
    if scheme.device_instructions and device.prices_instructions:
        # The firmware's count covers the extractor, the local predictor, the quantizer and the coder.
        stages["device"], stages["encode"] = device.firmware_ms(scheme.device_instructions), 0.0
    return stages


def scheme_stages(scheme: Scheme, outcomes: list[Outcome], device: DeviceModel) -> list[dict[str, float]]:
    """Every outcome's stages on ``device``; a modelled device scales the scheme's median codec time."""
    typical_codec = float(np.median([o.codec_ms for o in outcomes])) if outcomes else 0.0
    return [
        modelled_stages(o, scheme, device, typical_codec if device.profile.modelled else None)
        for o in outcomes
    ]


def link_bound_ms(outcome: Outcome, stages: dict[str, float], link: LinkProfile) -> float:
    """The least a request could take on ``link``: its bytes' line time both ways and the link's
    fixed delay, plus the device's and the server's measured compute. Nothing else is physics."""
    line = (outcome.bytes_up + outcome.bytes_down) / link.bandwidth_bytes_per_s if link.rate_limited else 0.0
    travel = 2 * link.delay_s if outcome.bytes_down else 0.0
    return 1e3 * (line + travel) + sum(stages[stage] for stage in DEVICE_STAGES) + stages["server"]


def end_to_end_ms(stages: list[dict[str, float]]) -> np.ndarray:
    return np.array([sum(s.values()) for s in stages])


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


def summarise(
    scheme: Scheme, outcomes: list[Outcome], labels: np.ndarray, device: DeviceModel, config: BenchConfig
) -> dict[str, Any]:
    stages = scheme_stages(scheme, outcomes, device)
    totals = end_to_end_ms(stages)
    link = get_profile(config.link)
    bounds = np.array([link_bound_ms(o, s, link) for o, s in zip(outcomes, stages, strict=True)])
    first_pass = outcomes[: len(labels)]
    offloaded = [o for o in outcomes if not o.failure] if scheme.offloads else []
    return {
        "family": scheme.family,
        "accuracy": round(
            float(np.mean([o.predicted == label for o, label in zip(first_pass, labels, strict=True)])), 4
        ),
        "latency_ms": latency_percentiles(totals),
        "stage_ms": {stage: round(float(np.mean([s[stage] for s in stages])), 3) for stage in STAGES},
        "bytes_up_mean": round(float(np.mean([o.bytes_up for o in outcomes])), 1),
        "bytes_down_mean": round(float(np.mean([o.bytes_down for o in outcomes])), 1),
        "throughput_rps": round(1e3 / float(totals.mean()), 2),
        "link_bound_p50_ms": round(float(np.median(bounds)), 3),
        "p50_vs_link_bound": round(float(np.median(totals)) / max(float(np.median(bounds)), 1e-9), 3),
        "requests": len(outcomes),
        "offloaded": len(offloaded),
        "failures": sum(bool(o.failure) for o in outcomes),
        "failure_reasons": sorted({o.failure for o in outcomes if o.failure})[:5],
        "device_macs": scheme.device_macs,
        "stability": window_stability(totals, config.window, config.stability_percentage),
        "latencies_ms": [round(float(v), 3) for v in totals],  # for the CDF plot
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
        if splits:
            best = min(splits, key=lambda name: schemes[name]["latency_ms"]["p50"])
            result.update({"best_split8": best, "p50_vs_best_split8": round(splits[best], 3),
                           "p50_vs_best_split8_goal_met": splits[best] <= GOALS["p50_vs_best_split8"]})
        result["p50_vs_link_bound"] = agilenn["p50_vs_link_bound"]
        result["p50_vs_link_bound_goal_met"] = agilenn["p50_vs_link_bound"] <= GOALS["p50_vs_link_bound"]
    return result


def format_table(report: dict[str, Any]) -> str:
    """The readable summary printed at the end of a run."""
    modelled = " (device stages MODELLED, not measured)" if report["device_modelled"] else ""
    lines = [
        f"link {report['link']}, device {report['device']}{modelled}, {report['n']} requests per scheme "
        f"on {report['dataset']}",
        f"{'scheme':22s} {'acc':>6s} {'up B':>7s} {'down B':>6s} {'p50':>8s} {'p95':>8s} {'p99':>8s} "
        f"{'/bound':>6s}  "
        + " ".join(f"{s:>8s}" for s in STAGES)
        + f" {'req/s':>7s}",
    ]
    for name, values in report["schemes"].items():
        latency = values["latency_ms"]
        lines.append(
            f"{name:22s} {values['accuracy']:6.4f} {values['bytes_up_mean']:7.1f} "
            f"{values['bytes_down_mean']:6.1f} {latency['p50']:8.2f} {latency['p95']:8.2f} "
            f"{latency['p99']:8.2f} {values['p50_vs_link_bound']:6.2f}  "
            + " ".join(f"{values['stage_ms'][s]:8.3f}" for s in STAGES)
            + f" {values['throughput_rps']:7.1f}"
        )
    return "\n".join(lines + _goal_lines(report["comparisons"]))


def _goal_lines(figures: dict[str, Any]) -> list[str]:
    lines = []
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
    if "best_split8" in figures:
        met = figures["p50_vs_best_split8_goal_met"]
        lines.append(f"agilenn vs the best split8 ({figures['best_split8']}): p50 "
                     f"{figures['p50_vs_best_split8']:.3f}x (goal <= 0.5x: {'met' if met else 'NOT met'})")
    if "p50_vs_link_bound" in figures:
        met = figures["p50_vs_link_bound_goal_met"]
        lines.append(f"agilenn p50 over its link-physics bound: {figures['p50_vs_link_bound']:.3f}x "
                     f"(goal <= 1.3x: {'met' if met else 'NOT met'})")
    return lines
