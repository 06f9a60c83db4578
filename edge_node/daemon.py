"""``agilenn edge`` as a daemon: ``EdgeNode(config)`` (stream mode) and ``GatewayNode(config)``.

Stream mode runs the device part on images from a source, offloads through
an :class:`~edge_node.client.EdgeClient` and hands one record per prediction
to ``emit``; it stops by itself at the end of the source. Gateway mode relays
an MCU on a serial port to the server until told to stop. Both share the
daemon plumbing of :mod:`agilenn.daemon`: config layering, logging, signals,
staged shutdown and Prometheus metrics.
"""

from __future__ import annotations

import dataclasses

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agilenn.daemon import Daemon
from agilenn.data import load_dataset
from agilenn.data.image_files import image_files, load_image_file
from agilenn.errors import AgileNNError, DataError
from transports.curve import CurveClientConfig
from transports.errors import TransportClosed
from transports.pipe import MessageTransport
from transports.reliable import ReliableLink, open_serial_link

from .client import OFFLOADED, EdgeClient, Prediction
from .config import EdgeConfig
from .gateway import SerialGateway
from .metrics import EdgeMetrics

log = logging.getLogger("agilenn.edge")
Item = tuple[np.ndarray | None, int | None, str]  # image, label, why it could not be read
Record = dict[str, Any]


def _print_json(record: Record) -> None:
    print(json.dumps(record), flush=True)


def curve_client(config: EdgeConfig) -> CurveClientConfig | None:
    if not config.curve_secret_key:
        return None
    return CurveClientConfig(Path(config.curve_secret_key), Path(config.curve_server_key))


def read_images(source: str, data_dir: str, channels: int, size: int) -> Iterator[Item]:
    """Images with their labels when known; an unreadable file gives (None, None, why)."""
    if source in ("mnist", "mnist-sample"):
        dataset = load_dataset(source, "test", data_dir or None)
        for image, label in zip(dataset.images, dataset.labels, strict=True):
            yield image, int(label), ""
    elif source == "-":
        for image in np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False):
            yield image, None, ""
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise AgileNNError(f"source {source!r} is neither a known dataset nor a folder")
        for path in image_files(folder):
            try:
                yield load_image_file(path, channels, size), None, ""
            except DataError as exc:  # one bad file is reported, the rest still run
                yield None, None, str(exc)


def prediction_record(index: int, label: int | None, prediction: Prediction) -> Record:
    return {"index": index, "label": label, "predicted": prediction.label, "source": prediction.source,
            "reason": prediction.reason, "latency_ms": round(prediction.latency_ms, 3),
            "bytes_up": prediction.bytes_up, "bytes_down": prediction.bytes_down,
            "server_ms": prediction.timings_ms}


class EdgeNode(Daemon):
    """Stream mode. ``transport``: reach the server over it instead of ``config.server`` (the test seam)."""

    def __init__(self, config: EdgeConfig, emit: Callable[[Record], None] = _print_json,
                 transport: MessageTransport | None = None,
                 reloader: Callable[[], EdgeConfig] | None = None) -> None:
        self.metrics: EdgeMetrics = EdgeMetrics()
        super().__init__(config, self.metrics)
        self.config: EdgeConfig = config
        self.emit = emit
        self.predictions = 0
        self._transport = transport
        self._reloader = reloader
        self._client: EdgeClient | None = None

    def reload(self) -> None:
        """SIGHUP: switch to the model the config names now (the rest of the config stays)."""
        if self._reloader is None or self._client is None:
            return
        model = self._reloader().model
        if model != self.config.model:
            self._client.switch_model(model)
            self.config = dataclasses.replace(self.config, model=model)
            log.info("edge %s now runs %s (%s)", self.config.device_id, model, self._client.model_hash.hex())

    def load(self) -> None:
        config = self.config
        torch.set_num_threads(config.torch_threads)
        self._client = EdgeClient(
            config.model, server=config.server or None, deadline_ms=config.deadline_ms or None,
            link=config.link or None, device_id=config.device_id, timeout_s=config.timeout_s,
            curve=curve_client(config), merge=config.merge, transport=self._transport)
        model = self._client.model.config
        self._items = enumerate(read_images(config.source, config.data_dir, model.in_channels,
                                            model.image_size))
        super().load()
        log.info("edge %s: %s -> %s", config.device_id, config.source, config.server or "local only")

    def serve_step(self) -> None:
        assert self._client is not None
        index, (image, label, error) = next(self._items, (-1, (None, None, "")))
        if index < 0 or (self.config.limit and index >= self.config.limit):
            self.should_exit.set()  # the source is done: a normal stop
            return
        if image is None:
            self.emit({"index": index, "label": label, "error": error})
            return
        prediction = self._client.infer(image)
        self._observe(prediction)
        self.emit(prediction_record(index, label, prediction))

    def _observe(self, prediction: Prediction) -> None:
        assert self._client is not None
        self.predictions += 1
        metrics = self.metrics
        metrics.requests.inc()
        if prediction.source == OFFLOADED:
            metrics.offloaded.inc()
        else:
            metrics.fallbacks.labels(reason=prediction.reason_code).inc()
        metrics.bytes_up.inc(prediction.bytes_up)
        metrics.bytes_down.inc(prediction.bytes_down)
        estimate = self._client.estimator.predict(prediction.bytes_up + prediction.bytes_down)
        if estimate is not None:
            metrics.link_estimate.set(estimate)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        super().close()


class GatewayNode(Daemon):
    """Gateway mode. ``link`` and ``client``: use these instead of opening ``config.serial`` and
    connecting to ``config.server`` (the test seam)."""

    def __init__(self, config: EdgeConfig, link: ReliableLink | None = None,
                 client: MessageTransport | None = None) -> None:
        self.metrics: EdgeMetrics = EdgeMetrics()
        super().__init__(config, self.metrics)
        self.config: EdgeConfig = config
        self._link = link
        self._owns_link = link is None
        self._client = client
        self.gateway: SerialGateway | None = None

    def load(self) -> None:
        config = self.config
        if self._link is None:
            self._link = open_serial_link(config.serial, config.baudrate)
        self.gateway = SerialGateway(self._link, config.server, timeout_s=config.timeout_s,
                                     curve=curve_client(config), reply_timeout_s=config.reply_timeout_s,
                                     client=self._client, metrics=self.metrics)
        super().load()
        log.info("gateway: MCU on %s -> %s", config.serial or "a given link",
                 config.server or "a given client")

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.gateway.stats) if self.gateway is not None else {}

    def serve_step(self) -> None:
        assert self.gateway is not None and self._link is not None
        if self._link.closed:  # else recv() returns at once and the loop would spin
            raise TransportClosed("the serial link to the MCU closed")
        self.gateway.serve_once(0.1)

    def drain_step(self) -> bool:
        return self.gateway is not None and self.gateway.refuse_once()

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.close()
        if self._link is not None and self._owns_link:
            self._link.close()
        super().close()
