"""The structure holds: every module sits in a layer, and only the schema spells message-body keys."""

from __future__ import annotations

import importlib.util
import pkgutil
import tomllib
from pathlib import Path
from types import ModuleType

import agilenn

REPO = Path(__file__).resolve().parents[1]


def _audit_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_structure", REPO / "tools" / "audit_structure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layered_modules() -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    return {name.strip() for layer in contract["layers"] for name in layer.replace("|", ":").split(":")}


def test_every_agilenn_module_is_named_in_a_layer() -> None:
    """import-linter checks only the modules a layer names: a new core module must be added."""
    modules = {f"agilenn.{info.name}" for info in pkgutil.iter_modules(agilenn.__path__)}
    modules.discard("agilenn.__main__")
    assert modules - _layered_modules() == set()


def test_the_layers_cover_every_package() -> None:
    assert {"transports", "edge_node", "server_node", "agilenn.cli", "agilenn.bench"} <= _layered_modules()


def test_only_the_schema_module_spells_message_body_keys() -> None:
    spellers = _audit_tool().body_key_spellers(["agilenn", "transports", "edge_node", "server_node", "tools"])
    assert sorted(spellers) == ["transports/messages.py"]


def test_the_audit_catches_each_way_of_spelling_a_body(tmp_path: Path) -> None:
    """The check above must be able to fail."""
    audit = _audit_tool()
    for source in ('x = message.body["p"]\n', 'x = reply.body.get("code")\n',
                   'm = Message(MessageType.PING, 1, "d", b"", {})\n', 'b = {"code": 1, "reason": 2}\n'):
        assert list(audit._body_spellings(audit.ast.parse(source))), source
    assert not list(audit._body_spellings(audit.ast.parse('y = self.body[0]\nz = {"code": 1}\n')))
