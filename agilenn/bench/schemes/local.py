"""``local-only``: classify on the device and send nothing.

Two schemes: AgileNN's own local predictor on its top-k channels
(``local-only``), and a standalone CNN within the AgileNN device part's budget
(``local-only-tiny-cnn``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ...baselines.models import count_macs
from ...model import split_channels
from ...pretrained import load_baseline_checkpoint, load_checkpoint
from .base import Family, Outcome, Scheme, SchemeContext, as_input, image_shape, register_family, timed


@register_family("local-only")
class LocalOnly(Family):
    summary = "AgileNN's local predictor alone, and a tiny standalone CNN"
    order = 20
    marker = "s"
    linestyle = ":"

    def schemes(self, context: SchemeContext) -> list[Scheme]:
        model = load_checkpoint(context.config.model).build_model()

        def local(x: torch.Tensor) -> torch.Tensor:
            return model.local_predictor(split_channels(model.extractor(x), model.config.local_channels)[0])

        tiny_checkpoint = load_baseline_checkpoint(context.config.tiny)
        tiny = tiny_checkpoint.build_model()
        return [self.scheme("local-only", local, model, image_shape(model.config)),
                self.scheme("local-only-tiny-cnn", tiny, tiny, tiny_checkpoint.input_shape)]

    def scheme(self, name: str, network: Callable[[torch.Tensor], torch.Tensor], root: nn.Module,
               shape: tuple[int, int, int]) -> Scheme:
        def classify(image: np.ndarray) -> Outcome:
            with torch.no_grad():
                logits, device_ms = timed(lambda: network(as_input(image)))
            return Outcome(int(logits.argmax()), {"device": device_ms})

        return Scheme(name, self.name, count_macs(root, torch.zeros(1, *shape), network), False, classify)
