"""Transport errors. All derive from agilenn's one base class."""

from __future__ import annotations

from agilenn.errors import AgileNNError


class TransportError(AgileNNError):
    """A link failed to carry a message."""


class TransportClosed(TransportError):
    """The pipe was closed, locally or by the peer."""


class RequestTimeout(TransportError):
    """No reply arrived in time, retries included."""


class DeliveryFailed(TransportError):
    """The link gave up on a message (retransmissions exhausted, or refused)."""


class PeerUnreachable(TransportError):
    """The addressed peer is not connected (ZeroMQ ROUTER_MANDATORY)."""


class QueueFull(TransportError):
    """A high-water mark was reached; the message was not queued."""


class ConnectionDropped(TransportError):
    """The peer dropped the connection after a message was sent; it may not have arrived."""


class OversizedMessage(TransportError):
    """A message over the link's hard cap; it was not sent."""
