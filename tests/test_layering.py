"""The layering of engramdb, checked from the source: who may import whom, cycles, sizes.

Every ``.py`` under ``engramdb/`` and ``cli/`` is parsed with ``ast``; nothing is imported or
run. The layers and the reasons for them are in docs/architecture.md. A new module needs a row
in ``MODULE_LAYER`` or a package in ``PACKAGE_LAYER`` below (and a line in that doc).

Each failure names ``file:line``, the rule in brackets, and what to do.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Where each importable package lives in the checkout: the CLI installs as engramdb.cli.
SOURCES = {"engramdb": "engramdb", "engramdb.cli": "cli"}

# Lowest first; a module imports only from its own layer or a lower one.
LAYERS = ("foundation", "encoders", "storage", "derived", "engine", "recall", "front", "apps")

# One module -> its layer.
MODULE_LAYER = {
    # The public face re-exports the front door and Pool, so it sits with the apps: an app
    # may use the public API (the CLI does), no lower layer may import it.
    "engramdb": "apps",
    "engramdb.errors": "foundation",
    "engramdb.types": "foundation",
    "engramdb.settings": "foundation",
    "engramdb.content": "foundation",
    "engramdb.progress": "foundation",
    "engramdb.prompt": "foundation",
    "engramdb.version": "foundation",
    "engramdb.store": "front",
    "engramdb.keyed": "front",
    "engramdb.pool": "apps",
    "engramdb.aio": "apps",
    "engramdb.report": "apps",
    "engramdb.reembed": "apps",
    "engramdb.fleet": "apps",
    "engramdb.fleet_ops": "apps",
}
# A package and every module under it -> its layer.
PACKAGE_LAYER = {
    "engramdb.encoders": "encoders",
    "engramdb.storage": "storage",
    "engramdb.derived": "derived",
    "engramdb.engine": "engine",
    "engramdb.recall": "recall",
    "engramdb.transfer": "apps",
    "engramdb.integrations": "apps",
    "engramdb.cli": "apps",
}

# The optional extra: `import engramdb` must work without it.
HEAVY = {"torch", "transformers"}
HEAVY_HOME = "engramdb.encoders.transformers"

MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80  # end_lineno - lineno + 1 of a def (decorators not counted)
STORE_CLASS_LIMIT = 700  # class Store must stay under this many lines

# Names a Store goes by in the apps (``store``, ``mem``, ``self.store``, ``self._store``,
# ``entry.store``): their private attributes are the Store's business.
STORE_NAMES = {"store", "_store", "mem", "memory"}
# Where raw SQL on ``store.catalog`` is not allowed: these read through Store methods and
# ``Store.snapshot()`` (and transfer's import through ``Store.restorer()``).
NO_CATALOG = ("engramdb.cli", "engramdb.report", "engramdb.pool", "engramdb.transfer")

ORDER = " < ".join(LAYERS)


@dataclass
class Module:
    """One parsed source file."""

    name: str
    path: Path  # relative to the checkout, for messages
    tree: ast.Module
    lines: int
    is_package: bool


@dataclass(frozen=True)
class Edge:
    """One import of an engramdb module; ``dst`` is None when no such module exists."""

    src: str
    dst: str | None
    said: str  # what the source imports, for messages
    line: int
    type_checking: bool


@dataclass
class Checkout:
    """The parsed sources, the imports between them and the third-party ones."""

    modules: dict[str, Module]
    edges: list[Edge]
    external: list[tuple[str, int, str]]  # (module, line, top-level package)

    def where(self, name: str, line: int = 1) -> str:
        """``path:line`` of a module, for messages."""
        return f"{self.modules[name].path}:{line}"


def layer_of(name: str) -> str | None:
    """The layer of module ``name`` from the tables above, or None."""
    if name in MODULE_LAYER:
        return MODULE_LAYER[name]
    for package, layer in PACKAGE_LAYER.items():
        if name == package or name.startswith(package + "."):
            return layer
    return None


def analyse(root: Path) -> Checkout:
    """Parse every source file under ``root`` and collect its imports."""
    modules: dict[str, Module] = {}
    for package, folder in SOURCES.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join((package, *(parts[:-1] if is_package else parts)))
            source = path.read_text(encoding="utf-8")
            modules[name] = Module(name, path.relative_to(root), ast.parse(source, str(path)),
                                   len(source.splitlines()), is_package)
    checkout = Checkout(modules, [], [])
    for module in modules.values():
        _collect_imports(checkout, module)
    return checkout


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for stmt in node.body:
                inside.update(id(sub) for sub in ast.walk(stmt))
    return inside


def _imported(module: Module) -> Iterator[tuple[ast.AST, str, str | None]]:
    """(node, imported dotted name, its parent module for a ``from`` import) per name.

    ``from X import n`` yields ``X.n`` with parent ``X``: ``n`` is a submodule when one of
    that name exists, else a name defined in ``X``. Function-local imports count, and so
    do ``importlib.import_module("...")`` and ``__import__("...")`` with a literal name.
    """
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.name if module.is_package else module.name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                yield node, base if alias.name == "*" else f"{base}.{alias.name}", base
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            yield node, node.args[0].value, None


def _collect_imports(checkout: Checkout, module: Module) -> None:
    guarded = _type_checking_nodes(module.tree)
    for node, name, parent in _imported(module):
        line = getattr(node, "lineno", 1)
        top = name.split(".")[0]
        if top == "cli":  # the folder's name is not importable once installed
            checkout.edges.append(Edge(module.name, None, name, line, id(node) in guarded))
        elif top != "engramdb":
            checkout.external.append((module.name, line, top))
        else:
            dst = name if name in checkout.modules else (
                parent if parent in checkout.modules else None)
            checkout.edges.append(Edge(module.name, dst, name, line, id(node) in guarded))


@cache
def this_checkout() -> Checkout:
    """This checkout, parsed once per test session."""
    return analyse(ROOT)


def _report(rule: str, problems: list[str]) -> str:
    return f"{len(problems)} {rule} problem(s):\n" + "\n".join(sorted(problems))


# -- the checks: each returns its problems, one line each ------------------------------------


def layer_problems(checkout: Checkout) -> list[str]:
    """Modules without a layer, imports of modules that do not exist, imports that go up."""
    problems = []
    for name in checkout.modules:
        if layer_of(name) is None:
            problems.append(
                f"{checkout.where(name)}: [layer table] {name} belongs to no layer: add it to "
                "MODULE_LAYER or PACKAGE_LAYER in tests/test_layering.py and to "
                "docs/architecture.md")
    for edge in checkout.edges:
        at = checkout.where(edge.src, edge.line)
        if edge.dst is None:
            problems.append(
                f"{at}: [layers] imports {edge.said}, which is no module of engramdb/ or cli/ "
                "(the CLI installs as engramdb.cli)")
            continue
        src, dst = layer_of(edge.src), layer_of(edge.dst)
        if src is None or dst is None:
            continue  # reported above
        if LAYERS.index(dst) > LAYERS.index(src):
            guard = " (under TYPE_CHECKING)" if edge.type_checking else ""
            problems.append(
                f"{at}: [layers] {edge.src} ({src}) imports {edge.dst} ({dst}){guard}; "
                f"imports go to the same or a lower layer: {ORDER}")
    return problems


def cycle_problems(checkout: Checkout) -> list[str]:
    """One cycle per strongly connected group of engramdb modules (Tarjan)."""
    first: dict[tuple[str, str], Edge] = {}
    graph: dict[str, list[str]] = {name: [] for name in checkout.modules}
    for edge in sorted(checkout.edges, key=lambda e: e.line):
        if edge.dst is not None and (edge.src, edge.dst) not in first:
            first[edge.src, edge.dst] = edge
            graph[edge.src].append(edge.dst)
    problems = []
    for group in _strongly_connected(graph):
        start = min(group)
        if len(group) == 1 and start not in graph[start]:
            continue
        path = _path_back(graph, group, start)
        hops = " -> ".join(
            f"{b} ({checkout.where(a, first[a, b].line)})" for a, b in zip(path, path[1:]))
        problems.append(f"{checkout.where(start, first[start, path[1]].line)}: [cycle] "
                        f"{start} -> {hops}; break it by moving the shared part down a layer")
    return problems


def _strongly_connected(graph: dict[str, list[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while (member := stack.pop()) != node:
                group.add(member)
            groups.append(group | {node})

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _path_back(graph: dict[str, list[str]], group: set[str], start: str) -> list[str]:
    """A shortest import path from ``start`` back to itself inside ``group`` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in graph[node]:
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt in group and nxt not in came_from:
                    came_from[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"{start} is in a cycle with no path back")


def heavy_problems(checkout: Checkout) -> list[str]:
    """torch and transformers outside the transformers encoder."""
    return [
        f"{checkout.where(name, line)}: [torch/transformers] {name} imports {top}; only "
        f"{checkout.modules[HEAVY_HOME].path if HEAVY_HOME in checkout.modules else HEAVY_HOME} "
        "may (they are an optional extra the core store must not need)"
        for name, line, top in checkout.external
        if top in HEAVY and name != HEAVY_HOME
    ]


def module_size_problems(checkout: Checkout) -> list[str]:
    """Modules over MAX_MODULE_LINES lines."""
    return [
        f"{m.path}:1: [module size] {m.lines} lines, over {MAX_MODULE_LINES}: split it by concern"
        for m in checkout.modules.values() if m.lines > MAX_MODULE_LINES
    ]


def function_size_problems(checkout: Checkout) -> list[str]:
    """Functions and methods (nested ones too) over MAX_FUNCTION_LINES lines."""
    problems = []
    for module in checkout.modules.values():
        for qualname, node in _functions(module.tree, ""):
            size = node.end_lineno - node.lineno + 1
            if size > MAX_FUNCTION_LINES:
                problems.append(f"{module.path}:{node.lineno}: [function size] {qualname} is "
                                f"{size} lines, over {MAX_FUNCTION_LINES}")
    return problems


def _functions(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
    """Every def (methods and nested ones too) with its dotted qualified name."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + child.name
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from _functions(child, name + ".")
        else:
            yield from _functions(child, prefix)


def store_class_problems(checkout: Checkout) -> list[str]:
    """class Store at STORE_CLASS_LIMIT lines or more."""
    module = checkout.modules.get("engramdb.store")
    classes = [n for n in module.tree.body
               if isinstance(n, ast.ClassDef) and n.name == "Store"] if module else []
    if not classes:
        return ["engramdb/store.py:1: [Store size] class Store not found: point this check at "
                "where the Store class lives now"]
    node = classes[0]
    size = node.end_lineno - node.lineno + 1
    if size < STORE_CLASS_LIMIT:
        return []
    return [f"{module.path}:{node.lineno}: [Store size] class Store is {size} lines; it must stay "
            f"under {STORE_CLASS_LIMIT}: move the work into engine/ and recall/"]


def private_store_problems(checkout: Checkout) -> list[str]:
    """An app reaching into a Store: ``store._x``, ``getattr(store, "_x")``, CLI catalog SQL."""
    problems = []
    for module in checkout.modules.values():
        if layer_of(module.name) != "apps":
            continue
        no_catalog = any(module.name == p or module.name.startswith(p + ".") for p in NO_CATALOG)
        for node in ast.walk(module.tree):
            owner, attr = None, None
            if isinstance(node, ast.Attribute):
                owner, attr = _last_name(node.value), node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str)):
                owner, attr = _last_name(node.args[0]), node.args[1].value
            if owner not in STORE_NAMES:
                continue
            at = f"{module.path}:{node.lineno}"
            if attr.startswith("_") and not attr.startswith("__"):
                problems.append(f"{at}: [Store internals] {module.name} uses {owner}.{attr}, a "
                                "private attribute of Store: use (or add) a public Store method")
            elif attr == "catalog" and no_catalog:
                problems.append(f"{at}: [Store internals] {module.name} runs SQL on "
                                f"{owner}.catalog: use Store methods or Store.snapshot()")
    return problems


def _last_name(node: ast.AST) -> str | None:
    """``store`` for ``store``, ``self.store`` and ``entry.store``; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


# -- the tests on this checkout --------------------------------------------------------------


def test_every_module_has_a_layer_and_imports_go_down() -> None:
    problems = layer_problems(this_checkout())
    assert not problems, _report("layering", problems)


def test_no_import_cycles() -> None:
    problems = cycle_problems(this_checkout())
    assert not problems, _report("import cycle", problems)


def test_torch_and_transformers_only_in_the_transformers_encoder() -> None:
    assert HEAVY_HOME in this_checkout().modules, f"{HEAVY_HOME} moved: update HEAVY_HOME"
    problems = heavy_problems(this_checkout())
    assert not problems, _report("heavy import", problems)


def test_module_sizes() -> None:
    problems = module_size_problems(this_checkout())
    assert not problems, _report("module size", problems)


def test_function_sizes() -> None:
    problems = function_size_problems(this_checkout())
    assert not problems, _report("function size", problems)


def test_store_class_size() -> None:
    problems = store_class_problems(this_checkout())
    assert not problems, _report("Store size", problems)


def test_apps_use_only_the_public_store_api() -> None:
    problems = private_store_problems(this_checkout())
    assert not problems, _report("Store internals", problems)


# -- the checks themselves, on a small made-up tree -------------------------------------------

_FAKE = {
    "engramdb/__init__.py": "from engramdb.store import Store\n",
    # Function-local, `from package import submodule`: an upward import and a cycle.
    "engramdb/errors.py": "def f():\n    from engramdb import store\n",
    "engramdb/store.py": (
        "from engramdb.errors import E\n"
        "class Store:\n" + "    x = 1\n" * 699 + "def long():\n" + "    pass\n" * 80 + "#\n" * 20
    ),
    "engramdb/shiny.py": "",
    "engramdb/derived/__init__.py": "",
    "engramdb/derived/a.py": "from . import b\n",
    "engramdb/derived/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from engramdb.derived.a import X\n"),
    "engramdb/storage/__init__.py": "",
    "engramdb/storage/cat.py": "import engramdb.derived.a\nimport engramdb.nothere\n",
    "engramdb/encoders/__init__.py": "",
    "engramdb/encoders/transformers.py": "import torch\n",
    "engramdb/report.py": "def f(self):\n    self._store._check_open()\n    return self._cache\n",
    "engramdb/derived/c.py": "def f(self):\n    return self.store.catalog\n",  # not an app
    "cli/__init__.py": "",
    "cli/main.py": (
        "import importlib\nimport cli.queries\nfrom .queries import q\nimport transformers.models\n"
        "def run(store, mem):\n    store._write_lock\n    mem.catalog.query('x')\n"
        "    getattr(store, '_closed')\n    importlib.import_module('torch')\n"
    ),
    "cli/queries.py": "import engramdb\nfrom engramdb.store import Store\n",
}


def _fake(tmp_path: Path) -> Checkout:
    for rel, text in _FAKE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return analyse(tmp_path)


def test_imports_resolve_like_python(tmp_path: Path) -> None:
    edges = {(e.src, e.dst, e.type_checking) for e in _fake(tmp_path).edges}
    assert ("engramdb.errors", "engramdb.store", False) in edges  # from package import module
    assert ("engramdb.derived.a", "engramdb.derived.b", False) in edges  # relative
    assert ("engramdb.derived.b", "engramdb.derived.a", True) in edges  # a name in a module
    assert ("engramdb.cli.main", "engramdb.cli.queries", False) in edges  # CLI's own package
    assert ("engramdb.cli.queries", "engramdb", False) in edges  # the public face


def test_the_checks_catch_what_they_should(tmp_path: Path) -> None:
    fake = _fake(tmp_path)
    layers = layer_problems(fake)
    assert len(layers) == 5, layers
    assert any("engramdb/shiny.py:1: [layer table] engramdb.shiny" in p for p in layers)
    assert any("engramdb/errors.py:2: [layers] engramdb.errors (foundation) imports "
               "engramdb.store (front)" in p for p in layers)
    assert any("storage/cat.py:1: [layers] engramdb.storage.cat (storage) imports "
               "engramdb.derived.a (derived)" in p for p in layers)
    assert any("storage/cat.py:2: [layers] imports engramdb.nothere" in p for p in layers)
    assert any("cli/main.py:2: [layers] imports cli.queries" in p for p in layers)

    cycles = cycle_problems(fake)
    assert len(cycles) == 2, cycles
    assert any("engramdb.derived.a -> engramdb.derived.b (engramdb/derived/a.py:1) -> "
               "engramdb.derived.a (engramdb/derived/b.py:3)" in p for p in cycles)
    assert any("engramdb.errors -> engramdb.store" in p for p in cycles)

    heavy = heavy_problems(fake)
    assert sorted(p.split(": [")[0] for p in heavy) == ["cli/main.py:4", "cli/main.py:9"], heavy

    assert [p.split(" [")[0] for p in module_size_problems(fake)] == ["engramdb/store.py:1:"]
    functions = function_size_problems(fake)
    assert len(functions) == 1 and "long is 81 lines" in functions[0], functions
    assert "class Store is 700 lines" in store_class_problems(fake)[0]

    private = private_store_problems(fake)
    assert sorted(p.split(": [")[0] for p in private) == [
        "cli/main.py:6", "cli/main.py:7", "cli/main.py:8", "engramdb/report.py:2"], private


def test_every_package_is_installed() -> None:
    """pyproject's package list names every package of the tree (a wheel would lack one)."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"engramdb." + ".".join(p.parent.relative_to(ROOT / "engramdb").parts)
             for p in (ROOT / "engramdb").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found} | {"engramdb.cli"}
    assert found <= listed, f"add {sorted(found - listed)} to pyproject.toml's packages"
