"""Gateway mode: an MCU on a serial port offloads through this edge node.

The MCU runs the device part itself and sends INFER_REQUEST messages over the
reliable serial link; the gateway forwards each one to the server and sends
the server's answer back. An MCU may open a compact session (a HELLO with
``cs``, answered by the gateway itself) and then send compact frames: the
gateway restores the full envelope toward the server and answers in compact
frames (:mod:`transports.sessions`). If the server cannot be reached, the MCU
gets an ERROR (``server-unreachable``) at once and answers with its local
prediction; a message that is not valid gets an ERROR with its reason, and an
ERROR from the MCU is logged, never answered.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading

from transports.curve import CurveClientConfig
from transports.errors import TransportError
from transports.messages import (
    Message,
    MessageType,
    ProtocolError,
    answer_to_invalid,
    decode_message,
    encode_message,
    error_reply,
    request_id_of,
)
from transports.pipe import MessageTransport
from transports.compact import is_compact
from transports.reliable import ReliableLink
from transports.sessions import SessionEndpoint
from transports.zmq_transport import Requester, ZmqClientTransport

from .metrics import EdgeMetrics

log = logging.getLogger("agilenn.gateway")


class SerialGateway:
    """Relays an MCU's messages; ``client`` reaches the server instead of ``server`` (the test seam)."""

    def __init__(self, link: ReliableLink, server: str = "", timeout_s: float = 1.0,
                 curve: CurveClientConfig | None = None, reply_timeout_s: float = 10.0,
                 client: MessageTransport | None = None, metrics: EdgeMetrics | None = None) -> None:
        if client is None and not server:
            raise ValueError("a gateway needs a server endpoint or a client transport")
        self.link = link
        self.reply_timeout_s = reply_timeout_s
        self.metrics = metrics or EdgeMetrics()
        self._client = client or ZmqClientTransport(server, curve=curve)
        self._requester = Requester(self._client, timeout=timeout_s, attempts=2)
        self.sessions = SessionEndpoint()  # the MCU's compact sessions; the server sees full messages
        self.stats = collections.Counter[str]()

    def serve(self, should_exit: threading.Event) -> None:
        while not should_exit.is_set():
            self.serve_once(0.1)

    def serve_once(self, timeout: float) -> bool:
        """Answer the next message from the MCU, waiting up to ``timeout`` s; whether one came."""
        data = self.link.recv(timeout)
        if data is None:
            return False
        self._answer(self.forward(data))
        return True

    def refuse_once(self) -> bool:
        """While shutting down: answer a message already waiting with ``shutting-down``; whether one was."""
        data = self.link.recv(0.0)
        if data is None:
            return False
        inbound = self.sessions.inbound(data)
        if inbound.full is None:
            self._answer(inbound.answer)
            return True
        request, rejection = self._screen(inbound.full)
        if request is None:
            self._answer(rejection)
        else:
            self._count("shutting-down")
            refusal = encode_message(error_reply(request, "shutting-down", "the gateway is stopping"))
            self._answer(self.sessions.outbound(refusal))
        return True

    def forward(self, data: bytes) -> bytes | None:
        """The answer for one message from the MCU: the server's, an ERROR, or None for none. An
        MCU on a compact session gets it as a compact frame; the server sees full messages."""
        inbound = self.sessions.inbound(data)
        if inbound.full is None:
            self._count("session" if inbound.answer is not None and not is_compact(inbound.answer)
                        else "rejected")
            return inbound.answer
        data = inbound.full
        request, rejection = self._screen(data)
        if request is None:
            return rejection
        try:
            reply = self._requester.request(data, lambda d: request_id_of(d) == request.request_id)
        except TransportError as exc:
            self._count("server-unreachable")
            with contextlib.suppress(TransportError):
                self._client.reconnect()  # drop the stale request so it is not served late
            reply = encode_message(error_reply(request, "server-unreachable", str(exc)))
        else:
            self._count("forwarded")
        return self.sessions.outbound(reply)

    def _screen(self, data: bytes) -> tuple[Message | None, bytes | None]:
        """(the valid request, None), or (None, the answer to the defect; None for an ERROR)."""
        try:
            message = decode_message(data)
        except ProtocolError as exc:
            self._count("rejected")
            answer = answer_to_invalid(data, exc)
            return None, None if answer is None else encode_message(answer)
        if message.type is MessageType.ERROR:
            self._count("rejected")
            log.info("ignored an ERROR from the MCU: an ERROR is never answered")
            return None, None
        return message, None

    def _answer(self, reply: bytes | None) -> None:
        if reply is None:
            return
        try:
            self.link.send(reply, timeout=self.reply_timeout_s)
        except TransportError as exc:
            # The MCU stopped acknowledging (rebooted, unplugged): say so and serve on.
            self._count("reply-undeliverable")
            log.warning("answer to request %d not delivered to the MCU: %s", request_id_of(reply), exc)

    def _count(self, outcome: str) -> None:
        self.stats[outcome] += 1
        self.metrics.gateway.labels(outcome=outcome).inc()

    def close(self) -> None:
        self._client.close()
