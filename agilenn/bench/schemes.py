"""One client per scheme. Each classifies one image and times its own stages.

Stages of a request, in order (milliseconds): ``device`` (the network on the
device), ``encode`` (payload and message), ``transmit`` (the uplink: the
emulator's serialisation and delay), ``queue`` and ``server`` (the server's
own timings from the reply), ``reply`` (the rest of the round trip: the
downlink, sockets and the server's decode) and ``merge`` (decoding the reply
and, for AgileNN, merging with the local logits). They add up to the
request's end-to-end latency.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_node.client import EdgeClient
from server_node.served import baseline_payloads
from transports.emulator import LinkProfile, last_uplink_seconds
from transports.errors import TransportError
from transports.messages import Message, MessageType, decode_message, encode_message, logits_from_bytes
from transports.zmq_transport import Requester, open_client

from ..baselines.checkpoint import BaselineCheckpoint
from ..baselines.models import FullCNN, count_macs
from ..checkpoint import Checkpoint
from ..model import split_channels

STAGES = ("device", "encode", "transmit", "queue", "server", "reply", "merge")
FAMILIES = ("agilenn", "local-only", "raw-offload", "jpeg-offload", "split8")


@dataclass
class Outcome:
    predicted: int
    stages_ms: dict[str, float]
    bytes_up: int = 0
    bytes_down: int = 0
    failure: str = ""  # why the server's answer was not used (the prediction is then local, or -1)
    codec_ms: float = 0.0  # the payload codec's share of the encode stage (zstd, JPEG, quantisation)

    @property
    def latency_ms(self) -> float:
        return sum(self.stages_ms.values())


@dataclass
class Scheme:
    """A named way to classify an image; ``classify`` returns an :class:`Outcome`."""

    name: str
    family: str
    device_macs: int
    offloads: bool
    classify: Callable[[np.ndarray], Outcome]
    closers: list[Callable[[], None]] = field(default_factory=list)
    merge_macs: int = 0  # the device's arithmetic on the reply: AgileNN's weighted sum of logits

    def close(self) -> None:
        for close in self.closers:
            close()


def _as_input(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0).unsqueeze(0)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, 1e3 * (time.perf_counter() - started)


# ------------------------------------------------------------------ AgileNN
def agilenn_scheme(model_spec: str, server: str, link: LinkProfile | None, timeout_s: float,
                   seed: int) -> Scheme:
    """The library's own EdgeClient, merging on the device."""
    client = EdgeClient(model_spec, server=server, link=link, timeout_s=timeout_s, seed=seed,
                        device_id="dev-a")
    model = client.model

    def classify(image: np.ndarray) -> Outcome:
        prediction = client.infer(image)
        stages, server = prediction.stages_ms, prediction.timings_ms
        if prediction.source != "offloaded":  # answered locally; any wait for the server counts as reply
            waited = {"device": stages.get("device", prediction.latency_ms),
                      "encode": stages.get("encode", 0.0), "reply": stages.get("round_trip", 0.0)}
            return Outcome(prediction.label, waited, prediction.bytes_up, prediction.bytes_down,
                           failure=prediction.reason)
        reply = stages["round_trip"] - stages["transmit"] - server["queue_ms"] - server["compute_ms"]
        return Outcome(prediction.label, {
            "device": stages["device"], "encode": stages["encode"], "transmit": stages["transmit"],
            "queue": server["queue_ms"], "server": server["compute_ms"], "reply": reply,
            "merge": stages["merge"]}, prediction.bytes_up, prediction.bytes_down, codec_ms=stages["codec"])

    config = model.config
    # Quantising is one subtract-and-compare per centroid for every offloaded element.
    quantize_ops = config.remote_channels * config.feature_size**2 * config.n_centroids
    macs = count_macs(model, torch.zeros(1, *image_shape(config)), model.device_forward) + quantize_ops
    return Scheme("agilenn", "agilenn", macs, True, classify, [client.close],
                  merge_macs=2 * config.num_classes)


def image_shape(config: Any) -> tuple[int, int, int]:
    return config.in_channels, config.image_size, config.image_size


# ------------------------------------------------------------------ local only
def local_scheme(name: str, network: Callable[[torch.Tensor], torch.Tensor], root: nn.Module,
                 shape: tuple[int, int, int]) -> Scheme:
    def classify(image: np.ndarray) -> Outcome:
        with torch.no_grad():
            logits, device_ms = _timed(lambda: network(_as_input(image)))
        return Outcome(int(logits.argmax()), {"device": device_ms})

    return Scheme(name, "local-only", count_macs(root, torch.zeros(1, *shape), network), False, classify)


def agilenn_local_scheme(checkpoint: Checkpoint) -> Scheme:
    """AgileNN's own local predictor on its top-k channels, with no offloading at all."""
    model = checkpoint.build_model()

    def local(x: torch.Tensor) -> torch.Tensor:
        return model.local_predictor(split_channels(model.extractor(x), model.config.local_channels)[0])

    return local_scheme("local-only", local, model, image_shape(model.config))


def tiny_cnn_scheme(checkpoint: BaselineCheckpoint) -> Scheme:
    """A standalone CNN within the AgileNN device part's budget."""
    model = checkpoint.build_model()
    return local_scheme("local-only-tiny-cnn", model, model, (1, 28, 28))


# ------------------------------------------------------------------ offloading baselines
class Offloader:
    """Request/reply to a baseline server over the (emulated) link, timing each part."""

    def __init__(self, server: str, link: LinkProfile | None, timeout_s: float, seed: int,
                 device_id: str) -> None:
        self.transport = open_client(server, link, seed=seed)
        self.requester = Requester(self.transport, timeout=timeout_s, attempts=3)
        self.device_id = device_id
        self._ids = itertools.count(1)

    def exchange(self, payload: bytes, model_hash: bytes, device_ms: float, encode_started: float,
                 codec_ms: float) -> Outcome:
        request_id = next(self._ids)
        wire = encode_message(Message(MessageType.INFER_REQUEST, request_id, self.device_id, model_hash,
                                      {"p": payload}))
        encode_ms = 1e3 * (time.perf_counter() - encode_started)
        sent = time.perf_counter()
        try:
            data = self.requester.request(wire, lambda d: decode_message(d).request_id == request_id)
        except TransportError as exc:
            return Outcome(-1, {"device": device_ms, "encode": encode_ms,
                                "reply": 1e3 * (time.perf_counter() - sent)}, len(wire), failure=str(exc))
        received = time.perf_counter()
        reply = decode_message(data)
        merge_ms = 1e3 * (time.perf_counter() - received)
        round_trip_ms = 1e3 * (received - sent)
        if reply.type is not MessageType.INFER_REPLY:
            return Outcome(-1, {"device": device_ms, "encode": encode_ms, "reply": round_trip_ms}, len(wire),
                           len(data), failure=f"server: {reply.body.get('code')}: {reply.body.get('reason')}")
        predicted = int(np.argmax(logits_from_bytes(reply.body["pr"])))
        transmit_ms = 1e3 * last_uplink_seconds(self.transport)
        queue_ms, server_ms = reply.body["tm"]["q"] / 1e3, reply.body["tm"]["s"] / 1e3
        return Outcome(predicted, {
            "device": device_ms, "encode": encode_ms, "transmit": transmit_ms, "queue": queue_ms,
            "server": server_ms, "reply": round_trip_ms - transmit_ms - queue_ms - server_ms,
            "merge": merge_ms}, len(wire), len(data), codec_ms=codec_ms)

    def close(self) -> None:
        self.transport.close()


def baseline_schemes(checkpoint: BaselineCheckpoint, server: str, link: LinkProfile | None, timeout_s: float,
                     seed: int, families: set[str], jpeg_qualities: list[int],
                     split_layers: list[int]) -> list[Scheme]:
    """raw-offload, jpeg-offload at each quality and split8 at each split, on one full CNN."""
    model = checkpoint.build_model()
    assert isinstance(model, FullCNN)
    payloads = baseline_payloads(model, checkpoint.raw_dictionary)
    model_hash = bytes.fromhex(checkpoint.model_hash)
    refused = [split for split in split_layers if split not in model.split_points]
    if "split8" in families and refused:
        raise ValueError(f"split layers {refused} are not among {list(model.split_points)}")
    # The device id is as long as AgileNN's, so both pay the same header bytes.
    offloader = Offloader(server, link, timeout_s, seed, "dev-b")
    schemes: list[Scheme] = []

    def image_scheme(name: str, family: str, encode: Callable[[np.ndarray], bytes]) -> Scheme:
        def classify(image: np.ndarray) -> Outcome:
            started = time.perf_counter()
            payload, codec_ms = _timed(lambda: encode(image))
            return offloader.exchange(payload, model_hash, 0.0, started, codec_ms)
        return Scheme(name, family, 0, True, classify)

    if "raw-offload" in families:
        schemes.append(image_scheme("raw-offload", "raw-offload", payloads.encode_raw))
    if "jpeg-offload" in families:
        for quality in jpeg_qualities:
            schemes.append(image_scheme(f"jpeg-offload@q{quality}", "jpeg-offload",
                                        functools.partial(payloads.encode_jpeg, quality=quality)))
    if "split8" in families:
        for split in split_layers:
            head = model.head(split)

            def classify(image: np.ndarray, head: nn.Module = head, split: int = split) -> Outcome:
                with torch.no_grad():
                    activation, device_ms = _timed(lambda: head(_as_input(image)))
                started = time.perf_counter()
                payload, codec_ms = _timed(lambda: payloads.encode_split8(activation[0].numpy(), split))
                return offloader.exchange(payload, model_hash, device_ms, started, codec_ms)

            schemes.append(Scheme(f"split8@{split}", "split8", count_macs(head, torch.zeros(1, 1, 28, 28)),
                                  True, classify))
    if schemes:
        schemes[-1].closers.append(offloader.close)
    else:
        offloader.close()
    return schemes
