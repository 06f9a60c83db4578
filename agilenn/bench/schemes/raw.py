"""``raw-offload``: the image, zstd-compressed with a dictionary, to the full CNN on the server."""

from __future__ import annotations

from .base import Scheme, SchemeContext, register_family
from .offload import Baseline, OffloadFamily


@register_family("raw-offload")
class RawOffload(OffloadFamily):
    summary = "the image, zstd-compressed, to a full CNN on the server"
    order = 30

    def schemes(self, context: SchemeContext) -> list[Scheme]:
        baseline = Baseline.load(context.config.baseline)
        offloader = self.offloader(context)
        return [self.image_scheme(self.name, baseline, offloader, baseline.payloads.encode_raw)]
