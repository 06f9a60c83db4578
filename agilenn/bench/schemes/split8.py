"""``split8@k``: the full CNN cut after k blocks; the activations 8-bit quantised and zstd-compressed."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from transports.emulator import get_profile

from ...baselines.models import count_macs
from ...data import load_dataset
from ..config import BenchConfig
from .base import Outcome, Scheme, SchemeContext, as_input, register_family, timed
from .offload import Baseline, OffloadFamily, Offloader


@register_family("split8")
class Split8(OffloadFamily):
    summary = ("the full CNN cut after each --split-layer; the activations 8-bit quantised and "
               "zstd-compressed")
    order = 50
    marker = "D"
    linestyle = "-."

    def check(self, config: BenchConfig) -> None:
        split_points = list(Baseline.load(config.baseline).model.split_points)
        refused = [split for split in config.split_layers if split not in split_points]
        if refused:
            raise ValueError(f"split layers {refused} are not among {split_points}")

    def schemes(self, context: SchemeContext) -> list[Scheme]:
        config = context.config
        baseline = Baseline.load(config.baseline)
        splits = config.split_layers or (self._fastest_split(baseline, context),)
        offloader = self.offloader(context)
        return [self._scheme(baseline, offloader, split) for split in splits]

    @staticmethod
    def _fastest_split(baseline: Baseline, context: SchemeContext) -> int:
        """The cut the planner predicts fastest on this link and device, from costs measured on
        the first 200 test images."""
        from ..devices import DeviceModel, get_device, host_macs_per_second
        from ..planner import best_split, split8_costs

        config = context.config
        images = load_dataset(config.dataset, "test", config.data_dir)
        costs = split8_costs(baseline, images.head(min(200, len(images))), list(baseline.model.split_points))
        device = DeviceModel(get_device(config.device), host_macs_per_second())
        return best_split(costs, context.link or get_profile("lossless"), device)

    def _scheme(self, baseline: Baseline, offloader: Offloader, split: int) -> Scheme:
        head: nn.Module = baseline.model.head(split)

        def classify(image: np.ndarray) -> Outcome:
            with torch.no_grad():
                activation, device_ms = timed(lambda: head(as_input(image)))
            started = time.perf_counter()
            payload, codec_ms = timed(lambda: baseline.payloads.encode_split8(activation[0].numpy(), split))
            return offloader.exchange(payload, baseline.model_hash, device_ms, started, codec_ms)

        macs = count_macs(head, torch.zeros(1, *baseline.payloads.input_shape))
        return Scheme(f"{self.name}@{split}", self.name, macs, True, classify)
