"""Compile the request path with mypyc into src/tollway/_native (see tollway/native.py).

    .venv/bin/python scripts/build_native.py [--force]

Run by ``make`` before ``make test`` / ``make run``. Nothing to do (well under a second) when the
build's manifest already matches the source; otherwise mypyc compiles ``tollway.native.MODULES``
(one shared library, a few minutes) in build/native and the result replaces src/tollway/_native
whole, its manifest last. The manifest holds the SHA-256 of every compiled module's source as it
was read for this build: the loader serves nothing of a build whose source changed since.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
os.environ["TOLLWAY_PURE"] = "1"  # this script never loads the build it replaces
sys.path.insert(0, str(SRC))

from tollway import native  # noqa: E402


def build(out: Path, work: Path) -> None:
    """mypyc and setuptools: the extensions of native.MODULES into ``out``."""
    # mypyc writes its C files relative to the current directory and names modules from the
    # paths it is given, so it runs in src/ with paths relative to it.
    from mypyc.build import mypycify
    from setuptools import Distribution

    os.chdir(SRC)
    paths = [str(native.source_path(m).relative_to(SRC)) for m in native.MODULES]
    config = ["--config-file", str(ROOT / "pyproject.toml")]
    extensions = mypycify(
        [*config, *paths], opt_level="3", group_name=native.GROUP, target_dir=str(work / "c")
    )
    dist = Distribution({"name": "tollway-native", "ext_modules": extensions})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = str(out)
    cmd.build_temp = str(work / "obj")
    cmd.inplace = False
    cmd.parallel = os.cpu_count() or 1
    dist.run_command("build_ext")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="build even when up to date")
    args = p.parse_args()
    files, status = native.verify(native.NATIVE_DIR)
    if files is not None and not args.force:
        print(f"tollway native build up to date: {status}")
        return 0
    print(f"tollway native build: {status}; compiling {len(native.MODULES)} modules with mypyc")
    before = native.digests(native.MODULES)
    start = time.monotonic()
    work = ROOT / "build" / "native"
    staged = native.NATIVE_DIR.with_name("_native.new")
    shutil.rmtree(staged, ignore_errors=True)
    build(staged, work)
    if native.digests(native.MODULES) != before:
        shutil.rmtree(staged, ignore_errors=True)
        print("the source changed during the build: run it again", file=sys.stderr)
        return 1
    manifest = {
        "ext_suffix": native.EXT_SUFFIX,
        "mypy": _mypy_version(),
        "modules": before,
    }
    (staged / native.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(native.NATIVE_DIR, ignore_errors=True)
    staged.rename(native.NATIVE_DIR)
    files, status = native.verify(native.NATIVE_DIR)
    print(f"tollway native build: {status} in {time.monotonic() - start:.0f} s")
    return 0 if files is not None else 1


def _mypy_version() -> str:
    from mypy.version import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
