"""The compiled build of the request path: mypyc extensions, served while they match their source.

``MODULES`` are compiled by mypyc (``scripts/build_native.py``, run by ``make``) from their
unchanged, typed source into ``tollway/_native/``: the proxy, the router, the balancers, the
upstream pool, the plugin kit and the plugins of the common route. Compiled, a request costs
about 45% fewer CPU instructions (bench/RESULTS.md): the interpreter's bytecode loop, frames and
attribute lookups become C calls and struct fields.

The extensions are not beside the ``.py`` files, where Python's import would prefer them to newer
source. ``install()`` (called by ``tollway/__init__``) puts a finder first on ``sys.meta_path``
that serves them only when the build's manifest names the same modules, this Python's extension
suffix and, for every module, the SHA-256 of the source now on disk. One differing module
disables the whole build (its modules call each other in C, so a mix of compiled and edited
modules would run the old code): everything is pure Python until ``make`` builds it again.
``TOLLWAY_PURE=1`` forces pure Python (debugging, profiling with Python tools). ``STATUS`` says
which it is and why; the worker logs it at start.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# Every module of the compiled build. A module here must keep msgspec Structs out (mypyc drops
# the annotations msgspec reads: they live in ``*_conf`` modules) and may not be subclassed by
# interpreted code unless its class says ``@mypyc_attr(allow_interpreted_subclasses=True)``.
MODULES: tuple[str, ...] = (
    "tollway.balancer.cache",
    "tollway.balancer.chash",
    "tollway.balancer.ewma",
    "tollway.balancer.factory",
    "tollway.balancer.hash_key",
    "tollway.balancer.least_conn",
    "tollway.balancer.picker",
    "tollway.balancer.priority",
    "tollway.balancer.roundrobin",
    "tollway.balancer.state",
    "tollway.plugins.builtin.key_auth",
    "tollway.plugins.builtin.limit_count",
    "tollway.plugins.builtin.prometheus",
    "tollway.plugins.kit",
    "tollway.plugins.kit_counters",
    "tollway.plugins.kit_head",
    "tollway.plugins.kit_match",
    "tollway.plugins.registry",
    "tollway.plugins.shared_counters",
    "tollway.proxy.accesslog",
    "tollway.proxy.attempt",
    "tollway.proxy.base",
    "tollway.proxy.contracts",
    "tollway.proxy.driver",
    "tollway.proxy.flow",
    "tollway.proxy.grpc_answer",
    "tollway.proxy.grpc_attempt",
    "tollway.proxy.grpc_fields",
    "tollway.proxy.h1_names",
    "tollway.proxy.h2",
    "tollway.proxy.h2_fields",
    "tollway.proxy.h2_guard",
    "tollway.proxy.h2_stream",
    "tollway.proxy.http",
    "tollway.proxy.phases",
    "tollway.proxy.pipeline",
    "tollway.proxy.realip",
    "tollway.proxy.request_head",
    "tollway.proxy.response",
    "tollway.proxy.retry",
    "tollway.proxy.server",
    "tollway.proxy.state",
    "tollway.proxy.tls",
    "tollway.proxy.upgrade",
    "tollway.proxy.upstream",
    "tollway.router.engine",
    "tollway.router.path",
    "tollway.router.pattern",
    "tollway.router.prefix_tree",
    "tollway.router.spec",
    "tollway.router.table",
    "tollway.upstream.pool",
)
GROUP = "tollway_native"  # mypyc's shared library of the build: the module tollway_native__mypyc
SRC = Path(__file__).resolve().parent.parent  # the directory holding the tollway package
NATIVE_DIR = Path(__file__).resolve().parent / "_native"
MANIFEST = "manifest.json"
ENV_PURE = "TOLLWAY_PURE"
EXT_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]

STATUS = "pure Python (not installed)"


def source_path(module: str, src: Path = SRC) -> Path:
    return src.joinpath(*module.split(".")).with_suffix(".py")


def digests(modules: Sequence[str], src: Path = SRC) -> dict[str, str]:
    """The SHA-256 of every module's source (a missing one has the digest "")."""
    out = {}
    for m in modules:
        try:
            out[m] = hashlib.sha256(source_path(m, src).read_bytes()).hexdigest()
        except OSError:
            out[m] = ""
    return out


def extension_name(module: str) -> str:
    """Where the build puts a module's extension, relative to its directory."""
    return module.replace(".", "/") + EXT_SUFFIX


def verify(native_dir: Path, src: Path = SRC) -> tuple[dict[str, Path] | None, str]:
    """(module -> extension file, status) when the build in ``native_dir`` matches the source;
    (None, why not) otherwise."""
    try:
        manifest = json.loads((native_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "pure Python (no compiled build: make builds it)"
    except (OSError, ValueError) as e:
        return None, f"pure Python (unreadable compiled build: {e})"
    if manifest.get("ext_suffix") != EXT_SUFFIX:
        built_for = manifest.get("ext_suffix")
        return None, f"pure Python (compiled build for {built_for}, not this Python)"
    built: dict[str, str] = manifest.get("modules", {})
    if sorted(built) != sorted(MODULES):
        return None, "pure Python (stale compiled build: tollway.native.MODULES changed; make)"
    now = digests(MODULES, src)
    for m in MODULES:
        if built[m] != now[m]:
            return None, f"pure Python (stale compiled build: {m} changed since; make)"
    files = {m: native_dir / extension_name(m) for m in (*MODULES, GROUP + "__mypyc")}
    missing = [m for m, f in files.items() if not f.is_file()]
    if missing:
        return None, f"pure Python (incomplete compiled build: no {missing[0]})"
    return files, f"compiled (mypyc {manifest.get('mypy', '?')}, {len(MODULES)} modules)"


class _Finder(importlib.abc.MetaPathFinder):
    """Serves the verified extensions, before the ordinary path finder sees the ``.py``."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def install() -> str:
    """Serve the compiled build when it is there, current and not refused; returns STATUS."""
    global STATUS
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return STATUS
    if os.environ.get(ENV_PURE, "") not in ("", "0"):
        STATUS = f"pure Python ({ENV_PURE} set)"
        return STATUS
    files, STATUS = verify(NATIVE_DIR)
    if files is not None:
        sys.meta_path.insert(0, _Finder(files))
    return STATUS
