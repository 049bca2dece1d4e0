"""The import rules of docs/ARCHITECTURE.md hold for src/tollway, and it has no import cycles.

The package table is read from the document itself, so the rules and their check cannot drift.
Imports are read with ``ast`` (including those under ``if TYPE_CHECKING:``, and those inside
functions: a module that needs another at run time depends on it all the same).

Until the proxy restructure lands, ``tollway.proxy.runtime`` (the compiler) and
``tollway.proxy.upstream`` (the pools) are checked as the ``runtime`` and ``upstream`` packages
they are moving to, and the import cycle among ``proxy``'s four main modules is tolerated while
``proxy/runtime.py`` exists. Both allowances end by themselves when that file is gone.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PKG = SRC / "tollway"
DOC = ROOT / "docs" / "ARCHITECTURE.md"

# Modules on their way out of proxy/ (see the module docstring): checked as where they go.
MOVING = {"tollway.proxy.runtime": "runtime", "tollway.proxy.upstream": "upstream"}
PROXY_CYCLE = {"tollway.proxy.forward", "tollway.proxy.pipeline", "tollway.proxy.server",
               "tollway.proxy.state"}  # fmt: skip
KIT = re.compile(r"^tollway\.plugins\.kit(_\w+)?$")


@dataclass(frozen=True)
class Rule:
    unit: str  # "proxy", "plugins.kit*", "tollway" (the package root)
    allowed: tuple[str, ...]  # ("*",) for anything

    def names(self, unit: str) -> bool:
        return fnmatch.fnmatchcase(unit, self.unit)


def read_rules(text: str) -> list[Rule]:
    """The rows of the package table: `unit` | job | `a`, `b` (or — / `*`)."""
    section = text.split("## Packages", 1)[1].split("\n## ", 1)[0]
    rules = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        unit = cells[0].strip("`")
        rules.append(Rule(unit, tuple(re.findall(r"`([\w.*]+)`", cells[2]))))
    return rules


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports(mod: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported Tollway module, line) for every import in ``mod``; a name imported from a
    module is that module."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        found = set()
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("tollway") and name != mod:
                found.add(name)
        for name in sorted(found):
            yield name, node.lineno


def unit_of(mod: str, rules: list[Rule]) -> Rule | None:
    """The most specific row naming ``mod`` (its own name, or a package it is in)."""
    mod = MOVING.get(mod, mod)
    rel = mod.removeprefix("tollway.") if mod != "tollway" else "tollway"
    candidates = [rel]
    while "." in candidates[-1]:
        candidates.append(candidates[-1].rpartition(".")[0])
    for name in candidates:
        for rule in rules:
            if rule.names(name):
                return rule
    return None


def covers(allowed: str, unit: str) -> bool:
    """An allowed name is one row (``plugins`` is not ``plugins.builtin``, which has a row of
    its own); ``*`` is every row."""
    return allowed in ("*", unit)


@pytest.fixture(scope="module")
def rules() -> list[Rule]:
    assert DOC.is_file(), "docs/ARCHITECTURE.md is the map of the code; it must exist"
    found = read_rules(DOC.read_text())
    assert len(found) > 10, "the package table of docs/ARCHITECTURE.md was not found"
    return found


def test_every_module_has_a_row(rules: list[Rule]) -> None:
    missing = [m for m in modules() if unit_of(m, rules) is None]
    assert not missing, f"modules no row of docs/ARCHITECTURE.md names: {missing}"


def test_every_row_names_code(rules: list[Rule]) -> None:
    """A row for code that is gone is a rule nobody checks (rows of the move count as code)."""
    units = {unit_of(m, rules) for m in modules()} | {unit_of(m, rules) for m in MOVING}
    stale = [r.unit for r in rules if r not in units and r.unit not in MOVING.values()]
    assert not stale, f"rows of docs/ARCHITECTURE.md that name no module: {stale}"


def test_imports_follow_the_table(rules: list[Rule]) -> None:
    mods = modules()
    known = set(mods)
    broken = []
    for mod, path in mods.items():
        rule = unit_of(mod, rules)
        assert rule is not None
        for target, line in imports(mod, path, known):
            to = unit_of(target, rules)
            assert to is not None
            if to == rule or to.unit.startswith(rule.unit + "."):  # itself, its own parts
                continue
            if not any(covers(a, to.unit) for a in rule.allowed):
                where = f"{path.relative_to(ROOT)}:{line}"
                broken.append(f"{where}: {rule.unit} imports {target} ({to.unit})")
    assert not broken, "imports docs/ARCHITECTURE.md does not allow:\n" + "\n".join(broken)


def test_the_table_has_no_cycles(rules: list[Rule]) -> None:
    units = [r.unit for r in rules]
    graph = {
        r.unit: {u for u in units if u != r.unit and any(covers(a, u) for a in r.allowed)}
        for r in rules
        if "*" not in r.allowed
    }
    assert not strongly_connected(graph), "the may-import graph of the table has a cycle"


def test_built_in_plugins_use_only_the_kit() -> None:
    """Besides the standard library and third-party packages, a module under plugins/builtin/
    imports only the plugin kit (``tollway.plugins.kit`` and ``kit_*``) and other built-ins."""
    mods = modules()
    known = set(mods)
    leaks = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for mod, path in mods.items()
        if mod.startswith("tollway.plugins.builtin")
        for target, line in imports(mod, path, known)
        if not KIT.match(target) and not target.startswith("tollway.plugins.builtin")
    ]
    assert not leaks, "built-in plugins reaching past the kit:\n" + "\n".join(leaks)


def test_no_import_cycles() -> None:
    mods = modules()
    known = set(mods)
    graph = {
        # a package's __init__ re-exporting its modules is not a dependency of those modules
        m: {t for t, _ in imports(m, p, known) if not m.startswith(t + ".")}
        for m, p in mods.items()
    }
    cycles = strongly_connected(graph)
    if (PKG / "proxy" / "runtime.py").exists():  # until the proxy restructure lands
        cycles = [c for c in cycles if set(c) != PROXY_CYCLE]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_the_rule_reader_reads_the_table_format() -> None:
    text = (
        "## Packages\n\n| package | job | may import |\n|---|---|---|\n"
        "| `a` | job with `code` in it | — |\n| `b.c*` | x | `a`, `d.e` |\n\n## Next\n| `z` | x | y |"
    )
    assert read_rules(text) == [Rule("a", ()), Rule("b.c*", ("a", "d.e"))]
