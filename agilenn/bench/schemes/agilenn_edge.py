"""``agilenn``: the AgileNN model through the library's own EdgeClient, merging on the device."""

from __future__ import annotations

import numpy as np
import torch

from edge_node.client import EdgeClient, Prediction

from ...baselines.models import count_macs
from ...pretrained import load_checkpoint
from ..devices import firmware_instructions, get_device
from ..config import BenchConfig
from .base import Family, Outcome, Scheme, SchemeContext, image_shape, register_family


# The rANS coder runs as C on an MCU (the firmware issue), not as the Python measured here. One
# encoder step is a division (UDIV: 2-12 cycles on a Cortex-M7), a multiply, a few adds and table
# loads, and a byte write one step in a few: we price it at 20 cycles a symbol.
RANS_CYCLES_PER_SYMBOL = 20


@register_family("agilenn")
class AgileNN(Family):
    summary = "the AgileNN model (EdgeClient, merging on the device)"
    order = 10
    marker = "*"

    def served_model(self, config: BenchConfig) -> str | None:
        return config.model

    def check(self, config: BenchConfig) -> None:
        if config.firmware_report:
            if not get_device(config.device).clock_hz:
                raise ValueError(f"--firmware-report prices instructions at a device's clock; "
                                 f"--device {config.device} has none (pick a modelled device)")
            firmware_instructions(config.firmware_report, load_checkpoint(config.model).model_hash)

    def schemes(self, context: SchemeContext) -> list[Scheme]:
        config = context.config
        client = context.own(EdgeClient(config.model, server=context.endpoint, link=context.link,
                                        timeout_s=config.timeout_s, seed=config.seed, device_id="dev-a",
                                        server_timings=True))
        model = client.model

        def classify(image: np.ndarray) -> Outcome:
            return outcome(client.infer(image))

        layout = model.config
        # Quantising is one subtract-and-compare per centroid for every offloaded element.
        quantize_ops = layout.remote_channels * layout.feature_size**2 * layout.n_centroids
        macs = count_macs(model, torch.zeros(1, *image_shape(layout)), model.device_forward) + quantize_ops
        symbols = layout.remote_channels * layout.feature_size**2
        cycles = symbols * RANS_CYCLES_PER_SYMBOL if client.codec.settings.layout == "rans" else 0
        instructions = firmware_instructions(config.firmware_report, client.model_hash.hex()) \
            if config.firmware_report else 0
        return [Scheme(self.name, self.name, macs, True, classify, merge_macs=2 * layout.num_classes,
                       codec_cycles=cycles, device_instructions=instructions)]


def outcome(prediction: Prediction) -> Outcome:
    """The EdgeClient's own stage timings, split the way every scheme reports them."""
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
