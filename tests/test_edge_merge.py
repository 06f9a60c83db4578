"""EdgeClient's merge modes: on the device (the default, remote logits back) or on the server."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from agilenn.pretrained import load_baseline_checkpoint
from agilenn.data import load_mnist_sample
from edge_node.client import LOCAL_FALLBACK, OFFLOADED, EdgeClient
from server_node.remote import RemoteServer
from agilenn.baselines.models import baseline_payloads
from transports.emulator import get_profile

SAMPLE = load_mnist_sample().head(10)
BASELINE = "pretrained:mnist-full-cnn"
# The local logits on the wire: msgpack key "l" (2 bytes) + bin8 header (2) + 10 float16 (20).
LOCAL_LOGITS_BYTES = 24


@pytest.fixture(scope="module")
def server() -> Iterator[RemoteServer]:
    with RemoteServer.in_memory() as running:
        yield running


@pytest.fixture(scope="module")
def baseline_server() -> Iterator[RemoteServer]:
    with RemoteServer.in_memory(BASELINE) as running:
        yield running


def test_device_and_server_merge_agree_and_the_device_merge_sends_less(server: RemoteServer) -> None:
    with (EdgeClient(transport=server.connect(), merge="device") as on_device,
          EdgeClient(transport=server.connect(), merge="server") as on_server):
        pairs = [(on_device.infer(image), on_server.infer(image)) for image in SAMPLE.images]
    for device, remote in pairs:
        assert device.source == OFFLOADED and remote.source == OFFLOADED, (device.reason, remote.reason)
        assert device.label == remote.label
        np.testing.assert_allclose(device.probabilities, remote.probabilities, atol=2e-2)
        assert device.probabilities.sum() == pytest.approx(1.0, abs=1e-3)
        assert remote.bytes_up - device.bytes_up == LOCAL_LOGITS_BYTES
        assert device.bytes_down > 0 and remote.bytes_down > 0
    labels = [device.label for device, _ in pairs]
    assert sum(label == truth for label, truth in zip(labels, SAMPLE.labels, strict=True)) >= 9


def test_stages_and_server_timings_of_an_offloaded_prediction(server: RemoteServer) -> None:
    for merge in ("device", "server"):
        with EdgeClient(transport=server.connect(), merge=merge) as client:
            prediction = client.infer(SAMPLE.images[0])
        assert prediction.source == OFFLOADED, prediction.reason
        stages = prediction.stages_ms
        assert set(stages) == {"device", "encode", "codec", "transmit", "round_trip", "merge"}
        assert stages["codec"] <= stages["encode"]  # the feature codec is part of the encoding
        assert all(value >= 0 for value in stages.values()), stages
        assert stages["transmit"] <= stages["round_trip"]
        # The stages are measured inside the request, so they cannot exceed its latency.
        assert stages["device"] + stages["encode"] + stages["round_trip"] + stages["merge"] <= (
            prediction.latency_ms + 1e-3)
        timings = prediction.timings_ms
        assert set(timings) == {"queue_ms", "compute_ms", "batch"}
        assert timings["batch"] == 1
        assert timings["queue_ms"] >= 0 and timings["compute_ms"] > 0
        # The server's own time happens inside this side's round trip.
        assert timings["queue_ms"] + timings["compute_ms"] <= stages["round_trip"]


def test_an_unknown_merge_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sideways"):
        EdgeClient(merge="sideways")


def test_the_transmit_stage_is_the_serial_links_serialisation(server: RemoteServer) -> None:
    rate = get_profile("serial-115200").bandwidth_bytes_per_s
    assert rate == 11_520.0
    with EdgeClient(transport=server.connect(), link="serial-115200") as client:
        predictions = [client.infer(image) for image in SAMPLE.images[:3]]
    for prediction in predictions:
        assert prediction.source == OFFLOADED, prediction.reason
        stages = prediction.stages_ms
        uplink_ms = 1e3 * prediction.bytes_up / rate
        downlink_ms = 1e3 * prediction.bytes_down / rate
        assert uplink_ms > 1.5  # ~25-75 bytes (compact frames after the first): milliseconds at 11,520 B/s
        assert uplink_ms - 0.1 <= stages["transmit"] <= uplink_ms + 100
        # Both directions are serialised: the round trip holds the uplink and the downlink.
        assert stages["round_trip"] >= uplink_ms + downlink_ms - 0.1
        assert stages["transmit"] <= stages["round_trip"]


def test_a_baseline_server_refusing_the_payload_gives_a_local_fallback(baseline_server: RemoteServer) -> None:
    with EdgeClient(transport=baseline_server.connect()) as client:
        # The baseline's hash, so the server gets as far as decoding the AgileNN payload.
        client.model_hash = bytes.fromhex(load_baseline_checkpoint(BASELINE).model_hash)
        prediction = client.infer(SAMPLE.images[0])
    assert prediction.source == LOCAL_FALLBACK
    assert prediction.reason.startswith("server: bad-payload:"), prediction.reason
    assert prediction.bytes_up > 0 and prediction.bytes_down > 0  # review finding: they were counted as 0
    # a fallback after a reply still says where its time went: the device part and the wait
    assert set(prediction.stages_ms) == {"device", "encode", "codec", "round_trip"}
    assert sum(prediction.stages_ms.values()) - prediction.stages_ms["codec"] <= prediction.latency_ms + 0.01
    assert prediction.label == SAMPLE.labels[0]  # the local predictor still answers
    assert prediction.probabilities.shape == (10,)


def test_a_reply_without_remote_logits_gives_a_local_fallback(baseline_server: RemoteServer) -> None:
    """A server that answers INFER_REPLY with probabilities but no remote logits.

    The baseline server answers a valid raw-offload payload that way; the client's
    codec is swapped for one that sends such a payload, the only way to make a real
    server answer a device-merge request without remote logits.
    """
    checkpoint = load_baseline_checkpoint(BASELINE)
    image = SAMPLE.images[1]
    raw = baseline_payloads(checkpoint.build_model(), checkpoint.raw_dictionary).encode_raw(image)
    with EdgeClient(transport=baseline_server.connect()) as client:
        client.model_hash = bytes.fromhex(checkpoint.model_hash)
        client.codec = SimpleNamespace(encode=lambda symbols: raw)
        prediction = client.infer(image)
    assert prediction.source == LOCAL_FALLBACK
    assert prediction.reason == "server: unexpected INFER_REPLY reply (no 10 remote logits)"
    assert prediction.reason_code == "bad-reply"
    assert prediction.label == SAMPLE.labels[1]
