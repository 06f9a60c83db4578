"""The model versions one server serves at once, found by the model hash each request carries.

During a rollout the old and the new version are both live. When only the
device part changed (an adaptation with the remote channels fixed, say), the
versions' remote parts are the same tensors and codec, so they share one
served model; when the remote part changed too, each version has its own.
:meth:`Versions.update` adds the versions of a new list and retires those no
longer in it; a request already accepted keeps the served model it was
prepared for, so a retirement never leaves it unanswered.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from agilenn.checkpoint import Checkpoint
from agilenn.pretrained import is_baseline_spec, load_checkpoint

from .served import ServedAgileNN, ServedModel, load_served_model

log = logging.getLogger("agilenn.server.versions")
# What the server runs of an AgileNN model: a version that changes none of it shares the served model.
REMOTE_PREFIXES = ("remote_predictor.", "merge.", "quantizer.")


def remote_digest(checkpoint: Checkpoint) -> str:
    digest = hashlib.sha256(repr(sorted(checkpoint.config.to_dict().items())).encode())
    digest.update(repr(sorted(checkpoint.codec.to_dict().items())).encode())
    digest.update(checkpoint.codec.dictionary)
    for name in sorted(checkpoint.state_dict):
        if name.startswith(REMOTE_PREFIXES):
            tensor = checkpoint.state_dict[name]
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Version:
    spec: str
    model_hash: bytes
    served: ServedModel
    checkpoint: Checkpoint | None  # None for a baseline


class Versions:
    def __init__(self) -> None:
        self.by_hash: dict[bytes, Version] = {}
        self.retired: set[bytes] = set()

    def get(self, model_hash: bytes) -> Version | None:
        return self.by_hash.get(model_hash)

    def update(self, specs: list[str]) -> tuple[list[str], list[str]]:
        """Serve exactly ``specs``; the hashes (hex) added and retired. Loads everything before it
        changes anything, so a list with a bad model leaves what serves as it was."""
        loaded: dict[bytes, Version] = {}
        shared = {remote_digest(v.checkpoint): v.served for v in self.by_hash.values()
                  if v.checkpoint is not None}
        for spec in specs:
            version = self._load(spec, shared)
            loaded[version.model_hash] = version
        added = [h.hex() for h in loaded if h not in self.by_hash]
        retired = [h.hex() for h in self.by_hash if h not in loaded]
        first = not self.by_hash  # the server's own start-up line names what it serves
        self.retired |= {bytes.fromhex(h) for h in retired}
        self.retired -= set(loaded)
        self.by_hash = loaded
        for hex_hash in [] if first else added:
            log.info("now serving version %s (%s)", hex_hash, loaded[bytes.fromhex(hex_hash)].spec)
        for hex_hash in retired:
            log.info("retired version %s", hex_hash)
        return added, retired

    def _load(self, spec: str, shared: dict[str, ServedModel]) -> Version:
        # Loaded again even when listed before: the file behind a path may hold another model now.
        if is_baseline_spec(spec):
            served = load_served_model(spec)
            return self.by_hash.get(served.model_hash) or Version(spec, served.model_hash, served, None)
        checkpoint = load_checkpoint(spec)
        if bytes.fromhex(checkpoint.model_hash) in self.by_hash:
            return self.by_hash[bytes.fromhex(checkpoint.model_hash)]
        digest = remote_digest(checkpoint)
        if digest not in shared:
            shared[digest] = ServedAgileNN(checkpoint)
        return Version(spec, bytes.fromhex(checkpoint.model_hash), shared[digest], checkpoint)

    def describe(self) -> str:
        return ", ".join(f"{h.hex()} ({v.spec})" for h, v in self.by_hash.items())
