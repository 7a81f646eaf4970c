"""No import cycle among the modules of src/netshrink (docs/architecture.md, "Dependency
direction"), counting imports inside functions too: a function-level import that closes a cycle
only hides it from Python's start-up, not from the design.

How the graph is read, with `ast` (nothing is imported):

- every `import` and `from ... import` anywhere in a module, at module level or inside
  functions, methods and `try` blocks; only the body of an `if TYPE_CHECKING:` block is skipped
  (never executed, so it orders nothing; its `else:` branch counts);
- relative imports are resolved against the importing module's package (an `__init__.py` is its
  own package);
- `from package import name` is an edge to the submodule `package.name` when that is a module,
  else to the package's `__init__`; `import a.b.c` and `from a.b.c import x` are edges to
  `a.b.c`;
- importing a module also runs the `__init__` of each package above it: that is an edge too,
  except to the packages that contain the importer, which Python has already started before the
  importer runs. So a package `__init__` importing its own submodules is no cycle, while a
  submodule that imports its package back (`from . import name` of a name the `__init__`
  defines, or `from netshrink import ...`) is one, as it is at run time.
"""

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "netshrink"


def module_names(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under `src`."""
    names = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST):
    """Every Import / ImportFrom under `node`, skipping `if TYPE_CHECKING:` bodies."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children = node.orelse
    else:
        children = ast.iter_child_nodes(node)
    for child in children:
        yield from _import_nodes(child)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known) -> set[str]:
    """The modules of `known` that one import statement names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level:
        base = module.split(".")
        if not is_package:
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        if node.module:
            base += node.module.split(".")
        base = ".".join(base)
    else:
        base = node.module
    found = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            found.add(sub)
        elif base in known:
            found.add(base)
    return found


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (see the module docstring)."""
    known = module_names(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        started = {name, *_parents(name)}  # already being imported when `name` runs
        edges = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, name, is_package, known):
                edges.add(target)
                edges.update(p for p in _parents(target) if p in known and p not in started)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_netshrink_has_no_import_cycle():
    graph = import_graph(SRC, PACKAGE)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_reads_what_the_code_imports():
    graph = import_graph(SRC, PACKAGE)
    assert "netshrink.replay" in graph["netshrink.checkpoint"]  # from .replay import ...
    assert "netshrink.prune.surgery" in graph["netshrink.replay"]  # absolute, a submodule
    assert "netshrink.prune" in graph["netshrink.replay"]  # ... runs prune/__init__
    assert "netshrink.prune" not in graph["netshrink.prune.filters"]  # its own package
    assert "netshrink.export.onnx" in graph["netshrink.deploy"]  # inside a function
    assert "netshrink.codec.summary" not in graph["netshrink.report.plots"]  # TYPE_CHECKING only
    assert "netshrink.codec.api" in graph["netshrink.codec"]  # a package imports its modules


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    "files, cycle",
    [
        (  # a function-level import closes the cycle
            {"p/__init__.py": "", "p/a.py": "from .b import f\n", "p/b.py": "def f():\n"
             "    from p.a import g\n"},
            ["p.a", "p.b", "p.a"],
        ),
        (  # a submodule importing a name from its package's __init__
            {"p/__init__.py": "from .a import x\n", "p/a.py": "from . import y\nx = 1\n"},
            ["p", "p.a", "p"],
        ),
        (  # importing p.q.m runs p/q/__init__, which imports back
            {"p/__init__.py": "", "p/a.py": "import p.q.m\n", "p/q/__init__.py":
             "from ..a import z\n", "p/q/m.py": ""},
            ["p.a", "p.q", "p.a"],
        ),
        (  # a package importing its submodules, which import each other: no cycle
            {"p/__init__.py": "from .a import x\nfrom .b import y\n", "p/a.py": "x = 1\n",
             "p/b.py": "from . import a\nfrom .a import x\ny = x\n"},
            None,
        ),
        (  # only TYPE_CHECKING closes it: skipped
            {"p/__init__.py": "", "p/a.py": "from .b import f\n", "p/b.py":
             "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import g\n"},
            None,
        ),
    ],
)  # fmt: skip
def test_cycles_are_found_in_a_made_up_package(tmp_path, files, cycle):
    _write(tmp_path, files)
    assert find_cycle(import_graph(tmp_path, "p")) == cycle


if __name__ == "__main__":  # python tests/test_import_graph.py: print the graph
    for module, targets in sorted(import_graph(SRC, PACKAGE).items()):
        print(module, "->", ", ".join(sorted(targets)), file=sys.stdout)
