"""Built-in plugins register through the ``tollway.plugins`` entry points, like third-party ones.

The distributions here are temporary ``*.dist-info`` directories put first on ``sys.path``:
importlib.metadata reads them as it reads an installed package.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tollway.plugins.kit import Plugin
from tollway.plugins.registry import BUILTIN_ENTRY_POINTS, load_registry, plugin_entry_points

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def declared() -> dict[str, str]:
    conf = tomllib.loads(PYPROJECT.read_text())
    entries: dict[str, str] = conf["project"]["entry-points"]["tollway.plugins"]
    return entries


def install(root: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """A distribution ``dist`` with ``entries`` in the group and ``modules`` (name -> source)."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[tollway.plugins]\n{lines}")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)


PLUGIN_SOURCE = """
from tollway.plugins.kit import Plugin

class Hello(Plugin):
    name = "{name}"
    priority = 1
"""


def test_pyproject_declares_every_built_in_in_the_registry_order() -> None:
    assert list(declared().items()) == list(BUILTIN_ENTRY_POINTS)


def test_every_built_in_entry_point_loads_its_plugin() -> None:
    for name, value in BUILTIN_ENTRY_POINTS:
        module, _, attr = value.partition(":")
        assert module.startswith("tollway.plugins.builtin."), value
        cls = __import__(module, fromlist=[attr]).__dict__[attr]
        assert issubclass(cls, Plugin) and cls.name == name, value


def test_without_tollway_metadata_the_built_ins_still_load() -> None:
    """The shared venv's editable install predates the entries: the registry's copy fills in."""
    registry = load_registry()
    assert [n for n in registry.plugins if n in dict(BUILTIN_ENTRY_POINTS)] == [
        n for n, _ in BUILTIN_ENTRY_POINTS
    ]


def test_a_third_party_plugin_loads_and_may_replace_a_built_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        tmp_path,
        "acme_plugins",
        {"hello": "acme_hello:Hello", "cors": "acme_cors:Hello"},
        {
            "acme_hello": PLUGIN_SOURCE.format(name="hello"),
            "acme_cors": PLUGIN_SOURCE.format(name="cors"),
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _, others = plugin_entry_points()
    assert {ep.name for ep in others} >= {"hello", "cors"}
    registry = load_registry()
    assert type(registry.plugins["hello"]).__module__ == "acme_hello"
    assert type(registry.plugins["cors"]).__module__ == "acme_cors"  # replaced
    assert "key-auth" in registry.plugins  # the other built-ins stay


def test_tollways_own_metadata_is_what_registers_the_built_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once installed from this pyproject.toml, the entries come from the metadata: here a
    ``tollway`` distribution whose ``cors`` entry names another class is obeyed."""
    entries = declared()
    entries["cors"] = "own_cors:Hello"
    install(tmp_path, "tollway", entries, {"own_cors": PLUGIN_SOURCE.format(name="cors")})
    monkeypatch.syspath_prepend(str(tmp_path))
    own, others = plugin_entry_points()
    assert [ep.name for ep in own] == list(entries)
    assert all(ep.dist is not None and ep.dist.name == "tollway" for ep in own)
    assert not [ep for ep in others if ep.name in entries]
    registry = load_registry()
    assert type(registry.plugins["cors"]).__module__ == "own_cors"
    assert set(registry.plugins) >= set(entries)


def test_a_broken_third_party_plugin_is_logged_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install(tmp_path, "broken_plugins", {"broken": "no_such_module:Nothing"}, {})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    assert "broken" not in registry.plugins and "key-auth" in registry.plugins
    assert "failed to load plugin entry point broken" in caplog.text
