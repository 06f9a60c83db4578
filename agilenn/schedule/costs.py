"""What computing and paging cost on a device: seconds and joules per MAC and per byte.

Compute time is MACs over the device's sustained MAC rate, which the caller
takes from the bench's device profile (:mod:`agilenn.bench.devices`). The rest
are **assumptions**, each with what it rests on; read them as estimates within
a factor of ~2, like the profiles:

- ``stm32f746``: 0.40 W while computing (the datasheet's run-mode supply
  current at 216 MHz, about 120 mA at 3.3 V, all peripherals on); paging to a
  microSD card on the 4-bit SDMMC port, 10 MB/s read and 4 MB/s write
  sustained with FatFs and 512-byte-aligned blocks, at 0.10 W read and 0.20 W
  write for the card (SD cards draw 30-60 mA while transferring).
- ``esp32``: 0.24 W computing (about 70 mA at 3.3 V, 240 MHz, radio off);
  SPI flash at 40 MHz quad I/O, 8 MB/s read and 0.3 MB/s program
  (page-program time of NOR flash), 0.05 W either way.
- ``rpi-zero``: 0.50 W (the board's idle-to-busy difference); its microSD,
  20 MB/s read and 10 MB/s write, at 0.20 W.

Storage holds float32 tensors, as the executor does: an int8 device pages
and holds four times fewer bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceCosts:
    name: str
    seconds_per_mac: float
    joules_per_mac: float
    read_bytes_per_second: float
    write_bytes_per_second: float
    read_joules_per_byte: float
    write_joules_per_byte: float

    def compute_seconds(self, macs: int) -> float:
        return macs * self.seconds_per_mac

    def compute_joules(self, macs: int) -> float:
        return macs * self.joules_per_mac

    def page_in_seconds(self, size: int) -> float:
        return size / self.read_bytes_per_second

    def page_out_seconds(self, size: int) -> float:
        return size / self.write_bytes_per_second


# name: (compute watts, read B/s, write B/s, read watts, write watts)
_STORAGE = {
    "stm32f746": (0.40, 10e6, 4e6, 0.10, 0.20),
    "esp32": (0.24, 8e6, 0.3e6, 0.05, 0.05),
    "rpi-zero": (0.50, 20e6, 10e6, 0.20, 0.20),
}


def device_costs(name: str, macs_per_second: float) -> DeviceCosts:
    """The costs of a device with storage assumptions, computing at ``macs_per_second``."""
    if name not in _STORAGE:
        raise ValueError(f"no paging costs for {name!r}; pick one of {', '.join(sorted(_STORAGE))}")
    if not macs_per_second > 0:
        raise ValueError("macs_per_second must be positive")
    watts, read, write, read_watts, write_watts = _STORAGE[name]
    seconds_per_mac = 1.0 / macs_per_second
    return DeviceCosts(name, seconds_per_mac, watts * seconds_per_mac, read, write,
                       read_watts / read, write_watts / write)


DEVICES = tuple(sorted(_STORAGE))
