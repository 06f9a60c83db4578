"""What split learning costs on the wire: bytes and seconds per sample, per epoch, on a slow link.

    python tools/split_learning_cost.py --data-dir ../shared/data/mnist --link serial-115200

Starts the real server daemon (ZeroMQ, in a thread), then, from a device-side
client behind the link emulator, runs ``--steps`` split-learning steps of
``--batch`` rotated MNIST training images in one session and fetches the
adapted server half back. Each is timed and its bytes counted on the wire; the
same steps run side by side without the emulator, so the link's share shows.
Prints a table and one JSON line; an epoch is ``--epoch-samples`` samples.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from agilenn.adapt.split import SplitPeer
from agilenn.data import load_dataset
from agilenn.model import split_channels
from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint
from edge_node.split_learning import WireSplitServer
from server_node.remote import RemoteServer
from transports.emulator import PROFILES, emulated
from transports.zmq_transport import ZmqClientTransport


def _run(server: RemoteServer, link: str | None, model_spec: str, images: torch.Tensor, labels: torch.Tensor,
         steps: int, batch: int) -> dict[str, Any]:
    checkpoint = load_checkpoint(model_spec)
    model = checkpoint.build_model()
    transport = emulated(ZmqClientTransport(server.endpoint), link)
    with WireSplitServer(transport, checkpoint.model_hash, 3e-3, device_id=f"cost-{link}",
                         timeout_s=600.0) as wire:
        peer: SplitPeer = wire.open(model, train=True)
        step_seconds = []
        for index in range(steps):
            chunk = slice(index * batch, (index + 1) * batch)
            with torch.no_grad():
                features = model.extractor(images[chunk])
                local_logits = model.local_predictor(split_channels(features, model.config.local_channels)[0])
            started = time.perf_counter()
            peer.step(features, local_logits, labels[chunk])
            step_seconds.append(time.perf_counter() - started)
        step_bytes = peer.bytes_exchanged
        started = time.perf_counter()
        peer.trained_state()
        fetch_seconds = time.perf_counter() - started
        fetch_bytes = peer.bytes_exchanged - step_bytes
    samples = steps * batch
    return {"link": link or "none (ZeroMQ on localhost)", "steps": steps, "batch": batch,
            "bytes_per_sample": step_bytes / samples, "seconds_per_sample": sum(step_seconds) / samples,
            "seconds_per_step": sum(step_seconds) / steps, "fetch_bytes": fetch_bytes,
            "fetch_seconds": fetch_seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("AGILENN_DATA", "../shared/data/mnist"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--link", default="serial-115200", choices=sorted(PROFILES))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epoch-samples", type=int, default=500)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train = load_dataset("mnist-c:rotate", "train", args.data_dir).head(args.steps * args.batch)
    images, labels = train.batch(slice(0, len(train)))
    with RemoteServer(args.model) as server:
        rows = [_run(server, link, args.model, images, labels, args.steps, args.batch)
                for link in (None, args.link)]
    for row in rows:
        row["bytes_per_epoch"] = row["bytes_per_sample"] * args.epoch_samples
        row["seconds_per_epoch"] = row["seconds_per_sample"] * args.epoch_samples
        print(f"{row['link']:28s} {row['bytes_per_sample']:8,.0f} B/sample "
              f"{row['bytes_per_epoch']:12,.0f} B/epoch "
              f"{row['seconds_per_step']:7.2f} s/step {row['seconds_per_epoch']:8.1f} s/epoch   "
              f"fetch {row['fetch_bytes']:9,} B in {row['fetch_seconds']:6.2f} s", file=sys.stderr)
    slowdown = rows[1]["seconds_per_sample"] / rows[0]["seconds_per_sample"]
    print(json.dumps({"epoch_samples": args.epoch_samples, "rows": rows,
                      "link_over_direct_seconds": slowdown}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
