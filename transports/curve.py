"""CURVE security for the ZeroMQ transport: key files, server allowlist, client keys.

Key pairs are pyzmq certificate files (``NAME.key`` public, ``NAME.key_secret``
secret), written by ``agilenn keygen``. The server accepts only devices whose
public key file lies in its allowlist folder; the check runs in pyzmq's ZAP
handler (:class:`zmq.auth.thread.ThreadAuthenticator`), one per server context.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("agilenn.transports.curve")


@dataclass(frozen=True)
class CurveServerConfig:
    """The server's own key pair and the folder of device public keys it accepts."""

    secret_key_file: Path
    allowed_clients_dir: Path


@dataclass(frozen=True)
class CurveClientConfig:
    """A device's own key pair and the public key of the server it talks to."""

    secret_key_file: Path
    server_public_key_file: Path


def generate_keypair(directory: Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``name.key`` and ``name.key_secret`` in ``directory``; returns (public, secret).

    Raises FileExistsError rather than replace an existing key unless ``overwrite``.
    """
    if not name or Path(name).name != name:
        raise ValueError(f"key name must be a plain file name, got {name!r}")
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    existing = [str(path) for path in (public, secret) if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"key file already exists: {', '.join(existing)}")
    directory.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(directory, name)
    # pyzmq writes with the process umask; a secret key should be readable by its owner only.
    os.chmod(secret, 0o600)
    return public, secret


def load_keypair(secret_key_file: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file; ValueError if it has no secret."""
    public, secret = zmq.auth.load_certificate(secret_key_file)
    if secret is None:
        raise ValueError(f"{secret_key_file} holds no secret key (is it the public .key file?)")
    return public, secret


def load_public_key(key_file: Path) -> bytes:
    """The Z85 public key from a ``.key`` (or ``.key_secret``) file."""
    public, _ = zmq.auth.load_certificate(key_file)
    return public


class _Allowlist:
    """ZAP credentials provider: accepts the public keys found in one folder.

    Used instead of ``configure_curve(location=...)`` because pyzmq logs a denial
    at DEBUG only; a refused device is worth a WARNING to whoever runs the server.
    """

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise ValueError(f"CURVE allowlist folder does not exist: {directory}")
        self.directory = directory
        self.keys = zmq.auth.load_certificates(directory)
        if not self.keys:
            log.warning("CURVE allowlist %s is empty: every device will be refused", directory)

    def callback(self, domain: str, client_key: bytes) -> bool:
        if self.keys.get(client_key):
            log.debug("CURVE key %s accepted", client_key.decode())
            return True
        log.warning("CURVE key %s refused: not in allowlist %s", client_key.decode(), self.directory)
        return False


def start_authenticator(context: zmq.Context, config: CurveServerConfig) -> ThreadAuthenticator:
    """Start the ZAP handler of ``context``; the caller must ``stop()`` it (it owns a thread).

    ZAP is per context: one handler serves every CURVE socket of the context,
    each socket's allowlist chosen by its ZAP domain (see :func:`allow_domain`).
    """
    allowlist = _Allowlist(config.allowed_clients_dir)
    authenticator = ThreadAuthenticator(context, log=log)
    authenticator.start()
    try:
        authenticator.configure_curve_callback(domain="*", credentials_provider=allowlist)
    except BaseException:
        authenticator.stop()
        raise
    return authenticator


def allow_domain(authenticator: ThreadAuthenticator, domain: str, allowed_clients_dir: Path) -> None:
    """Let the keys in ``allowed_clients_dir`` into sockets whose ZAP domain is ``domain``."""
    allowlist = _Allowlist(allowed_clients_dir)
    authenticator.configure_curve_callback(domain=domain, credentials_provider=allowlist)


def configure_server(socket: zmq.Socket, config: CurveServerConfig, domain: str = "") -> None:
    """Make ``socket`` a CURVE server with its key pair (before bind); ``domain`` picks its allowlist."""
    if domain:
        socket.setsockopt_string(zmq.ZAP_DOMAIN, domain)
    public, secret = load_keypair(config.secret_key_file)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.setsockopt(zmq.CURVE_SERVER, 1)


def configure_client(socket: zmq.Socket, config: CurveClientConfig) -> None:
    """Make ``socket`` a CURVE client of the configured server (before connect)."""
    public, secret = load_keypair(config.secret_key_file)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.setsockopt(zmq.CURVE_SERVERKEY, load_public_key(config.server_public_key_file))
