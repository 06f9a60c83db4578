"""Building the firmware (``make host`` / ``make cortex-m4``) and reading its memory use from the linker map.

The host build needs ``gcc`` and ``make``; the Cortex-M4 build needs ``arm-none-eabi-gcc`` (Debian:
``gcc-arm-none-eabi``) and runs in ``qemu-system-arm`` (Debian: ``qemu-system-arm``). A missing tool
or a failed build raises :class:`ToolchainError` with what to install or what the compiler said.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from ..errors import AgileNNError

Target = Literal["host", "cortex-m4"]
HOST: Target = "host"
CORTEX_M4: Target = "cortex-m4"
TARGETS: tuple[Target, ...] = (HOST, CORTEX_M4)
BUILD_DIR = "build"
ARTIFACTS: dict[str, str] = {HOST: "agn_host", CORTEX_M4: "agn_m4.elf"}
MAP_FILE = "agn_m4.map"
BUILD_TIMEOUT_S = 300.0
# tool -> the Debian package that provides it
PACKAGES = {"make": "make", "gcc": "gcc", "arm-none-eabi-gcc": "gcc-arm-none-eabi",
            "arm-none-eabi-objcopy": "binutils-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"}
_TOOLS: dict[str, tuple[str, ...]] = {HOST: ("make", "gcc"),
                                      CORTEX_M4: ("make", "arm-none-eabi-gcc", "arm-none-eabi-objcopy")}
_OUTPUT_TAIL = 4000


class ToolchainError(AgileNNError, RuntimeError):
    """A tool is missing or the build failed; the message says which and why."""


def require(tool: str) -> str:
    """The path of ``tool``; ToolchainError naming its Debian package if it is not installed."""
    path = shutil.which(tool)
    if path is None:
        package = PACKAGES.get(tool, tool)
        raise ToolchainError(f"{tool} is not installed (Debian/Ubuntu: apt-get install {package})")
    return path


def missing_tools(target: Target, run: bool = False) -> list[str]:
    """The tools ``target`` needs (to build, and with ``run`` to boot) that are not installed."""
    tools = _TOOLS[target] + (("qemu-system-arm",) if run and target == CORTEX_M4 else ())
    return [tool for tool in tools if shutil.which(tool) is None]


def _check_target(target: str) -> Target:
    if target not in TARGETS:
        raise ValueError(f"unknown firmware target {target!r}; one of {', '.join(TARGETS)}")
    return target  # type: ignore[return-value]


def artifact(fw_dir: Path, target: Target) -> Path:
    """Where ``make`` puts the build of ``target``."""
    return Path(fw_dir) / BUILD_DIR / ARTIFACTS[_check_target(target)]


def build(fw_dir: Path, target: Target) -> Path:
    """Run ``make <target>`` in ``fw_dir``; the path of the program (agn_host or agn_m4.elf)."""
    target = _check_target(target)
    fw_dir = Path(fw_dir)
    if not (fw_dir / "Makefile").is_file():
        raise ToolchainError(f"{fw_dir} holds no Makefile: not a firmware folder")
    make = require("make")
    for tool in _TOOLS[target][1:]:
        require(tool)
    try:
        done = subprocess.run([make, "-C", str(fw_dir), target], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(f"make {target} in {fw_dir} ran past {BUILD_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-_OUTPUT_TAIL:]
        raise ToolchainError(f"make {target} in {fw_dir} failed (exit {done.returncode}):\n{output}")
    path = artifact(fw_dir, target)
    if not path.is_file():
        raise ToolchainError(f"make {target} succeeded but wrote no {path}")
    return path


_REGION = re.compile(r"^(\w+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)(?:\s+\w+)?\s*$")
_SECTION = re.compile(r"^(\.[^\s]+)(?:\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)"
                      r"(?:\s+load address\s+0x([0-9a-fA-F]+))?)?\s*$")
_WRAPPED = re.compile(r"^\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)(?:\s+load address\s+0x([0-9a-fA-F]+))?\s*$")
_NOT_LOADED = (".debug", ".comment", ".ARM.attributes", ".stab", ".note")
# RAM sections that take no flash (NOLOAD): the map gives them a load address all the same.
_NO_LOAD_IMAGE = (".bss", ".stack", ".heap", ".noinit", ".tbss")


def _regions(text: str) -> dict[str, tuple[int, int]]:
    start = text.find("Memory Configuration")
    end = text.find("Linker script and memory map")
    if start < 0 or end < 0:
        raise ToolchainError("not a GNU ld map: no memory configuration")
    regions = {}
    for line in text[start:end].splitlines():
        match = _REGION.match(line.strip())
        if match and match.group(1) != "Name" and match.group(1) != "*default*":
            regions[match.group(1)] = (int(match.group(2), 16), int(match.group(3), 16))
    return regions


def _output_sections(text: str) -> list[tuple[str, int, int, int | None]]:
    """(name, address, size, load address) of every output section of the map."""
    sections: list[tuple[str, int, int, int | None]] = []
    lines = text[text.find("Linker script and memory map"):].splitlines()
    for index, line in enumerate(lines):
        match = _SECTION.match(line)
        if not match:
            continue
        name, address, size, load = match.groups()
        if address is None:  # a long name: the numbers are on the next line
            wrapped = _WRAPPED.match(lines[index + 1]) if index + 1 < len(lines) else None
            if wrapped is None:
                continue
            address, size, load = wrapped.groups()
        sections.append((name, int(address, 16), int(size, 16), int(load, 16) if load else None))
    return sections


def mcu_memory(fw_dir: Path) -> tuple[int | None, int | None]:
    """(flash bytes, RAM bytes) of the Cortex-M4 build, built if need be; (None, None) without its
    toolchain."""
    if missing_tools(CORTEX_M4):
        return None, None
    return memory_usage(build(fw_dir, CORTEX_M4))


def memory_usage(map_path: Path) -> tuple[int, int]:
    """(flash bytes, RAM bytes) of a Cortex-M build, from its GNU ld map (or the ELF beside it).

    Flash: every output section placed in FLASH (code, constants, the weight slots, the boot
    record) plus the load image of .data; RAM: everything placed in RAM (.data, .bss, the stack).
    """
    path = Path(map_path)
    if path.suffix != ".map":
        path = path.with_name(MAP_FILE) if path.name == ARTIFACTS[CORTEX_M4] else path.with_suffix(".map")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ToolchainError(f"cannot read the linker map {path}: {exc}") from exc
    regions = _regions(text)
    if "FLASH" not in regions or "RAM" not in regions:
        raise ToolchainError(f"{path}: the map names no FLASH and RAM regions")

    def inside(region: str, address: int) -> bool:
        origin, length = regions[region]
        return origin <= address < origin + length

    flash = ram = 0
    for name, address, size, load in _output_sections(text):
        if size == 0 or name.startswith(_NOT_LOADED):
            continue
        if inside("FLASH", address):
            flash += size
        elif inside("RAM", address):
            ram += size
            if load is not None and load != address and inside("FLASH", load) \
                    and not name.startswith(_NO_LOAD_IMAGE):
                flash += size
    return flash, ram
