"""Rollout: a server serves several model versions at once, edge clients switch under load, and
no request is lost or answered by another version than the one it was encoded with."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agilenn.checkpoint import Checkpoint
from agilenn.codec import FeatureCodec
from agilenn.daemon import stop_process
from agilenn.data import load_mnist_sample
from agilenn.pretrained import load_checkpoint
from edge_node.client import OFFLOADED, EdgeClient
from server_node.config import ServerConfig
from server_node.remote import RemoteServer
from tests.fakes import ask
from transports.messages import ErrorReply, InferRequest, Message, MessageType, decode_message, encode_message
from transports.zmq_transport import Requester, ZmqClientTransport

SHIPPED = load_checkpoint("pretrained:mnist")
SAMPLE = load_mnist_sample()


def _version(path: Path, prefix: str, seed: int) -> str:
    """The shipped model with the tensors under ``prefix`` nudged: a new version, a new hash."""
    generator = torch.Generator().manual_seed(seed)
    state = {name: tensor + 0.05 * torch.randn(tensor.shape, generator=generator).to(tensor.dtype)
             if name.startswith(prefix) and tensor.is_floating_point() else tensor
             for name, tensor in SHIPPED.state_dict.items()}
    path.write_bytes(Checkpoint(SHIPPED.config, SHIPPED.codec, state, {}).to_bytes())
    return str(path)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("versions")
    return {"v1": "pretrained:mnist",
            "local": _version(folder / "local.agnn", "local_predictor.", 1),  # the device part only
            "remote": _version(folder / "remote.agnn", "remote_predictor.", 2)}  # the remote part too


def _expected(spec: str, index: int) -> np.ndarray:
    with torch.no_grad():
        images = torch.from_numpy(SAMPLE.images[index:index + 1]).float() / 255.0
        return torch.softmax(load_checkpoint(spec).build_model()(images).logits[0], 0).numpy()


def test_versions_that_change_only_the_device_part_share_one_served_model(versions: dict[str, str]) -> None:
    listed = ",".join([versions["local"], versions["remote"]])
    with RemoteServer(versions["v1"], models=listed) as server:
        served = server.server.versions.by_hash
        by_spec = {version.spec: version.served for version in served.values()}
        assert len(served) == 3
        assert by_spec[versions["local"]] is by_spec[versions["v1"]]
        assert by_spec[versions["remote"]] is not by_spec[versions["v1"]]


def test_a_rollout_forward_and_back_under_load_loses_nothing_and_mixes_no_versions(
        versions: dict[str, str]) -> None:
    wanted = {"config": ServerConfig(model=versions["v1"], bind="tcp://127.0.0.1:0")}
    with RemoteServer(versions["v1"], reloader=lambda: wanted["config"]) as server:
        def serve(*specs: str) -> None:
            wanted["config"] = dataclasses.replace(wanted["config"], model=specs[0],
                                                   models=",".join(specs[1:]))
            server.server.reload_later()
            hashes = {load_checkpoint(spec).model_hash for spec in specs}
            deadline = time.monotonic() + 10
            while {h.hex() for h in server.server.versions.by_hash} != hashes:
                assert time.monotonic() < deadline, "the server did not reload"
                time.sleep(0.02)

        clients = [EdgeClient(versions["v1"], server.endpoint, device_id=f"edge-{i}", timeout_s=5.0)
                   for i in range(3)]
        results: list[tuple[int, str, str, np.ndarray]] = []  # (image, source, version, probabilities)
        stop = threading.Event()

        def stream(client: EdgeClient, offset: int) -> None:
            index = offset
            while not stop.is_set():
                prediction = client.infer(SAMPLE.images[index % 64])
                results.append((index % 64, prediction.source, prediction.model_hash,
                                prediction.probabilities))
                index += 1

        threads = [threading.Thread(target=stream, args=(c, 7 * i)) for i, c in enumerate(clients)]
        for thread in threads:
            thread.start()
        try:
            for old, new in (("v1", "remote"), ("remote", "local"), ("local", "v1")):
                time.sleep(0.3)
                serve(versions[old], versions[new])  # both live during the switch
                for client in clients:
                    client.switch_model(versions[new])
                    time.sleep(0.1)
                serve(versions[new])  # the old one retired once no edge runs it
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for client in clients:
                client.close()
    by_hash = {load_checkpoint(spec).model_hash: spec for spec in versions.values()}
    assert len(results) > 100 and {version for _, _, version, _ in results} == set(by_hash)
    lost = [r for r in results if r[1] != OFFLOADED]
    assert lost == []
    for index, _, version, probabilities in results[::7]:  # answered by the version that encoded it
        assert np.allclose(probabilities, _expected(by_hash[version], index), atol=2e-3)


def test_a_retired_version_is_refused_with_its_reason(versions: dict[str, str]) -> None:
    wanted = {"config": ServerConfig(model=versions["v1"], models=versions["local"])}
    with RemoteServer(versions["v1"], models=versions["local"], reloader=lambda: wanted["config"]) as server:
        wanted["config"] = ServerConfig(model=versions["v1"])
        server.server.reload_later()
        local_hash = bytes.fromhex(load_checkpoint(versions["local"]).model_hash)
        deadline = time.monotonic() + 10
        while local_hash in server.server.versions.by_hash:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        reply = ask(server, InferRequest(b"\x00").message(5, "edge-x", local_hash))
        assert reply.type is MessageType.ERROR
        error = ErrorReply.parse(reply)
        assert error.code == "model-mismatch" and "was retired" in error.reason


def test_a_reload_naming_a_broken_model_keeps_serving_what_it_served(tmp_path: Path,
                                                                     versions: dict[str, str]) -> None:
    broken = tmp_path / "broken.agnn"
    broken.write_bytes(b"not a checkpoint")
    wanted = {"config": ServerConfig(model=versions["v1"], models=str(broken))}
    with RemoteServer(versions["v1"], reloader=lambda: wanted["config"]) as server, \
            EdgeClient(versions["v1"], server.endpoint, timeout_s=5.0) as client:
        server.server.reload_later()
        time.sleep(0.5)
        assert client.infer(SAMPLE.images[0]).source == OFFLOADED
        assert [h.hex() for h in server.server.versions.by_hash] == [SHIPPED.model_hash]


def test_sighup_makes_the_server_process_read_its_config_file_anew(tmp_path: Path,
                                                                   versions: dict[str, str]) -> None:
    config = tmp_path / "server.toml"
    config.write_text('model = "pretrained:mnist"\nbind = "tcp://127.0.0.1:0"\n')
    process = subprocess.Popen([sys.executable, "-m", "agilenn", "server", "--config", str(config)],
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "AGILENN_LOG_LEVEL": "INFO", "AGILENN_LOG_FORMAT": "text"})
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        endpoint = first.split(" on ")[1].split(" ")[0]
        local_hash = bytes.fromhex(load_checkpoint(versions["local"]).model_hash)
        symbols = SHIPPED.build_model().device_forward(
            torch.from_numpy(SAMPLE.images[:1]).float() / 255.0).symbols[0].numpy()
        request = InferRequest(FeatureCodec(SHIPPED.codec).encode(symbols)).message(1, "edge-h", local_hash)
        with EdgeClient("pretrained:mnist", endpoint) as probe:  # the server answers, local is not served
            assert probe.infer(SAMPLE.images[0]).source == OFFLOADED
        assert _ask_endpoint(endpoint, request).type is MessageType.ERROR
        config.write_text(f'model = "pretrained:mnist"\nmodels = "{versions["local"]}"\n'
                          f'bind = "tcp://127.0.0.1:0"\n')
        process.send_signal(signal.SIGHUP)
        lines = []
        while not lines or "now serving version" not in lines[-1]:  # a rejection may come first
            lines.append(process.stderr.readline())
            assert len(lines) < 10 and lines[-1], lines
        assert _ask_endpoint(endpoint, request).type is MessageType.INFER_REPLY
    finally:
        assert stop_process(process) == 0
        if process.stderr is not None:
            process.stderr.close()


def _ask_endpoint(endpoint: str, request: Message) -> Message:
    client = ZmqClientTransport(endpoint)
    try:
        data = Requester(client, timeout=5.0, attempts=1).request(
            encode_message(request), lambda d: decode_message(d).request_id == request.request_id)
    finally:
        client.close()
    return decode_message(data)
