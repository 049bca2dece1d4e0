"""tollway.native: the compiled build is served only while it matches the source, else pure Python."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from tollway import native

# `make test` / `make unit` set it (unless NATIVE=0): there the build must be what runs.
EXPECTED = os.environ.get("TOLLWAY_NATIVE_EXPECTED") == "1"
BUILT = native.verify(native.NATIVE_DIR)[0] is not None


def fake_build(tmp_path: Path, **override: object) -> Path:
    """A build directory whose manifest matches the source now, with empty extension files."""
    d = tmp_path / "_native"
    for m in (*native.MODULES, native.GROUP + "__mypyc"):
        f = d / native.extension_name(m)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    manifest = {
        "ext_suffix": native.EXT_SUFFIX,
        "mypy": "test",
        "modules": native.digests(native.MODULES),
        **override,
    }
    (d / native.MANIFEST).write_text(json.dumps(manifest))
    return d


def test_a_build_matching_the_source_is_served(tmp_path: Path) -> None:
    files, status = native.verify(fake_build(tmp_path))
    assert files is not None and status.startswith("compiled")
    server = tmp_path / "_native" / native.extension_name("tollway.proxy.server")
    assert files["tollway.proxy.server"] == server
    assert set(files) == {*native.MODULES, native.GROUP + "__mypyc"}


def test_a_module_whose_source_changed_disables_the_whole_build(tmp_path: Path) -> None:
    digests = native.digests(native.MODULES)
    digests["tollway.router.engine"] = "0" * 64
    files, status = native.verify(fake_build(tmp_path, modules=digests))
    assert files is None
    assert "stale" in status and "tollway.router.engine" in status


def test_a_build_of_another_module_list_or_python_is_not_served(tmp_path: Path) -> None:
    fewer = dict(list(native.digests(native.MODULES).items())[1:])
    assert native.verify(fake_build(tmp_path / "a", modules=fewer))[0] is None
    assert native.verify(fake_build(tmp_path / "b", ext_suffix=".cpython-39-x.so"))[0] is None


def test_no_build_or_a_missing_extension_is_pure_python(tmp_path: Path) -> None:
    assert native.verify(tmp_path / "nothing") == (
        None,
        "pure Python (no compiled build: make builds it)",
    )
    d = fake_build(tmp_path)
    (d / native.extension_name("tollway.proxy.phases")).unlink()
    files, status = native.verify(d)
    assert files is None and "tollway.proxy.phases" in status


def _loaded(src: Path, **env: str) -> list[str]:
    """(native.STATUS, the file tollway.proxy.server was loaded from) in a fresh interpreter."""
    code = (
        "import tollway.native as n, tollway.proxy.server as s; print(n.STATUS); print(s.__file__)"
    )
    environ = {k: v for k, v in os.environ.items() if k != native.ENV_PURE}
    environ.update(PYTHONPATH=str(src), **env)
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_tollway_pure_forces_the_source() -> None:
    status, file = _loaded(native.SRC, TOLLWAY_PURE="1")
    assert status == "pure Python (TOLLWAY_PURE set)"
    assert file.endswith("/tollway/proxy/server.py")


@pytest.mark.skipif(not (BUILT or EXPECTED), reason="no compiled build (make builds it)")
def test_the_compiled_build_is_what_runs() -> None:
    status, file = _loaded(native.SRC)
    assert status.startswith("compiled"), status
    assert file == str(native.NATIVE_DIR / native.extension_name("tollway.proxy.server"))


@pytest.mark.skipif(not BUILT, reason="no compiled build (make builds it)")
def test_an_edited_module_runs_as_source_not_as_its_stale_build(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(native.SRC / "tollway", src / "tollway", ignore=shutil.ignore_patterns("*.pyc"))
    edited = native.source_path("tollway.proxy.flow", src)
    edited.write_text(edited.read_text() + "\nEDITED = True\n")
    status, file = _loaded(src)
    assert status == "pure Python (stale compiled build: tollway.proxy.flow changed since; make)"
    assert file == str(src / "tollway/proxy/server.py")


def test_no_compiled_function_binds_one_except_name_to_two_classes() -> None:
    """mypyc gives ``except A as e`` / ``except B as e`` in one function the type of the first
    (a B then fails with TypeError, as h2's CONNECT 405 did): each gets its own name."""
    found = []
    for m in native.MODULES:
        tree = ast.parse(native.source_path(m).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            kinds: dict[str, set[str]] = {}
            for n in ast.walk(fn):
                if isinstance(n, ast.ExceptHandler) and n.name and n.type is not None:
                    kinds.setdefault(n.name, set()).add(ast.unparse(n.type))
            found += [f"{m}.{fn.name}: {k} {sorted(v)}" for k, v in kinds.items() if len(v) > 1]
    assert found == []


def test_no_compiled_module_defines_a_msgspec_struct() -> None:
    """mypyc replaces a class's annotations with what it compiles them to (``type`` for most):
    msgspec would then validate against those. Structs live in uncompiled ``*_conf`` modules."""
    found = []
    for m in native.MODULES:
        for name, obj in vars(importlib.import_module(m)).items():
            if inspect.isclass(obj) and obj.__module__ == m and issubclass(obj, msgspec.Struct):
                found.append(f"{m}.{name}")
    assert found == []
