"""Edge node configuration: a TOML file, then ``AGILENN_*`` variables, then flags.

One config serves both modes: with ``serial`` set the node is a gateway for an
MCU on that port, otherwise it runs the device part on images from ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass

from agilenn.daemon import DaemonConfig
from agilenn.pretrained import DEFAULT_MODEL

MERGES = ("device", "server")


@dataclass(frozen=True)
class EdgeConfig(DaemonConfig):
    model: str = DEFAULT_MODEL
    server: str = ""  # tcp://host:port of agilenn server or broker; empty: answer locally only
    source: str = "mnist-sample"  # mnist-sample, mnist, a folder of images, or - for stdin
    data_dir: str = ""
    limit: int = 0  # 0: the whole source
    link: str = ""  # emulate this link profile under the client
    deadline_ms: float = 0.0  # 0: no deadline
    timeout_s: float = 1.0
    device_id: str = "edge-0"
    merge: str = "device"
    serial: str = ""  # gateway mode: relay the MCU on this serial port to the server
    baudrate: int = 115200
    reply_timeout_s: float = 10.0  # gateway: how long the MCU has to acknowledge an answer
    curve_secret_key: str = ""  # this node's key pair
    curve_server_key: str = ""  # the server's public key
    torch_threads: int = 1  # a device part at batch 1 gains little from more, and loses much beside others

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(MERGES)}, not {self.merge!r}")
        if self.limit < 0 or self.deadline_ms < 0 or self.timeout_s <= 0 or self.reply_timeout_s <= 0:
            raise ValueError("limit and deadline_ms cannot be negative; the timeouts must be positive")
        if self.torch_threads < 1:
            raise ValueError("torch_threads must be at least 1")
        if bool(self.curve_secret_key) != bool(self.curve_server_key):
            raise ValueError("CURVE needs both curve_secret_key and curve_server_key")
        if self.serial and not self.server:
            raise ValueError("gateway mode (serial) needs server")
