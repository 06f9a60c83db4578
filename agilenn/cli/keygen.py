"""``agilenn keygen``: write a CURVE key pair (``NAME.key`` public, ``NAME.key_secret`` secret).

Typical setup of a server and its devices::

    agilenn keygen --dir keys/server --name server      # the server's key pair
    agilenn keygen --dir keys/devices --name device-01  # one pair per device
    mkdir -p keys/allowed
    cp keys/devices/device-01.key keys/allowed/         # allow the device: copy its PUBLIC key

The server is then given ``keys/server/server.key_secret`` and the allowlist
folder ``keys/allowed``; each device gets its own ``.key_secret`` and the
server's public ``server.key``. Secret files are written owner-readable only;
never copy a ``.key_secret`` file off the machine that uses it. The server
reads the allowlist when it starts.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from transports.curve import generate_keypair

from .common import fail, print_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn keygen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, type=Path, help="folder to write the key files in")
    parser.add_argument("--name", required=True, help="base name of the key files, e.g. server or device-01")
    parser.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        public, secret = generate_keypair(args.dir, args.name, overwrite=args.force)
    except FileExistsError as exc:
        return fail(f"{exc}; pass --force to replace it")
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    print_json({"public": str(public), "secret": str(secret)})
    return 0
