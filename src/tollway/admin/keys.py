"""Admin keys: secure defaults and the token check (APISIX ``admin/init.lua: check_token``).

Invariants: the Admin API never listens on a non-loopback address without a real key (an empty
key, a key published in APISIX's docs and tests, or ``admin_key_required: false`` stop the
start); with no key configured, one random key is generated once and kept in
``<run_dir>/admin_key`` (mode 0600) so it survives restarts.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from tollway.errors import TollwayError

log = logging.getLogger("tollway.admin")

# Keys printed in APISIX's config-default.yaml, docs and test suite: anyone can guess them.
KNOWN_KEYS = frozenset({"edd1c9f034335f136f87ad84b625c8f1", "4054f7cf07e344346cd3f287985e76a2"})


class AdminKeyError(TollwayError):
    """The admin key configuration is unsafe; the process must not start. ``key`` is the
    config.yaml key path at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class AdminKey:
    name: str
    key: str
    role: str  # "admin" | "viewer"


def is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_keys(
    configured: list[AdminKey], *, listen_ip: str, required: bool, run_dir: Path
) -> list[AdminKey]:
    """The keys the Admin API accepts. Raises AdminKeyError when the setup is unsafe."""
    exposed = not is_loopback(listen_ip)
    where = f"deployment.admin.admin_listen.ip is {listen_ip!r}, not a loopback address"
    if not required:
        if exposed:
            raise AdminKeyError(
                "deployment.admin.admin_key_required",
                f"false while {where}: refusing to serve the Admin API without a key",
            )
        log.warning("admin_key_required is false: the Admin API accepts requests without a key")
        return []
    for k in configured:
        if exposed and not k.key:
            raise AdminKeyError(
                f"deployment.admin.admin_key[{k.name}]",
                f"the key is empty and {where}; set a strong key",
            )
        if k.key in KNOWN_KEYS:
            if exposed:
                raise AdminKeyError(
                    f"deployment.admin.admin_key[{k.name}]",
                    f"the key is published in APISIX's docs and {where}; set a key of your own",
                )
            log.warning("admin key %r is a publicly known key; change it", k.name)
    if configured and all(k.key for k in configured):
        return configured
    # No key, or an empty one on loopback: APISIX generates a random key; so do we, but keep it
    # in the run dir rather than rewriting the operator's config.yaml.
    generated = load_or_create_key(run_dir / "admin_key")
    if not configured:
        return [AdminKey("admin", generated, "admin")]
    return [AdminKey(k.name, k.key or generated, k.role) for k in configured]


def load_or_create_key(path: Path) -> str:
    try:
        key = path.read_text().strip()
        if key:
            log.warning("Admin API key: using the generated key kept in %s", path)
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    log.warning("Admin API key: no key configured; generated one and wrote it to %s", path)
    return key


def check_token(
    keys: list[AdminKey], token: str | None, method: str, *, required: bool
) -> str | None:
    """None when allowed, else the 401 description (APISIX's wording)."""
    if not required:
        return None
    if not token:
        return "missing apikey"
    try:
        # a header's invalid UTF-8 bytes reach us as surrogate escapes: compare the bytes sent
        sent = token.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate (a query's %ED%A0%80): never a key
        return "wrong apikey"
    for k in keys:
        if secrets.compare_digest(k.key.encode(), sent):
            if k.role == "viewer" and method != "GET":
                return "invalid method for role viewer"
            return None
    return "wrong apikey"
