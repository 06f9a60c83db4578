"""The fleet as deployed: a Flower SuperLink and two SuperNodes, separate processes on loopback.

The operator's commands from the README, run for real: ``flower-superlink``,
``flower-supernode`` with each node's devices in its node config (one node
trains for two devices, the other for one that sends poisoned updates), and
``flwr run deploy/flower-fleet``, which ships the Flower App to the SuperLink.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import mnist_dir
from transports.zmq_transport import free_loopback_endpoint

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed (it comes with flwr)"
    return found


def _free_port() -> int:
    return int(free_loopback_endpoint().rsplit(":", 1)[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()}")


def test_a_superlink_and_two_supernodes_learn_and_refuse_the_poisoned_device(tmp_path: Path) -> None:
    home = tmp_path / "flwr"
    home.mkdir()
    link = _free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "fleet"\n\n[superlink.fleet]\n'
                                      f'address = "127.0.0.1:{link}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "AGILENN_DATA": str(mnist_dir()),
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    processes: list[subprocess.Popen[bytes]] = []

    def start(tool: str, label: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{label}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([_tool(tool), *args], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        processes.append(process)
        return process, log

    try:
        superlink, log = start("flower-superlink", "superlink", "--insecure", "--port", str(link),
                               "--disable-runtime-dependency-installation")
        _wait_for_port(link, superlink, log)
        for index, devices in enumerate(("devices=\"0 1\"", "devices=2 poison=100.0")):
            start("flower-supernode", f"supernode-{index}", "--insecure", "--superlink", f"127.0.0.1:{link}",
                  "--port", str(_free_port()), "--node-config", devices)
        report = tmp_path / "fleet.json"
        settings = (f'devices=3 rounds=2 train-per-device=24 test-per-device=24 min-nodes=2 node-wait-s=60.0 '
                    f'report="{report}"')
        app = str(ROOT / "deploy" / "flower-fleet")
        run = subprocess.run([_tool("flwr"), "run", app, "fleet", "--stream", "--run-config", settings],
                             env=env, capture_output=True, text=True, timeout=420)
        assert run.returncode == 0, run.stdout + run.stderr
        assert report.exists(), run.stdout + "".join((tmp_path / f).read_text() for f in os.listdir(tmp_path)
                                                      if f.endswith(".log"))
        result = json.loads(report.read_text())
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert result["nodes"] == 2 and result["devices"] == 3 and result["rounds"] == 2
    assert len(result["accuracy_by_round"]) == 2 and 0 < result["fleet_accuracy"] <= 1
    assert result["failed_replies"] == []
    rejected = [(r["round"], r["device"]) for r in result["rejected_updates"]]
    assert rejected == [(1, "device-2"), (2, "device-2")]
    assert all("median" in r["reason"] for r in result["rejected_updates"])
    assert result["bytes_per_device_round"] == result["full_update_bytes"]
