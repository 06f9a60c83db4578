"""The Neurosurgeon-style planner: predictions from measured costs, the recommendation, the best cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agilenn.bench.devices import DeviceModel, get_device
from agilenn.bench.planner import (
    COMPACT_ENVELOPE_BYTES,
    COMPACT_REPLY_BYTES,
    Costs,
    best_split,
    plan,
    predict_ms,
)
from agilenn.cli import main
from tests.conftest import mnist_dir
from transports.emulator import get_profile

HOST, STM32 = DeviceModel(get_device("host"), 1e9), DeviceModel(get_device("stm32f746"), 1e9)


def _costs(name: str, device_ms: float, macs: int, payload: float, server_ms: float, accuracy: float = 0.99,
           reply: str = "merged") -> Costs:
    return Costs(name, device_ms, macs, 0.0, payload, server_ms, reply, accuracy)


def test_a_prediction_is_compute_plus_the_frames_line_time_plus_delay() -> None:
    serial = get_profile("serial-115200")
    costs = _costs("split8@2", 1.0, 12_400_000, 100.0, 2.0)
    frames = 100 + COMPACT_ENVELOPE_BYTES + COMPACT_REPLY_BYTES["merged"]
    line_ms = 1e3 * frames / serial.bandwidth_bytes_per_s
    assert predict_ms(costs, serial, HOST) == pytest.approx(1.0 + line_ms + 2.0)
    # On the STM32F746 model, 12.4 M MACs at 124 M MAC/s are 100 ms, whatever the host measured.
    assert predict_ms(costs, serial, STM32) == pytest.approx(100.0 + line_ms + 2.0)
    ble = get_profile("ble-1m")
    assert predict_ms(costs, ble, HOST) > 1.0 + 2.0 + 2e3 * ble.delay_s
    assert predict_ms(_costs("local", 3.0, 0, 0.0, 0.0), serial, HOST) == 3.0  # nothing sent


def test_the_plan_recommends_the_fastest_candidate_accurate_enough_and_the_best_cut() -> None:
    costs = [_costs("agilenn", 0.1, 60_000, 30.0, 0.2, accuracy=0.97, reply="logits"),
             _costs("raw-offload", 0.0, 0, 160.0, 0.4, accuracy=0.995),
             _costs("split8@2", 0.1, 1_900_000, 1400.0, 0.2, accuracy=0.995),
             _costs("split8@5", 0.3, 5_500_000, 75.0, 0.0, accuracy=0.995)]
    serial = get_profile("serial-115200")
    result = plan(costs, serial, HOST)
    assert result["fastest"] == "agilenn" and result["recommended"] == "split8@5"  # agilenn is 2.5 pp worse
    assert plan(costs, serial, HOST, tolerance_pp=3.0)["recommended"] == "agilenn"
    assert [c["name"] for c in result["candidates"]][:2] == ["agilenn", "split8@5"]
    assert result["best_split8"] == "split8@5" and best_split(costs, serial, HOST) == 5
    # A slow device makes the cut that runs the fewest MACs before the link the best one.
    assert best_split(costs, get_profile("wifi-10m"), STM32) == 2
    with pytest.raises(ValueError, match="no split8"):
        best_split(costs[:2], serial, HOST)


def test_agilenn_plan_measures_the_shipped_models_and_writes_its_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", "--link", "serial-115200,wifi-10m", "--device", "host,stm32f746", "--n", "20",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("run ") == 4 and "serial-115200 on stm32f746" in printed
    report = json.loads(out.read_text())
    assert len(report["plans"]) == 4 and report["calibration_images"] == 20
    names = {c["name"] for c in report["plans"][0]["candidates"]}
    assert {"agilenn", "raw-offload", "split8@1", "split8@5"} <= names
    assert all(c["payload_bytes"] > 0 and c["predicted_ms"] > 0 for c in report["plans"][0]["candidates"])


def test_agilenn_plan_refuses_unknown_links(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "--link", "carrier-pigeon"])
    assert "carrier-pigeon" in capsys.readouterr().err


def test_the_sweep_runs_each_workload_on_each_link_with_split8_at_its_planned_cut(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep.json"
    assert main(["bench", "--sweep", "--sweep-workloads", "mnist", "--sweep-links", "serial-115200",
                 "--n", "8", "--warmup", "2", "--window", "4", "--quiet", "--data-dir", str(mnist_dir()),
                 "--json", str(out), "--plot", str(tmp_path)]) == 0
    sweep = json.loads(out.read_text())
    (point,) = sweep["points"]
    assert (point["workload"], point["link"]) == ("mnist", "serial-115200")
    assert point["split8"].startswith("split8@") and set(point["accuracy"]) == {"agilenn", "raw-offload",
                                                                                 point["split8"]}
    assert point["p50_vs_raw"] == pytest.approx(point["agilenn_p50_ms"] / point["raw_p50_ms"], rel=1e-2)
    assert "mnist on serial-115200: AgileNN p50" in capsys.readouterr().out
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_the_sweep_refuses_an_unknown_link(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--sweep", "--sweep-links", "dial-up"]) == 2
    assert "dial-up" in capsys.readouterr().err


def test_a_codec_priced_in_cycles_runs_at_the_modelled_devices_clock() -> None:
    stm32 = DeviceModel(get_device("stm32f746"), 124e8)  # this host 100x the MCU's MAC rate
    assert stm32.encode_ms(5.0, 0.3, codec_cycles=21_600) == pytest.approx(0.1)  # 21,600 cycles at 216 MHz
    assert stm32.encode_ms(5.0, 0.3) == pytest.approx(30.0)  # C code (zstd): the host's time, scaled
    assert DeviceModel(get_device("host"), 124e8).encode_ms(5.0, 0.3, codec_cycles=21_600) == 5.0
