"""Gateway mode: an MCU on a serial port offloads through this edge node.

The MCU runs the device part itself and sends INFER_REQUEST messages over the
reliable serial link; the gateway forwards each one, unchanged, to the server
and sends the server's answer back. If the server cannot be reached, the MCU
gets an ERROR (``server-unreachable``) at once and answers with its local
prediction; a message that is not valid gets an ERROR with its reason.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading

from transports.curve import CurveClientConfig
from transports.errors import TransportError
from transports.messages import (
    ProtocolError,
    decode_message,
    encode_message,
    error_reply,
    request_id_of,
    salvage_header,
)
from transports.reliable import ReliableLink
from transports.zmq_transport import Requester, ZmqClientTransport

log = logging.getLogger("agilenn.gateway")


class SerialGateway:
    def __init__(self, link: ReliableLink, server: str, timeout_s: float = 1.0,
                 curve: CurveClientConfig | None = None, reply_timeout_s: float = 10.0) -> None:
        self.link = link
        self.reply_timeout_s = reply_timeout_s
        self._client = ZmqClientTransport(server, curve=curve)
        self._requester = Requester(self._client, timeout=timeout_s, attempts=2)
        self.stats = collections.Counter[str]()

    def serve(self, should_exit: threading.Event) -> None:
        while not should_exit.is_set():
            data = self.link.recv(0.1)
            if data is None:
                continue
            reply = self.forward(data)
            try:
                self.link.send(reply, timeout=self.reply_timeout_s)
            except TransportError as exc:
                # The MCU stopped acknowledging (rebooted, unplugged): say so and serve on.
                self.stats["reply-undeliverable"] += 1
                log.warning("answer to request %d not delivered to the MCU: %s", request_id_of(reply), exc)

    def forward(self, data: bytes) -> bytes:
        """The answer for one message from the MCU: the server's, or an ERROR."""
        try:
            request = decode_message(data)
        except ProtocolError as exc:
            self.stats["rejected"] += 1
            return encode_message(error_reply(salvage_header(data), exc.code, str(exc)))
        try:
            reply = self._requester.request(data, lambda d: request_id_of(d) == request.request_id)
        except TransportError as exc:
            self.stats["server-unreachable"] += 1
            with contextlib.suppress(TransportError):
                self._client.reconnect()  # drop the stale request so it is not served late
            return encode_message(error_reply(request, "server-unreachable", str(exc)))
        self.stats["forwarded"] += 1
        return reply

    def close(self) -> None:
        self._client.close()

