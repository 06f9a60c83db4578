"""Pairing an MCU over serial: hello, accept or reject, optional weight push, commit.

    device -> host   HELLO          device id, firmware, the device's model hash
    host -> device   HELLO_REPLY    accepted + reason, how many WEIGHT_CHUNKs follow
    host -> device   WEIGHT_CHUNK   index, data, CRC-32 of data         (x update_chunks)
    host -> device   WEIGHT_COMMIT  chunk count, SHA-256 of all data
    device -> host   COMMIT_REPLY   accepted + reason (checked and applied, or refused)

The weights pushed are the device part only (extractor, local predictor,
quantizer): ``torch.save`` bytes for a Python device, and the int8 AGW1 image
(docs/FIRMWARE.md) for the C firmware, whose HELLO names ``agilenn-c99/``. The
host's model hash travels in the HELLO_REPLY and the device adopts it once the
commit checks out.
"""

from __future__ import annotations

import hashlib
import io
import time
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from agilenn.checkpoint import Checkpoint
from agilenn.codec import FeatureCodec
from agilenn.firmware.image import parse_image
from agilenn.model import AgileNN
from transports.messages import (
    Body,
    BodyT,
    CommitReply,
    Hello,
    HelloReply,
    InferReply,
    InferRequest,
    Message,
    MessageType,
    ProtocolError,
    WeightChunk,
    WeightCommit,
    decode_message,
    encode_message,
)
from transports.errors import TransportError
from transports.compact import (
    CompactError,
    Frame,
    pack_frame,
    parse_error_body,
    parse_reply_body,
    request_body,
    unpack_frame,
)
from transports.reliable import ReliableLink
from transports.sessions import HELLO_REQUEST_ID

DEVICE_PART = ("extractor.", "local_predictor.", "quantizer.")
CHUNK_BYTES = 1024
C_FIRMWARE = "agilenn-c99/"  # how the C firmware's HELLO names itself: it takes an int8 image


class PairingError(Exception):
    """The peer broke the pairing protocol or went silent."""


class DeviceStartedOver(PairingError):
    """A HELLO came where the host waited for the rest of a pairing: the device gave up on it (its
    wait ran out, say on a cut link) and starts a new one, which ``hello`` opens."""

    def __init__(self, hello: Message) -> None:
        super().__init__(f"the device said HELLO again (request {hello.request_id}) mid-pairing")
        self.hello = hello


def device_part_bytes(checkpoint: Checkpoint) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v for k, v in checkpoint.state_dict.items() if k.startswith(DEVICE_PART)}, buffer)
    return buffer.getvalue()


def _receive(link: ReliableLink, expected: type[BodyT], timeout: float) -> tuple[Message, BodyT]:
    """The next message, which must be an ``expected``, and its typed body."""
    name = expected.TYPE.name
    data = link.recv(timeout)
    if data is None:
        raise PairingError(f"no {name} within {timeout:.1f} s")
    try:
        message = decode_message(data)
    except ProtocolError as exc:
        raise PairingError(f"while waiting for {name}: {exc}") from exc
    if message.type is MessageType.HELLO and expected is not Hello:
        raise DeviceStartedOver(message)
    try:
        return message, expected.parse(message)
    except ProtocolError as exc:
        raise PairingError(f"while waiting for {name}: {exc}") from exc


@dataclass(frozen=True)
class PairingRecord:
    device_id: str
    firmware: str
    model_hash: str
    accepted: bool
    reason: str
    updated: bool
    paired_at: float


class PairingHost:
    """Answers one device's HELLO. ``int8_image``: the AGW1 image to push to C firmware (from
    ``agilenn export``); it must have been exported from ``checkpoint``."""

    def __init__(self, link: ReliableLink, checkpoint: Checkpoint, push_weights: bool = False,
                 timeout: float = 10.0, int8_image: bytes = b"") -> None:
        self.link = link
        self.checkpoint = checkpoint
        self.model_hash = bytes.fromhex(checkpoint.model_hash)
        self.push_weights = push_weights
        self.timeout = timeout
        exported_from = parse_image(int8_image).model_hash if int8_image else self.model_hash
        if exported_from != self.model_hash:
            raise ValueError(f"the int8 image was exported from model {exported_from.hex()}, "
                             f"not {checkpoint.model_hash}")
        self.int8_image = int8_image
        self._started_over: Message | None = None  # a HELLO that cut a pairing short, answered next

    def pair_one(self, wait: float = 60.0) -> PairingRecord:
        """Answer the device's next HELLO: one that arrived mid-way through the last pairing (the
        device gave up on it and started over), else the next to come within ``wait`` s."""
        if self._started_over is not None:
            message, self._started_over = self._started_over, None
            hello = Hello.parse(message)
        else:
            message, hello = _receive(self.link, Hello, wait)
        try:
            return self._pair(message, hello)
        except DeviceStartedOver as exc:
            self._started_over = exc.hello
            raise

    def _pair(self, message: Message, hello: Hello) -> PairingRecord:
        if message.model_hash == self.model_hash:
            return self._answer(message, hello, True, "same model", b"")
        if not self.push_weights:
            reason = (f"device model {message.model_hash.hex() or '(none)'} != host model "
                      f"{self.model_hash.hex()}; pair with --push to update")
            return self._answer(message, hello, False, reason, b"")
        if hello.firmware.startswith(C_FIRMWARE):
            if not self.int8_image:
                return self._answer(message, hello, False, "this device runs C firmware: push the int8 image "
                                    "that agilenn export wrote (agilenn pair --image FW/weights.agw)", b"")
            image = self.int8_image
        else:
            image = device_part_bytes(self.checkpoint)
        return self._answer(message, hello, True, f"updating the device part of firmware {hello.firmware}",
                            image)

    def _answer(self, message: Message, hello: Hello, accepted: bool, reason: str,
                image: bytes) -> PairingRecord:
        chunks = [image[i : i + CHUNK_BYTES] for i in range(0, len(image), CHUNK_BYTES)]
        self._send(message, HelloReply(accepted, reason, len(chunks)))
        if chunks:
            for index, chunk in enumerate(chunks):
                self._send(message, WeightChunk(index, chunk, zlib.crc32(chunk)))
            self._send(message, WeightCommit(len(chunks), hashlib.sha256(image).digest()))
            _, commit = _receive(self.link, CommitReply, self.timeout)
            accepted, reason = bool(commit.accepted), f"update: {commit.reason}"
        return PairingRecord(message.device_id, hello.firmware,
                             (self.model_hash if accepted else message.model_hash).hex(),
                             accepted, reason, bool(chunks) and accepted, time.time())

    def _send(self, hello: Message, body: Body) -> None:
        message = body.message(hello.request_id, hello.device_id, self.model_hash)
        self.link.send(encode_message(message), timeout=self.timeout)


@dataclass(frozen=True)
class Slot:
    """One of the device's two weight slots: the device part's bytes and their model hash."""

    weights: bytes
    model_hash: bytes


class McuSimulator:
    """The device side, written the way firmware would be: one fixed staging buffer and A/B slots.

    A push lands in the staging buffer; only once it is whole, its CRCs and SHA-256 check out
    and the commit is acknowledged does the other slot take it and become the active one. The
    previous version stays in the first slot: a push that fails or a link that drops midway
    leaves the device running what it ran, and :meth:`rollback` goes back to the previous one.
    """

    STAGING_BYTES = 64 * 1024

    def __init__(self, link: ReliableLink, device_id: str, firmware: str, model_hash: bytes,
                 compact: bool = True) -> None:
        self.link = link
        self.device_id = device_id
        self.firmware = firmware
        self.compact = compact  # offload over a compact session (transports/compact.py) if offered
        self.session: tuple[int, bytes] | None = None  # (session id, the model hash it stands for)
        self.slots = [Slot(b"", model_hash), Slot(b"", model_hash)]
        self.active = 0
        self._staging = bytearray(self.STAGING_BYTES)

    @property
    def model_hash(self) -> bytes:
        return self.slots[self.active].model_hash

    @property
    def weights(self) -> bytes:
        return self.slots[self.active].weights

    def rollback(self) -> None:
        """Run the previous version again (the other slot)."""
        self.active = 1 - self.active

    def pair(self, timeout: float = 10.0) -> tuple[bool, str]:
        hello = Hello(self.firmware).message(1, self.device_id, self.model_hash)
        self.link.send(encode_message(hello), timeout=timeout)
        message, reply = _receive(self.link, HelloReply, timeout)
        if not reply.accepted or not reply.update_chunks:
            return bool(reply.accepted), reply.reason
        try:
            ok, reason, used = self._receive_image(reply.update_chunks, timeout)
            commit = CommitReply(ok, reason).message(1, self.device_id, message.model_hash)
            self.link.send(encode_message(commit), timeout=timeout)
        except (PairingError, TransportError) as exc:  # the link dropped mid-push: keep what runs
            return False, f"push interrupted, still running {self.model_hash.hex()}: {exc}"
        if ok:
            self.slots[1 - self.active] = Slot(bytes(self._staging[:used]), message.model_hash)
            self.active = 1 - self.active
        return ok, reason

    def infer(self, model: AgileNN, codec: FeatureCodec, image: Tensor, request_id: int,
              timeout: float = 10.0) -> tuple[int, str]:
        """Gateway mode: run the device part, offload through the gateway.

        Returns (label, source): the server's merged prediction, or the local
        predictor's when the gateway answers with an ERROR.
        """
        device = model.device_forward(image.unsqueeze(0))
        request = InferRequest(codec.encode(device.symbols[0].numpy()), device.local_logits[0].numpy())
        local = int(device.local_logits[0].argmax())
        if self.compact and (self.session is None or self.session[1] != self.model_hash):
            self._open_session(timeout)
        if self.session is None:
            self.link.send(encode_message(request.message(request_id, self.device_id, self.model_hash)),
                           timeout=timeout)
            data = self.link.recv(timeout)
            reply = decode_message(data) if data is not None else None
            if reply is None or reply.type is not MessageType.INFER_REPLY:
                return local, "local-fallback"
            return InferReply.parse(reply).label, "offloaded"
        flags, body = request_body(request)
        self.link.send(pack_frame(Frame(MessageType.INFER_REQUEST, flags, self.session[0], request_id, body)),
                       timeout=timeout)
        data = self.link.recv(timeout)
        try:
            frame = unpack_frame(data) if data is not None else None
        except CompactError:
            frame = None
        answered = frame is not None and frame.type is MessageType.INFER_REPLY
        if frame is not None and answered and frame.sequence == request_id & 0xFF:
            try:
                return parse_reply_body(frame.flags, frame.body).label, "offloaded"
            except CompactError:
                return local, "local-fallback"
        if frame is not None and frame.type is MessageType.ERROR and \
                parse_error_body(frame.body).code == "unknown-session":
            self.session = None  # the gateway forgot it: the next request opens a new one
        return local, "local-fallback"

    def _open_session(self, timeout: float) -> None:
        hello = Hello(self.firmware, compact_session=True).message(HELLO_REQUEST_ID, self.device_id,
                                                                   self.model_hash)
        self.link.send(encode_message(hello), timeout=timeout)
        data = self.link.recv(timeout)
        reply = decode_message(data) if data is not None else None
        granted = HelloReply.parse(reply).session if reply is not None and \
            reply.type is MessageType.HELLO_REPLY else None
        if granted is not None:
            self.session = (granted, self.model_hash)
        else:
            self.compact = False  # the gateway has no compact sessions: full messages from now on

    def _receive_image(self, count: int, timeout: float) -> tuple[bool, str, int]:
        used, problem = 0, ""
        for expected_index in range(count):
            _, chunk = _receive(self.link, WeightChunk, timeout)
            data = chunk.data
            if chunk.index != expected_index or zlib.crc32(data) != chunk.crc32:
                problem = problem or f"chunk {expected_index} failed its CRC or arrived out of order"
            elif used + len(data) > self.STAGING_BYTES:
                problem = problem or f"image larger than the {self.STAGING_BYTES}-byte staging buffer"
            else:
                self._staging[used : used + len(data)] = data
                used += len(data)
        _, commit = _receive(self.link, WeightCommit, timeout)
        if not problem and hashlib.sha256(self._staging[:used]).digest() != commit.sha256:
            problem = "SHA-256 of the image does not match the commit"
        return (not problem), problem or "applied", used
