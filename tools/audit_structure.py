"""The structure figures: layering contracts broken, mypy errors, modules that spell message-body keys.

    python tools/audit_structure.py            # all three, as a table and one JSON line
    python tools/audit_structure.py --no-slow  # only the body-key scan (no lint-imports, no mypy)

A module "spells a body key" when it reads ``<message>.body[...]`` or
``.body.get(...)``, builds a ``Message(...)`` with a body, or writes a dict
literal whose keys are exactly one message type's body fields. Only
``transports/messages.py`` should: every other module uses its typed bodies.
Tests are scanned too and reported apart, since a schema test must craft raw
bodies to check the validation.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("agilenn", "transports", "edge_node", "server_node")
sys.path.insert(0, str(REPO))

from transports.messages import BODY_SCHEMAS  # noqa: E402

SCHEMA_KEY_SETS = {frozenset(fields) for fields in BODY_SCHEMAS.values() if fields}


def _is_body(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "body"


def _body_spellings(tree: ast.AST) -> Iterator[int]:
    """Line numbers where the tree spells a message body by hand."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_body(node.value) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            yield node.lineno
        elif isinstance(node, ast.Call):
            function = node.func
            if isinstance(function, ast.Attribute) and function.attr == "get" and _is_body(function.value):
                yield node.lineno
            name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
            if name == "Message" and (len(node.args) >= 5 or any(k.arg == "body" for k in node.keywords)):
                yield node.lineno
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if len(keys) == len(node.keys) and frozenset(keys) in SCHEMA_KEY_SETS:
                yield node.lineno


def body_key_spellers(folders: Sequence[str]) -> dict[str, list[int]]:
    """Module path -> the lines where it spells a body, for every .py file under ``folders``."""
    found: dict[str, list[int]] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = sorted(set(_body_spellings(ast.parse(path.read_text(), str(path)))))
            if lines:
                found[str(path.relative_to(REPO))] = lines
    return found


def broken_contracts() -> int:
    output = subprocess.run(["lint-imports"], cwd=REPO, capture_output=True, text=True).stdout
    match = re.search(r"(\d+) kept, (\d+) broken", output)
    if match is None:
        raise RuntimeError(f"lint-imports printed no summary:\n{output}")
    return int(match.group(2))


def mypy_errors() -> int:
    result = subprocess.run([sys.executable, "-m", "mypy", *LIBRARY], cwd=REPO, capture_output=True,
                            text=True)
    return sum(": error:" in line for line in result.stdout.splitlines())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-slow", action="store_true", help="skip lint-imports and mypy")
    args = parser.parse_args(argv)
    library = body_key_spellers([*LIBRARY, "tools"])
    figures: dict[str, object] = {
        "modules_spelling_body_keys": len(library),
        "modules_spelling_body_keys_list": sorted(library),
        "test_modules_spelling_body_keys": sorted(body_key_spellers(["tests"])),
    }
    if not args.no_slow:
        figures["import_linter_contracts_broken"] = broken_contracts()
        figures["mypy_errors_library"] = mypy_errors()
    for name, value in figures.items():
        print(f"{name:36s} {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
