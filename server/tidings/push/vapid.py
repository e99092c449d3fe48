"""The server's VAPID key pair (RFC 8292), made once and kept like the JWT secret.

Push services tie a subscription to the application server key the browser
subscribed with, so the key must outlive restarts and be the same on every
node: ``push.vapid_private_key`` (a PEM file path) names it for a cluster;
without it the first start writes ``vapid_private.pem`` (mode 0600) in the
data folder and later starts read it. The public key, unpadded base64url of
the uncompressed P-256 point, is what ``PushManager.subscribe`` takes as
``applicationServerKey`` (served at ``GET /v1/push/vapid-public-key`` and in
the WS connect reply).
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02

__all__ = ["VAPID_FILE", "load_vapid", "public_key_b64"]

VAPID_FILE = "vapid_private.pem"


def load_vapid(folder: str | Path, configured: str = "") -> Vapid02:
    """The key from ``configured`` (a PEM file), else from the data folder,
    made there on the first call. A file that does not parse raises ValueError
    naming it (never its content)."""
    path = Path(configured) if configured else Path(folder) / VAPID_FILE
    if not path.exists():
        if configured:
            raise ValueError(f"push.vapid_private_key: no file {path}")
        key = Vapid02()
        key.generate_keys()
        if _publish(path, key.private_pem()):
            return key
        # another process (a sibling worker of `serve --workers`) made it first:
        # everyone uses that one
    try:
        return Vapid02.from_file(str(path))
    except Exception:  # py_vapid raises several kinds for a bad file
        raise ValueError(f"the VAPID key file {path} is not a P-256 private key in PEM"
                         ) from None


def _publish(path: Path, pem: bytes) -> bool:
    """Write ``pem`` to ``path`` (mode 0600) unless it exists, atomically: written
    to a temporary file, then linked into place, so no process ever reads half a
    key; False if another process got there first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vapid-")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp makes it 0600
            f.write(pem)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def public_key_b64(key: Vapid02) -> str:
    raw = key.public_key.public_bytes(serialization.Encoding.X962,
                                      serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
