"""Seeded manipulators for MemoryPipe (the faults a real serial line produces), helpers that
talk to a server over whichever transport it serves on, and second model versions to push."""

from __future__ import annotations

import random
from collections.abc import Sequence

from agilenn.checkpoint import Checkpoint
from agilenn.data import load_mnist_sample
from agilenn.firmware.image import pack_image
from agilenn.firmware.int8 import quantize_model
from server_node.remote import RemoteServer
from transports.messages import Message, decode_message, encode_message
from transports.pipe import Manipulator
from transports.zmq_transport import Requester


def noisy_line(seed: int, byte_error_rate: float = 0.0, split: bool = False, drop_rate: float = 0.0,
               duplicate_rate: float = 0.0) -> Manipulator:
    """Corrupt bytes, drop or duplicate them, and split writes at random points."""
    rng = random.Random(seed)

    def manipulate(data: bytes) -> list[bytes]:
        out = bytearray()
        for byte in data:
            if rng.random() < drop_rate:
                continue
            if rng.random() < byte_error_rate:
                byte ^= rng.randint(1, 255)
            out.append(byte)
            if rng.random() < duplicate_rate:
                out.append(byte)
        if not split or len(out) < 2:
            return [bytes(out)]
        cuts = sorted(rng.sample(range(1, len(out)), k=min(3, len(out) - 1)))
        return [bytes(out[a:b]) for a, b in zip([0, *cuts], [*cuts, len(out)], strict=True)]

    return manipulate


def ask(server: RemoteServer, request: Message | bytes, request_id: int | None = None,
        timeout: float = 5.0) -> Message:
    """One request to ``server`` on a fresh client transport, and its decoded answer."""
    data = request if isinstance(request, bytes) else encode_message(request)
    wanted = request.request_id if isinstance(request, Message) else request_id
    client = server.connect()
    try:
        reply = Requester(client, timeout=timeout, attempts=1).request(
            data, lambda d: decode_message(d).request_id == wanted)
    finally:
        client.close()
    return decode_message(reply)


def all_replies(server: RemoteServer, requests: Sequence[Message | bytes], quiet: float = 5.0,
                settle: float = 0.3) -> list[Message]:
    """Send ``requests`` together on one connection (so they share batches) and collect every
    reply: until ``quiet`` s pass without one, and once there is one reply per request, for
    ``settle`` s more, so that a second answer to a request would be caught."""
    client = server.connect()
    try:
        for request in requests:
            client.send(request if isinstance(request, bytes) else encode_message(request))
        replies = []
        while (data := client.recv(quiet if len(replies) < len(requests) else settle)) is not None:
            replies.append(decode_message(data))
    finally:
        client.close()
    return replies


def another_version(checkpoint: Checkpoint, bias_step: float) -> Checkpoint:
    """The same network with its local bias moved by ``bias_step``: another model hash to roll out."""
    state = dict(checkpoint.state_dict)
    state["local_predictor.linear.bias"] = state["local_predictor.linear.bias"] + bias_step
    return Checkpoint(checkpoint.config, checkpoint.codec, state, dict(checkpoint.metadata))


def int8_image(checkpoint: Checkpoint) -> bytes:
    """The AGW1 image of ``checkpoint``, calibrated on 64 sample images (enough for a test)."""
    return pack_image(quantize_model(checkpoint, load_mnist_sample().images[:64]))
