"""``agilenn edge`` as a daemon: EdgeConfig layering, stream mode with metrics, CURVE flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agilenn.cli import main
from edge_node.config import EdgeConfig
from edge_node.daemon import EdgeNode
from server_node.remote import RemoteServer
from transports.curve import generate_keypair


def _samples(node: EdgeNode, name: str) -> dict[str, float]:
    """label value (or "" for an unlabelled metric) -> value, for one metric of ``node``."""
    return {"/".join(s.labels.values()): s.value for metric in node.metrics.registry.collect()
            for s in metric.samples if s.name == name}


def test_edge_config_layers_and_refuses_what_cannot_work(tmp_path: Path) -> None:
    config_file = tmp_path / "edge.toml"
    config_file.write_text('server = "tcp://10.0.0.5:5555"\ndeadline_ms = 80.0\n')
    config = EdgeConfig.load(config_file, env={"AGILENN_DEVICE_ID": "cam-7"}, limit=3)
    assert (config.server, config.deadline_ms, config.device_id, config.limit) == (
        "tcp://10.0.0.5:5555", 80.0, "cam-7", 3)
    for bad, message in [({"merge": "sideways"}, "merge must be one of device, server"),
                         ({"serial": "/dev/ttyUSB0"}, "gateway mode .serial. needs server"),
                         ({"curve_secret_key": "k"}, "CURVE needs both"),
                         ({"timeout_s": 0.0}, "timeouts must be positive")]:
        with pytest.raises(ValueError, match=message):
            EdgeConfig(**bad)  # type: ignore[arg-type]


def test_stream_mode_classifies_the_source_then_stops_and_counts_everything() -> None:
    records: list[dict[str, Any]] = []
    with RemoteServer.in_memory() as server:
        node = EdgeNode(EdgeConfig(limit=6), records.append, transport=server.connect())
        assert node.run() == 0  # stops by itself at the end of the source
    assert [r["index"] for r in records] == list(range(6))
    assert all(r["source"] == "offloaded" for r in records)
    assert sum(r["predicted"] == r["label"] for r in records) >= 5
    assert _samples(node, "agilenn_edge_requests_total") == {"": 6.0}
    assert _samples(node, "agilenn_edge_offloaded_total") == {"": 6.0}
    assert _samples(node, "agilenn_edge_bytes_up_total")[""] == sum(r["bytes_up"] for r in records)
    assert _samples(node, "agilenn_edge_bytes_down_total")[""] == sum(r["bytes_down"] for r in records)
    assert _samples(node, "agilenn_edge_link_estimate_seconds")[""] > 0


def test_fallbacks_are_counted_by_reason() -> None:
    records: list[dict[str, Any]] = []
    with RemoteServer.in_memory("pretrained:mnist-full-cnn") as baseline:  # another model: mismatch
        node = EdgeNode(EdgeConfig(limit=3), records.append, transport=baseline.connect())
        node.run()
    assert {r["source"] for r in records} == {"local-fallback"}
    assert _samples(node, "agilenn_edge_fallbacks_total") == {"server:model-mismatch": 3.0}
    assert _samples(node, "agilenn_edge_offloaded_total") == {"": 0.0}


@pytest.fixture
def curve_keys(tmp_path: Path) -> dict[str, Path]:
    _, server_secret = generate_keypair(tmp_path / "server", "server")
    device_public, device_secret = generate_keypair(tmp_path / "device", "device")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(device_public, allowed)
    return {"server_secret": server_secret, "server_public": tmp_path / "server" / "server.key",
            "device_secret": device_secret, "allowed": allowed}


def test_the_edge_command_reaches_a_curve_server_with_its_flags(
    curve_keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Found as a new user: the library could reach a CURVE server, `agilenn edge` could not."""
    with RemoteServer(curve_secret_key=str(curve_keys["server_secret"]),
                      curve_allowlist=str(curve_keys["allowed"])) as server:
        code = main(["edge", "--server", server.endpoint, "--limit", "3", "--log-level", "WARNING",
                     "--curve-secret-key", str(curve_keys["device_secret"]),
                     "--curve-server-key", str(curve_keys["server_public"])])
        assert code == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["source"] for r in records] == ["offloaded"] * 3
        code = main(["edge", "--server", server.endpoint, "--limit", "1", "--timeout-s", "0.3",
                     "--log-level", "WARNING"])  # no keys: the CURVE server never answers
        assert code == 0
        (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert record["source"] == "local-fallback" and record["reason"].startswith("link:")


def test_the_edge_command_reports_bad_settings_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["edge", "--link", "carrier-pigeon"]) == 2
    assert main(["edge", "--serial", "/dev/null"]) == 2
    assert main(["edge", "--source", "/no/such/folder", "--log-level", "WARNING"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and all(line.startswith("agilenn: error:") for line in errors)
    assert "carrier-pigeon" in errors[0] and "needs server" in errors[1] and "/no/such/folder" in errors[2]
