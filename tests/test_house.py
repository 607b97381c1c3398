"""The shape of the package itself: no import cycles, small modules, no reach into the tests.

Pure unit tests: they read the source files of `dispatch_engine` with `ast` and start nothing.

What counts as an import of module A by module B: an `import`/`from … import` statement that
runs when B is imported, so one at module level, in a class body, or under `if`/`try`/`with`
at that level. Not counted:
- imports under `if TYPE_CHECKING:` (they never run);
- imports inside a function body: they run later, once every module is loaded, and are the
  documented way to defer an optional or heavy dependency. A function-local import used to
  dodge a cycle is still a smell, but this test does not try to tell the two apart;
- the parent packages Python initialises on the way (`import a.b.c` counts as an edge to
  `a.b.c` only): a package's `__init__` importing its own submodules, which import their
  siblings, is how packages are built, not a cycle.
`from X import name` is an edge to the module `X.name` when that is a module of the package,
else to `X`.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dispatch_engine"
MAX_LINES = 400  # docs/architecture.md, "Start-up and the package's layout"


@dataclass(frozen=True)
class Module:
    name: str  # dispatch_engine.web.api
    path: Path
    is_package: bool  # an __init__.py

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def package_modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Module]:
    """Every module of `package` (a folder under `root`), by its absolute name."""
    found: dict[str, Module] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(
    body: list[ast.stmt], *, module_level_only: bool
) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of `body` that run when it runs (see the module docstring), or
    with `module_level_only=False` every one, in functions and TYPE_CHECKING blocks too."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            if not module_level_only:
                yield from _import_statements(node.body, module_level_only=False)
            yield from _import_statements(node.orelse, module_level_only=module_level_only)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if not module_level_only:
                yield from _import_statements(node.body, module_level_only=False)
        else:  # class bodies, if/try/with/for/while/match: they run with the module
            nested: list[ast.stmt] = []
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, field, None) or ():
                    # except handlers and match cases hold their statements one level down
                    is_block = isinstance(child, ast.ExceptHandler | ast.match_case)
                    nested += child.body if is_block else [child]
            yield from _import_statements(nested, module_level_only=module_level_only)


def _origin(node: ast.ImportFrom, module: Module) -> str:
    """The absolute name of the module a `from … import` reads from."""
    if not node.level:
        return node.module or ""
    base = module.package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(
    module: Module, known: Collection[str], *, module_level_only: bool = True
) -> set[str]:
    """Absolute names of the modules `module` imports: `from X import a` is `X.a` when that is
    one of the `known` modules, else `X`."""
    tree = ast.parse(module.path.read_text(), str(module.path))
    names: set[str] = set()
    for node in _import_statements(tree.body, module_level_only=module_level_only):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        origin = _origin(node, module)
        for alias in node.names:
            name = f"{origin}.{alias.name}"
            names.add(name if name in known else origin)
    return names


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at import time."""
    return {
        name: (imported_modules(module, modules) & modules.keys()) - {name}
        for name, module in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> b -> … -> a) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_path_through(graph, group) for group in groups]


def _path_through(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle from the group's first module back to itself (breadth first)."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {group}")


def write_package(root: Path, files: dict[str, str]) -> dict[str, set[str]]:
    """The import graph of a package `pkg` made of `files` (relative path -> source)."""
    for relative, source in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return import_graph(package_modules(root, "pkg"))


def test_the_checker_finds_a_cycle_through_relative_and_absolute_imports(tmp_path: Path) -> None:
    graph = write_package(
        tmp_path,
        {
            "__init__.py": "from .a import thing\n",
            "a.py": "from . import b\n",
            "b.py": "try:\n    from .sub.c import x\nexcept ImportError:\n    pass\n",
            "sub/__init__.py": "",
            "sub/c.py": "class C:\n    import pkg.a\n",
        },
    )
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_the_checker_leaves_out_type_checking_and_function_imports(tmp_path: Path) -> None:
    graph = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .b import B\n",
            "b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from .a import A\nelse:\n    from . import c\n"
                "def later():\n    from .a import A\n"
            ),
            "c.py": "",
        },
    )
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": set()}
    assert cycles(graph) == []


def test_no_import_cycle_among_the_package_modules() -> None:
    found = cycles(import_graph(package_modules()))
    assert not found, "import cycles (module-level imports):\n" + "\n".join(
        " -> ".join(cycle) for cycle in found
    )


def test_no_module_over_the_line_limit() -> None:
    over = {
        str(module.path.relative_to(ROOT)): lines
        for module in package_modules().values()
        if (lines := len(module.path.read_text().splitlines())) > MAX_LINES
    }
    assert not over, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{path} ({lines})" for path, lines in sorted(over.items())
    )


def imports_of_the_tests(modules: dict[str, Module]) -> dict[str, list[str]]:
    """Module -> the `tests` modules it imports anywhere (functions, TYPE_CHECKING too)."""
    reaching: dict[str, list[str]] = {}
    for name, module in modules.items():
        found = imported_modules(module, modules, module_level_only=False)
        if tests := sorted(n for n in found if n == "tests" or n.startswith("tests.")):
            reaching[name] = tests
    return reaching


def test_the_checker_finds_an_import_of_the_tests_in_a_function(tmp_path: Path) -> None:
    write_package(tmp_path, {"__init__.py": "", "a.py": "def f():\n    import tests.helpers\n"})
    assert imports_of_the_tests(package_modules(tmp_path, "pkg")) == {"pkg.a": ["tests.helpers"]}


def test_the_package_never_imports_the_tests() -> None:
    """Not at module level, nor in a function, nor for type checking: an installed wheel has
    no `tests` package."""
    reaching = imports_of_the_tests(package_modules())
    assert not reaching, f"package modules importing the tests: {reaching}"
