"""The inference server: replies, errors with reasons, batching, metrics, shutdown."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import torch

from agilenn.codec import FeatureCodec
from agilenn.data import load_mnist_sample
from agilenn.pretrained import load_pretrained
from server_node.config import ServerConfig
from server_node.remote import RemoteServer
from transports.messages import (
    MAX_PAYLOAD_BYTES,
    Message,
    MessageType,
    decode_message,
    encode_message,
    logits_from_bytes,
    logits_to_bytes,
)
from transports.zmq_transport import Requester, ZmqClientTransport

from .conftest import reap

CHECKPOINT = load_pretrained("mnist")
MODEL = CHECKPOINT.build_model()
CODEC = FeatureCodec(CHECKPOINT.codec)
HASH = bytes.fromhex(CHECKPOINT.model_hash)
SAMPLE = load_mnist_sample()


def _request(index: int, request_id: int | None = None, **changes: object) -> Message:
    images, _ = SAMPLE.batch(slice(index, index + 1))
    device = MODEL.device_forward(images)
    body = {"p": CODEC.encode(device.symbols[0].numpy()),
            "l": logits_to_bytes(device.local_logits[0].numpy())}
    message = Message(MessageType.INFER_REQUEST, index if request_id is None else request_id,
                      f"dev-{index}", HASH, body)
    return message._replace(**changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[RemoteServer]:
    with RemoteServer(max_batch_size=8, max_queue_delay_us=5000, metrics_port=0) as running:
        yield running


def _ask(endpoint: str, data: bytes, request_id: int) -> Message:
    client = ZmqClientTransport(endpoint)
    try:
        reply = Requester(client, timeout=5.0, attempts=1).request(
            data, lambda d: decode_message(d).request_id == request_id)
    finally:
        client.close()
    return decode_message(reply)


def _failing_once(real: Callable[..., Any], error: Exception) -> Callable[..., Any]:
    """``real``, except that its first call raises ``error``."""
    calls = itertools.count()

    def wrapper(*args: Any) -> Any:
        if next(calls) == 0:
            raise error
        return real(*args)
    return wrapper


def test_a_request_gets_the_merged_prediction(server: RemoteServer) -> None:
    reply = _ask(server.endpoint, encode_message(_request(0)), 0)
    assert reply.type is MessageType.INFER_REPLY
    images, labels = SAMPLE.batch(slice(0, 1))
    device = MODEL.device_forward(images)
    expected = torch.softmax(MODEL.server_forward(device.symbols, device.local_logits), 1)[0].numpy()
    assert reply.body["c"] == int(labels[0]) == int(expected.argmax())
    assert np.allclose(logits_from_bytes(reply.body["pr"]), expected, atol=2e-3)
    timings = reply.body["tm"]
    assert set(timings) == {"q", "s", "b"} and timings["b"] == 1
    assert all(type(value) is int and value >= 0 for value in timings.values())  # whole microseconds


def test_without_local_logits_the_reply_carries_remote_logits_for_the_device_to_merge(
    server: RemoteServer
) -> None:
    request = _request(0)
    body = {"p": request.body["p"]}
    reply = _ask(server.endpoint, encode_message(request._replace(request_id=7, body=body)), 7)
    assert reply.type is MessageType.INFER_REPLY and "pr" not in reply.body
    images, labels = SAMPLE.batch(slice(0, 1))
    device = MODEL.device_forward(images)
    remote = MODEL.remote_logits(device.symbols)[0]
    assert np.allclose(logits_from_bytes(reply.body["lg"]), remote.numpy(), atol=2e-2)
    merged = MODEL.merge(device.local_logits[0], torch.from_numpy(logits_from_bytes(reply.body["lg"])))
    assert int(merged.argmax()) == int(labels[0])


def _raw(*items: object) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


BAD_INPUTS = {
    "not-msgpack": (b"\xc1\xff garbage", 0, "malformed"),
    # Rejected by the schema, yet the reply still echoes the request id: the
    # sender learns why at once instead of waiting out its timeout.
    "wrong-version": (_raw(9, 1, 5, "d", HASH, {}, {}), 5, "unsupported-version"),
    "oversized": (_raw(1, 1, 6, "d", HASH, {}, {"p": bytes(MAX_PAYLOAD_BYTES + 1), "l": b""}), 6,
                  "too-large"),
    "nan-logits": (_raw(1, 1, 7, "d", HASH, {}, {"p": b"x", "l": b"\x00\x7e" * 10}), 7, "non-finite"),
    "wrong-hash": (encode_message(_request(2, 8, model_hash=bytes(8))), 8, "model-mismatch"),
    "garbage-payload": (encode_message(_request(3, 9)._replace(body={"p": b"\xa1\x08\x10\x07\x07xx",
                                                                     "l": _request(3).body["l"]})),
                        9, "bad-payload"),
    "wrong-class-count": (encode_message(_request(4, 10)._replace(
        body={"p": _request(4).body["p"], "l": logits_to_bytes(np.zeros(3))})), 10, "bad-payload"),
    "unsupported-type": (encode_message(Message(MessageType.HELLO, 11, "d", HASH, {"firmware": "1"})), 11,
                         "unsupported"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_answered_with_a_reason_and_the_server_keeps_serving(
    server: RemoteServer, name: str
) -> None:
    data, request_id, code = BAD_INPUTS[name]
    reply = _ask(server.endpoint, data, request_id)
    assert reply.type is MessageType.ERROR
    assert reply.body["code"] == code and reply.body["reason"]
    assert _ask(server.endpoint, encode_message(_request(5, 500)), 500).type is MessageType.INFER_REPLY


def test_model_mismatch_names_both_hashes(server: RemoteServer) -> None:
    reply = _ask(server.endpoint, encode_message(_request(2, 12, model_hash=bytes(8))), 12)
    assert "0000000000000000" in reply.body["reason"] and CHECKPOINT.model_hash in reply.body["reason"]


def test_ping_is_answered_with_pong(server: RemoteServer) -> None:
    reply = _ask(server.endpoint, encode_message(Message(MessageType.PING, 77, "d")), 77)
    assert reply.type is MessageType.PONG and reply.model_hash == HASH


def test_concurrent_devices_are_batched(server: RemoteServer) -> None:
    replies: list[Message] = []
    lock = threading.Lock()

    def device(index: int) -> None:
        reply = _ask(server.endpoint, encode_message(_request(index, 1000 + index)), 1000 + index)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=device, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(replies) == 16 and all(r.type is MessageType.INFER_REPLY for r in replies)
    assert max(r.body["tm"]["b"] for r in replies) > 1
    assert all(r.body["tm"]["b"] <= 8 for r in replies)
    assert sum(r.body["c"] == SAMPLE.labels[r.request_id - 1000] for r in replies) >= 15


def test_metrics_endpoint_reports_requests_and_failures(server: RemoteServer) -> None:
    _ask(server.endpoint, encode_message(_request(2, 13, model_hash=bytes(8))), 13)
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert "agilenn_requests_total" in text
    assert 'agilenn_failures_total{reason="model-mismatch"}' in text
    assert "agilenn_batch_size_bucket" in text and "agilenn_connected_devices" in text


def test_shutdown_answers_requests_that_already_arrived() -> None:
    server = RemoteServer(max_batch_size=64, max_queue_delay_us=2_000_000)  # batches wait 2 s
    server.start()
    client = ZmqClientTransport(server.endpoint)
    for i in range(5):
        client.send(encode_message(_request(i, 2000 + i)))
    time.sleep(0.3)  # they sit in the batch queue
    server.stop()
    replies = [client.recv(2.0) for _ in range(5)]
    client.close()
    assert all(r is not None for r in replies)
    assert sorted(decode_message(r).request_id for r in replies if r) == [2000 + i for i in range(5)]


def test_config_layers_file_env_and_flags(tmp_path: pytest.TempPathFactory) -> None:
    config_file = tmp_path / "server.toml"  # type: ignore[operator]
    config_file.write_text('max_batch_size = 16\nbind = "tcp://127.0.0.1:7000"\n')
    config = ServerConfig.load(config_file, env={"AGILENN_MAX_BATCH_SIZE": "24"}, bind="tcp://127.0.0.1:0")
    assert config.max_batch_size == 24 and config.bind == "tcp://127.0.0.1:0"
    with pytest.raises(ValueError, match="unknown server settings"):
        ServerConfig.load(env={}, max_batchsize=3)
    with pytest.raises(ValueError, match="AGILENN_TORCH_THREADS"):
        ServerConfig.load(env={"AGILENN_TORCH_THREADS": "many"})


def test_server_daemon_stops_cleanly_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "agilenn", "server", "--bind", "tcp://127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "AGILENN_LOG_LEVEL": "INFO"},
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # the "serving agilenn HASH ..." log line
        assert "serving agilenn cca630480292b6c0" in line, line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "stopped" in process.stderr.read()
    finally:
        reap(process)


def test_remote_server_reports_a_model_that_cannot_load(tmp_path: pytest.TempPathFactory) -> None:
    server = RemoteServer(model=str(tmp_path / "missing.agnn"))  # type: ignore[operator]
    with pytest.raises(FileNotFoundError):
        server.start()


def test_a_failing_batch_is_answered_and_the_server_keeps_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: one exception in the model killed the loop, leaving requests unanswered."""
    with RemoteServer(max_batch_size=4, max_queue_delay_us=1000) as server:
        model = server.server.served.model  # type: ignore[attr-defined]
        # a fault no input can produce
        monkeypatch.setattr(model, "remote_logits",
                            _failing_once(model.remote_logits, RuntimeError("simulated out-of-memory")))
        first = _ask(server.endpoint, encode_message(_request(0, 3000)), 3000)
        second = _ask(server.endpoint, encode_message(_request(1, 3001)), 3001)
    assert first.type is MessageType.ERROR and first.body["code"] == "internal"
    assert second.type is MessageType.INFER_REPLY


def test_a_failed_start_releases_the_port() -> None:
    import socket as sockets

    with sockets.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        server = RemoteServer(bind="tcp://127.0.0.1:0", metrics_port=busy_port)
        with pytest.raises(OSError):
            server.start()
    endpoint = server.server.endpoint
    assert endpoint  # it had bound before the metrics port failed
    with RemoteServer(bind=endpoint) as again:  # the same port is free again
        assert again.endpoint == endpoint


def test_spoofed_device_ids_keep_the_device_map_bounded() -> None:
    from server_node.metrics import _MAX_TRACKED_DEVICES, ServerMetrics

    metrics = ServerMetrics()
    for index in range(_MAX_TRACKED_DEVICES + 500):
        metrics.saw_device(f"spoof-{index}")
    assert len(metrics._last_seen) == _MAX_TRACKED_DEVICES
    assert "spoof-0" not in metrics._last_seen and f"spoof-{_MAX_TRACKED_DEVICES + 499}" in metrics._last_seen


def test_server_cli_reports_bad_settings_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from agilenn.cli import main

    assert main(["server", "--log-level", "LOUD", "--bind", "tcp://127.0.0.1:0"]) == 2
    assert "LOUD" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_batch_size must be a int"):
        ServerConfig(max_batch_size="8")  # type: ignore[arg-type]


def _all_replies(endpoint: str, requests: list[Message]) -> list[Message]:
    """Send ``requests`` together (so they share a batch) and collect every reply until 2 s of quiet."""
    client = ZmqClientTransport(endpoint)
    try:
        for request in requests:
            client.send(encode_message(request))
        replies = []
        while (data := client.recv(2.0)) is not None:
            replies.append(decode_message(data))
    finally:
        client.close()
    return replies


def test_an_invalid_result_fails_only_its_own_request_and_each_is_answered_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: one NaN in a batch answered the whole batch twice (reply, then ERROR)."""
    with RemoteServer(max_batch_size=4, max_queue_delay_us=200_000) as server:
        served = server.server.served  # type: ignore[attr-defined]
        real_run = served.run

        def nan_for_the_first(prepared: list[object]) -> list[dict[str, object]]:
            bodies = real_run(prepared)
            bodies[0]["lg"] = b"\x00\x7e" * 10  # float16 NaN: a fault no valid input can produce
            return bodies

        monkeypatch.setattr(served, "run", nan_for_the_first)
        requests = [_request(i, 10 + i) for i in range(3)]
        replies = _all_replies(server.endpoint, [r._replace(body={"p": r.body["p"]}) for r in requests])
    assert sorted(r.request_id for r in replies) == [10, 11, 12]  # each answered exactly once
    errors = [r for r in replies if r.type is MessageType.ERROR]
    assert len(errors) == 1 and errors[0].request_id == 10 and errors[0].body["code"] == "internal"
    assert "invalid" in errors[0].body["reason"]
    assert all(r.type is MessageType.INFER_REPLY for r in replies if r not in errors)


def test_an_unexpected_decoder_failure_costs_one_request_not_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with RemoteServer() as server:
        served = server.server.served  # type: ignore[attr-defined]
        # not a CodecError: a decoder bug
        monkeypatch.setattr(served, "prepare", _failing_once(served.prepare, MemoryError("simulated")))
        first = _ask(server.endpoint, encode_message(_request(0, 20)), 20)
        second = _ask(server.endpoint, encode_message(_request(1, 21)), 21)
    assert first.type is MessageType.ERROR and first.body["code"] == "bad-payload"
    assert second.type is MessageType.INFER_REPLY


def test_a_model_that_returns_too_few_results_gets_each_request_one_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: replies went out for part of the batch, then every request got an ERROR too."""
    with RemoteServer(max_batch_size=4, max_queue_delay_us=200_000) as server:
        served = server.server.served  # type: ignore[attr-defined]
        real_run = served.run
        monkeypatch.setattr(served, "run", lambda prepared: real_run(prepared)[:-1])  # a broken model
        replies = _all_replies(server.endpoint, [_request(i, 30 + i) for i in range(3)])
    assert sorted(r.request_id for r in replies) == [30, 31, 32]
    assert all(r.type is MessageType.ERROR and r.body["code"] == "internal" for r in replies)
