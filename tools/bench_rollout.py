"""Issue #12's rollout figure: versions rolled forward and back under load, by SIGHUP.

    python tools/bench_rollout.py --clients 4 --seconds-per-phase 1.5

Starts ``agilenn server --config FILE`` as its own process. ``--clients`` edge
clients stream MNIST sample images at it over ZeroMQ without pause. Then three
rollouts run: the shipped model to a version whose remote part changed, that
to one whose device part alone changed, and back to the shipped model. Each
rollout writes both versions into the config file and sends SIGHUP, switches
the clients one by one, then writes the new version alone and sends SIGHUP
again, which retires the old one.

A request is lost when it falls back to the local predictor. It is answered by
the wrong version when its probabilities differ from the full model of the
version that encoded it. Prints the counts and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from agilenn.checkpoint import Checkpoint
from agilenn.daemon import stop_process
from agilenn.data import load_mnist_sample
from agilenn.pretrained import load_checkpoint
from edge_node.client import OFFLOADED, EdgeClient


def _nudged(path: Path, prefix: str, seed: int) -> str:
    shipped = load_checkpoint("pretrained:mnist")
    generator = torch.Generator().manual_seed(seed)
    state = {name: tensor + 0.05 * torch.randn(tensor.shape, generator=generator).to(tensor.dtype)
             if name.startswith(prefix) and tensor.is_floating_point() else tensor
             for name, tensor in shipped.state_dict.items()}
    path.write_bytes(Checkpoint(shipped.config, shipped.codec, state, {"rollout": prefix}).to_bytes())
    return str(path)


def _write_config(path: Path, port: int, specs: list[str]) -> None:
    models = ",".join(specs[1:])
    path.write_text(f'model = "{specs[0]}"\nmodels = "{models}"\nbind = "tcp://127.0.0.1:{port}"\n')


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds-per-phase", type=float, default=1.5)
    parser.add_argument("--port", type=int, default=5599)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sample = load_mnist_sample()
    with tempfile.TemporaryDirectory(prefix="agilenn-rollout-") as scratch:
        folder = Path(scratch)
        versions = {"shipped": "pretrained:mnist",
                    "remote": _nudged(folder / "remote.agnn", "remote_predictor.", 2),
                    "local": _nudged(folder / "local.agnn", "local_predictor.", 1)}
        names = {spec: name for name, spec in versions.items()}
        models = {spec: load_checkpoint(spec).build_model() for spec in versions.values()}
        by_hash = {load_checkpoint(spec).model_hash: spec for spec in versions.values()}
        config = folder / "server.toml"
        _write_config(config, args.port, [versions["shipped"]])
        server = subprocess.Popen([sys.executable, "-m", "agilenn", "server", "--config", str(config)],
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "AGILENN_LOG_LEVEL": "INFO"})
        assert server.stderr is not None
        log_lines: list[str] = []
        started = server.stderr.readline()
        log_lines.append(started)
        threading.Thread(target=lambda: log_lines.extend(iter(server.stderr.readline, "")),  # type: ignore[union-attr]
                         daemon=True).start()
        endpoint = f"tcp://127.0.0.1:{args.port}"
        clients = [EdgeClient(versions["shipped"], endpoint, device_id=f"edge-{i}", timeout_s=5.0)
                   for i in range(args.clients)]
        results: list[tuple[int, str, str, np.ndarray]] = []
        stop = threading.Event()

        def stream(client: EdgeClient, offset: int) -> None:
            index = offset
            while not stop.is_set():
                prediction = client.infer(sample.images[index % 256])
                results.append((index % 256, prediction.source, prediction.model_hash,
                                prediction.probabilities))
                index += 1

        def hang_up(specs: list[str]) -> None:
            before = len(log_lines)
            _write_config(config, args.port, specs)
            server.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while not any("version" in line for line in log_lines[before:]):  # added or retired
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not reload: {log_lines[before:]}")
                time.sleep(0.01)

        threads = [threading.Thread(target=stream, args=(c, 37 * i)) for i, c in enumerate(clients)]
        began = time.perf_counter()
        try:
            for thread in threads:
                thread.start()
            for old, new in (("shipped", "remote"), ("remote", "local"), ("local", "shipped")):
                time.sleep(args.seconds_per_phase)
                hang_up([versions[old], versions[new]])
                for client in clients:
                    client.switch_model(versions[new])
                    time.sleep(args.seconds_per_phase / args.clients)
                hang_up([versions[new]])
            time.sleep(args.seconds_per_phase)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for client in clients:
                client.close()
            exit_code = stop_process(server)
        seconds = time.perf_counter() - began
    lost = [r for r in results if r[1] != OFFLOADED]
    wrong = 0
    images = torch.from_numpy(sample.images[:256]).float() / 255.0
    with torch.no_grad():
        expected = {spec: torch.softmax(model(images).logits, 1).numpy() for spec, model in models.items()}
    for index, source, version, probabilities in results:
        answer = expected[by_hash[version]][index]
        if source == OFFLOADED and not np.allclose(probabilities, answer, atol=2e-3):
            wrong += 1
    per_version = {names[spec]: sum(1 for r in results if by_hash.get(r[2]) == spec) for spec in names}
    print(f"{len(results)} requests from {args.clients} clients in {seconds:.1f} s over 3 rollouts "
          f"(6 SIGHUPs): lost {len(lost)}, answered by the wrong version {wrong}; per version "
          f"{per_version}; server exit code {exit_code}", file=sys.stderr)
    print(json.dumps({"requests": len(results), "clients": args.clients, "seconds": seconds,
                      "lost": len(lost), "wrong_version": wrong, "per_version": per_version,
                      "server_exit_code": exit_code}))
    return 0 if not lost and not wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
