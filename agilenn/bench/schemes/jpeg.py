"""``jpeg-offload@qN``: the image as JPEG at each ``--jpeg-quality``, to the same full CNN."""

from __future__ import annotations

import functools

from .base import Scheme, SchemeContext, register_family
from .offload import Baseline, OffloadFamily


@register_family("jpeg-offload")
class JpegOffload(OffloadFamily):
    summary = "the image as JPEG at each --jpeg-quality, same full CNN"
    order = 40
    marker = "^"
    linestyle = "--"

    def schemes(self, context: SchemeContext) -> list[Scheme]:
        baseline = Baseline.load(context.config.baseline)
        offloader = self.offloader(context)
        return [
            self.image_scheme(f"{self.name}@q{quality}", baseline, offloader,
                              functools.partial(baseline.payloads.encode_jpeg, quality=quality))
            for quality in context.config.jpeg_qualities
        ]
