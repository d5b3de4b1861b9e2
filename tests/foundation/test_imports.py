"""No import cycles in src/xr0: every `import` / `from ... import` naming an xr0 module, at any depth (a function-level
import is a cycle deferred, not removed), is an edge; the graph must be acyclic."""
import ast
from pathlib import Path

import xr0

PACKAGE = Path(xr0.__file__).parent


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The xr0 modules `name` (at `path`) imports. `from a import b` is module a.b when that exists, else a."""
    def existing(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names] or [base]
        for target in targets:
            if target.split(".")[0] == "xr0" and (hit := existing(target)) and hit != name:
                found.add(hit)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_src_xr0_has_no_import_cycles():
    known = modules(PACKAGE)
    assert len(known) > 50  # the walk found the package
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert graph["xr0.run"] >= {"xr0.config"}  # edges are read (function-level ones too: checked below)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_function_level_imports_count_and_cycles_are_found(tmp_path):
    pkg = tmp_path / "xr0"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from xr0 import b\n")
    (pkg / "b.py").write_text("def f():\n    from xr0.sub.c import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\n")
    known = modules(pkg)
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert graph["xr0.b"] == {"xr0.sub.c"} and graph["xr0.sub.c"] == {"xr0.a"}
    assert find_cycle(graph) == ["xr0.a", "xr0.b", "xr0.sub.c", "xr0.a"]
    (pkg / "sub" / "c.py").write_text("import os\n")
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert find_cycle(graph) is None
