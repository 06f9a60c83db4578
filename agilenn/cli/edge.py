"""``agilenn edge``: run the device part on a stream of images, offload, print JSON lines.

One JSON object per prediction on stdout: the index, the label when known,
the predicted class, ``source`` (``offloaded`` or ``local-fallback``), the
fallback ``reason``, the latency, the bytes on the link and the server's
timings. Sources: ``mnist-sample`` (shipped), ``mnist`` (``--data-dir``), a
folder of images (PNG, JPEG, PGM, BMP or ``.npy``; converted to the model's
channels and size), or ``-`` for one ``.npy`` array of images on stdin.

Gateway mode (``--serial PORT --server ENDPOINT``): an MCU on the serial port
runs the device part itself; its requests are relayed to the server and the
answers sent back. It runs until SIGTERM or Ctrl-C, then prints its counters.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edge_node.client import EdgeClient
from edge_node.gateway import SerialGateway
from server_node.server import captured_signals
from transports.emulator import PROFILES
from transports.reliable import open_serial_link

from ..data import load_dataset
from ..data.image_files import image_files, load_image_file
from ..errors import AgileNNError, DataError
from .common import DEFAULT_MODEL, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn edge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--server", help="tcp://host:port of agilenn server (none: local only)")
    parser.add_argument("--source", default="mnist-sample",
                        help="mnist-sample, mnist, a folder of images (png, jpg, pgm, bmp, npy), "
                             "or - for stdin")
    parser.add_argument("--data-dir")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--link", choices=sorted(PROFILES), help="emulate this link under the client")
    parser.add_argument("--deadline-ms", type=float)
    parser.add_argument("--timeout-s", type=float, default=1.0)
    parser.add_argument("--device-id", default="edge-0")
    parser.add_argument("--serial", help="gateway mode: relay an MCU on this serial port to --server")
    parser.add_argument("--baudrate", type=int, default=115200)
    return parser


def _gateway(args: argparse.Namespace) -> int:
    """Relay the MCU's requests until SIGTERM or Ctrl-C."""
    if not args.server:
        return fail("gateway mode needs --server")
    link = open_serial_link(args.serial, args.baudrate)
    gateway = SerialGateway(link, args.server, timeout_s=args.timeout_s)
    stop = threading.Event()
    try:
        with captured_signals(stop):
            gateway.serve(stop)
    finally:
        gateway.close()
        link.close()
    print(json.dumps(dict(gateway.stats)), flush=True)
    return 0


Item = tuple[np.ndarray | None, int | None, str]  # image, label, why it could not be read


def _images(source: str, data_dir: str | None, channels: int, size: int) -> Iterator[Item]:
    if source in ("mnist", "mnist-sample"):
        dataset = load_dataset(source, "test", data_dir)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serial:
        try:
            return _gateway(args)
        except (AgileNNError, OSError) as exc:
            return fail(str(exc))
    try:
        client = EdgeClient(args.model, server=args.server, deadline_ms=args.deadline_ms, link=args.link,
                            device_id=args.device_id, timeout_s=args.timeout_s)
        with client:
            config = client.model.config
            images = _images(args.source, args.data_dir, config.in_channels, config.image_size)
            for index, (image, label, error) in enumerate(images):
                if args.limit and index >= args.limit:
                    break
                if image is None:
                    print(json.dumps({"index": index, "label": label, "error": error}), flush=True)
                    continue
                prediction = client.infer(image)
                print(json.dumps({
                    "index": index, "label": label, "predicted": prediction.label,
                    "source": prediction.source, "reason": prediction.reason,
                    "latency_ms": round(prediction.latency_ms, 3), "bytes_up": prediction.bytes_up,
                    "bytes_down": prediction.bytes_down, "server_ms": prediction.timings_ms,
                }), flush=True)
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    return 0
