"""EdgeClient: offloading, deadline-aware fallback, errors, threads, asyncio, image shapes.

The client's logic runs on the seam, against an in-memory server; the first
test offloads over a real ZeroMQ socket.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import agilenn
from agilenn.data import load_mnist_sample
from edge_node.client import LOCAL_FALLBACK, OFFLOADED, EdgeClient, LinkEstimator
from server_node.remote import RemoteServer
from transports.emulator import LinkProfile

IMAGES = load_mnist_sample().head(40)


@pytest.fixture(scope="module")
def server() -> Iterator[RemoteServer]:
    with RemoteServer.in_memory(max_queue_delay_us=500) as running:
        yield running


def _client(server: RemoteServer, link: LinkProfile | None = None, **options: Any) -> EdgeClient:
    """An EdgeClient on the seam: an in-memory connection, behind an emulated link if given."""
    return EdgeClient(transport=server.connect(), link=link, **options)


def test_offloaded_predictions_over_a_real_socket_match_the_labels() -> None:
    with agilenn.RemoteServer(max_queue_delay_us=500) as server, \
            agilenn.EdgeClient(server=server.endpoint) as client:
        predictions = [client.infer(image) for image in IMAGES.images]
    assert {p.source for p in predictions} == {OFFLOADED}
    assert sum(p.label == label for p, label in zip(predictions, IMAGES.labels, strict=True)) >= 38
    assert all(p.bytes_up > 0 and p.bytes_down > 0 for p in predictions)


def test_without_a_server_the_local_predictor_answers() -> None:
    with EdgeClient() as client:
        prediction = client.infer(IMAGES.images[0])
    assert prediction.source == LOCAL_FALLBACK and prediction.reason == "no server configured"
    assert prediction.reason_code == "no-server"
    assert prediction.label == IMAGES.labels[0]


def test_unreachable_server_falls_back_with_the_link_as_reason() -> None:
    with EdgeClient(server="tcp://127.0.0.1:9", timeout_s=0.2) as client:
        prediction = client.infer(IMAGES.images[1])
    assert prediction.source == LOCAL_FALLBACK and prediction.reason.startswith("link:")
    assert prediction.reason_code == "link"


def test_a_slow_link_misses_the_deadline_and_the_next_request_is_not_even_sent(server: RemoteServer) -> None:
    slow = LinkProfile("slow", bandwidth_bytes_per_s=1_000.0)  # ~0.15 s a round trip
    with _client(server, slow, deadline_ms=5_000) as client:
        first = client.infer(IMAGES.images[2])  # teaches the estimator the link's speed
        client.deadline_ms = 50
        second = client.infer(IMAGES.images[3])
    # at 1,000 B/s every byte on the wire, up or down, costs 1 ms
    assert first.source == OFFLOADED and first.latency_ms >= first.bytes_up + first.bytes_down
    assert second.source == LOCAL_FALLBACK and second.reason.startswith("deadline: link predicted")
    assert second.reason_code == "deadline-predicted"
    assert second.latency_ms < 50


def test_server_error_falls_back_and_says_why(server: RemoteServer, tmp_path: object) -> None:
    with _client(server) as client:
        client.model_hash = bytes(8)  # as if the device ran another model
        prediction = client.infer(IMAGES.images[4])
    assert prediction.source == LOCAL_FALLBACK and "model-mismatch" in prediction.reason
    assert prediction.reason_code == "server:model-mismatch"


def test_thread_safe_and_async(server: RemoteServer) -> None:
    results: list[int] = []
    with _client(server) as client:
        def work(index: int) -> None:
            results.append(client.infer(IMAGES.images[index]).label)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        async def both() -> list[int]:
            predictions = await asyncio.gather(
                client.ainfer(IMAGES.images[0]), client.ainfer(IMAGES.images[1]))
            return [p.label for p in predictions]

        assert asyncio.run(both()) == list(IMAGES.labels[:2])
    assert sorted(results) == sorted(int(label) for label in IMAGES.labels[:8])


def test_link_estimator_learns_latency_and_bandwidth() -> None:
    estimator = LinkEstimator()
    assert estimator.predict(100) is None
    for size in (100, 1000, 100, 1000, 500):
        estimator.observe(size, 0.010 + size / 100_000)  # 10 ms + 100 kB/s
    assert estimator.predict(2000) == pytest.approx(0.030, rel=0.01)
    assert estimator.predict(0) == pytest.approx(0.010, rel=0.05)


def test_a_reply_after_the_deadline_is_a_fallback_not_an_offload(server: RemoteServer) -> None:
    """Review finding: a late reply was returned as offloaded."""
    slow = LinkProfile("slow", bandwidth_bytes_per_s=2_000.0)  # ~0.1 s a round trip
    with _client(server, slow, deadline_ms=30, timeout_s=5.0) as client:
        prediction = client.infer(IMAGES.images[5])  # no estimate yet: it tries
    assert prediction.source == LOCAL_FALLBACK and prediction.reason.startswith("deadline")
    assert prediction.reason_code == "deadline-late"


def test_a_spent_deadline_sends_nothing(server: RemoteServer) -> None:
    with _client(server, deadline_ms=1e-6) as client:
        prediction = client.infer(IMAGES.images[6])
    assert prediction.reason == "deadline: spent on the device" and prediction.reason_code == "deadline-spent"


def test_the_client_probes_again_after_a_deadline_fallback(
    server: RemoteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: once the estimate said 'too slow', the client never sent again."""
    import time

    import edge_node.client

    monkeypatch.setattr(edge_node.client, "PROBE_INTERVAL_S", 0.3)
    with _client(server, deadline_ms=5_000) as client:
        first = client.infer(IMAGES.images[7])
        size = first.bytes_up + first.bytes_down
        client.estimator.observe(size, 10.0)  # as if the link had been very slow
        client.estimator.observe(size, 10.0)
        assert client.infer(IMAGES.images[8]).source == LOCAL_FALLBACK
        time.sleep(0.35)  # past the probe interval
        assert client.infer(IMAGES.images[9]).source == OFFLOADED


def test_close_waits_for_a_running_inference(server: RemoteServer) -> None:
    client = _client(server)
    results = []
    worker = threading.Thread(target=lambda: results.append(client.infer(IMAGES.images[10])))
    worker.start()
    client.close()
    worker.join()
    assert len(results) == 1 and results[0].label in range(10)
    assert client.infer(IMAGES.images[11]).source == LOCAL_FALLBACK  # closed: local only


@pytest.mark.parametrize("convert", [
    pytest.param(lambda image: image[0], id="grayscale-uint8-HxW"),
    pytest.param(lambda image: image[0].astype(np.float32) / 255.0, id="grayscale-float-HxW"),
    pytest.param(lambda image: image, id="uint8-CxHxW"),
    pytest.param(lambda image: torch.from_numpy(image).float() / 255.0, id="float-tensor-CxHxW"),
])
def test_images_of_every_natural_shape_and_type_give_the_same_answer(
    server: RemoteServer, convert: Any
) -> None:
    """Found as a new user: a (28, 28) grayscale image raised torch's "expected 4D input"."""
    image = IMAGES.images[12]
    assert image.shape == (1, 28, 28) and image.dtype == np.uint8
    with _client(server) as client:
        expected = client.infer(image)
        prediction = client.infer(convert(image))
    assert prediction.source == OFFLOADED and prediction.label == expected.label == IMAGES.labels[12]
    np.testing.assert_allclose(prediction.probabilities, expected.probabilities, atol=1e-3)


@pytest.mark.parametrize("shape", [(28,), (3, 28, 28), (1, 1, 28, 28), (28, 27), (1, 32, 32)])
def test_a_wrong_shape_is_a_value_error_naming_the_shape_expected(shape: tuple[int, ...]) -> None:
    with EdgeClient() as client, \
            pytest.raises(ValueError, match=r"this model takes \(1, 28, 28\) or \(28, 28\)"):
        client.infer(np.zeros(shape, np.uint8))
