"""Writing a firmware folder: the C sources, the generated model files and the int8 weight image.

``agilenn export --target c`` calls :func:`write_firmware`. The folder it
writes builds on its own (``make host``, ``make cortex-m4``): the protocol and
kernel sources from ``agilenn/firmware/c``, ``agn_config.h`` and
``agn_default_image.c`` generated for the model, ``weights.agw`` (the image
``agilenn pair --image`` pushes) and ``export.json`` (what was exported).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from ..checkpoint import Checkpoint
from .image import pack_image
from .int8 import Int8Model
from .sources import model_sources

WEIGHTS_FILE = "weights.agw"
MANIFEST_FILE = "export.json"
_SOURCE_SUFFIXES = (".c", ".h", ".ld")


@dataclass(frozen=True)
class ExportManifest:
    model: str
    model_hash: str
    device_id: str
    image_bytes: int
    calibration_images: int
    files: list[str]


def c_source_dir() -> Path:
    """The firmware's hand-written C sources, as installed with the package."""
    return Path(str(resources.files("agilenn.firmware").joinpath("c")))


def write_firmware(checkpoint: Checkpoint, model: Int8Model, out_dir: Path, *, model_name: str,
                   device_id: str, calibration_images: int) -> ExportManifest:
    """Write the firmware folder for ``model`` (quantised from ``checkpoint``) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    source_dir = c_source_dir()
    for source in sorted(source_dir.iterdir()):
        if source.is_file() and (source.suffix in _SOURCE_SUFFIXES or source.name == "Makefile"):
            shutil.copyfile(source, out_dir / source.name)
            written.append(source.name)
    for name, text in model_sources(model, device_id).items():
        (out_dir / name).write_text(text)
        written.append(name)
    image = pack_image(model)
    (out_dir / WEIGHTS_FILE).write_bytes(image)
    written.append(WEIGHTS_FILE)
    manifest = ExportManifest(model_name, checkpoint.model_hash, device_id, len(image), calibration_images,
                              sorted(written + [MANIFEST_FILE]))
    (out_dir / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def read_manifest(fw_dir: Path) -> ExportManifest:
    """The manifest of a folder :func:`write_firmware` wrote; ValueError if it is not one."""
    path = fw_dir / MANIFEST_FILE
    try:
        return ExportManifest(**json.loads(path.read_text()))
    except (OSError, TypeError, ValueError) as exc:
        raise ValueError(f"{fw_dir} is not a folder agilenn export wrote ({path}: {exc})") from exc
