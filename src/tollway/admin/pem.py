"""Certificate / private key parsing for SSL objects (APISIX ``ssl.lua: validate``), with the
stdlib ``ssl`` module. The PEM text goes through anonymous memory files (``memfd``), never
through the disk; where memfd is missing, the check is skipped."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator

from tollway.errors import ConfigError


@contextlib.contextmanager
def _memfile(name: str, text: str) -> Iterator[str]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, text.encode())
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _reason(e: Exception) -> str:
    return getattr(e, "reason", None) or str(e)


def check_cert_key(cert: str, key: str) -> None:
    """Raises ConfigError ``failed to parse cert: ...`` / ``failed to parse key: ...``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_verify_locations(cadata=cert)
    except (ssl.SSLError, ValueError):
        # OpenSSL's words as APISIX reports them (ssl2.t)
        raise ConfigError("failed to parse cert: PEM_read_bio_X509_AUX() failed") from None
    if not hasattr(os, "memfd_create"):
        return
    try:
        with _memfile("cert", cert) as cpath, _memfile("key", key) as kpath:
            ctx.load_cert_chain(cpath, kpath)
    except (ssl.SSLError, ValueError) as e:
        reason = _reason(e)
        if reason != "KEY_VALUES_MISMATCH":
            reason = "PEM_read_bio_PrivateKey() failed"
        raise ConfigError(f"failed to parse key: {reason}") from None
    except OSError:
        return  # no /proc: cannot check the key here
