"""The retransmission timeout, estimated from measured round trips (RFC 6298). Pure: no clock.

A caller times each exchange itself and feeds the round trip in; the timer
keeps SRTT and RTTVAR and says how long to wait before sending again:

* the first sample R sets SRTT = R and RTTVAR = R/2;
* each later sample R sets RTTVAR = (1 - beta) RTTVAR + beta |SRTT - R|, then
  SRTT = (1 - alpha) SRTT + alpha R, with alpha = 1/8 and beta = 1/4;
* RTO = SRTT + max(G, K RTTVAR) with K = 4 and G the clock granularity, held
  within [floor, ceiling]; before any sample RTO is the initial value;
* every retransmission timeout doubles the RTO (up to the ceiling), and the
  backed-off value stays until a new sample comes in (Karn's algorithm);
* Karn's rule: an exchange that was retransmitted gives no sample, since its
  answer cannot be told apart from an answer to an earlier copy.

Used by the ZeroMQ :class:`~transports.zmq_transport.Requester` and the serial
ARQ (:mod:`transports.arq`), each with floors of its own (see docs/LINKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RtoConfig:
    """Bounds and constants of one :class:`RetransmitTimer`, in seconds."""

    initial: float = 1.0  # RFC 6298 (2.1): nothing is known about the path yet
    floor: float = 0.02
    ceiling: float = 60.0  # RFC 6298 (2.5) allows any ceiling of at least 60 s
    granularity: float = 0.001  # G: how finely the caller's timer fires
    k: float = 4.0
    alpha: float = 1 / 8
    beta: float = 1 / 4

    def __post_init__(self) -> None:
        # Written this way round so that NaN fails too.
        if not (0 < self.floor <= self.initial <= self.ceiling and self.granularity >= 0):
            raise ValueError(f"need 0 < floor <= initial <= ceiling and granularity >= 0, got floor "
                             f"{self.floor}, initial {self.initial}, ceiling {self.ceiling}, "
                             f"granularity {self.granularity}")
        if not (0 < self.alpha < 1 and 0 < self.beta < 1 and self.k > 0):
            raise ValueError("need alpha and beta in (0, 1) and k > 0")


class RetransmitTimer:
    """SRTT, RTTVAR and the current RTO of one path; see the module's docstring."""

    def __init__(self, config: RtoConfig | None = None) -> None:
        self.config = config or RtoConfig()
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.backoffs = 0  # timeouts since the last sample
        self._base = self.config.initial  # the RTO before backoff

    @property
    def rto(self) -> float:
        """How long to wait for an answer before sending again."""
        return min(self.config.ceiling, self._base * 2.0**self.backoffs)

    def observe(self, rtt: float, *, retransmitted: bool = False) -> bool:
        """Take the round trip of one exchange; False (and nothing changes) when Karn's rule
        discards it because the exchange was ``retransmitted``."""
        if not rtt >= 0:
            raise ValueError(f"a round trip cannot be {rtt!r} s")
        if retransmitted:
            return False
        c = self.config
        if self.srtt is None or self.rttvar is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            # RTTVAR first: RFC 6298 (2.3) updates it with the SRTT from before this sample.
            self.rttvar = (1 - c.beta) * self.rttvar + c.beta * abs(self.srtt - rtt)
            self.srtt = (1 - c.alpha) * self.srtt + c.alpha * rtt
        self._base = min(c.ceiling, max(c.floor, self.srtt + max(c.granularity, c.k * self.rttvar)))
        self.backoffs = 0
        return True

    def back_off(self) -> None:
        """A retransmission timeout fired: double the RTO, up to the ceiling (RFC 6298 (5.5))."""
        if self.rto < self.config.ceiling:
            self.backoffs += 1
