#!/usr/bin/env python
"""`make mutants`: mutation testing of xr0's critical modules, on demand (never part of `make test` or CI).

Each mutant is one small change to one operator, constant or in-place write inside the functions listed in
tools/mutants.toml (the code whose behaviour the paper's recipe depends on); the tests listed beside them must
fail on it. A mutant they do not notice ("survivor") is either a missing test or an equivalent change; every
survivor must carry a one-line explanation in mutants.toml, and the run lists the ones that do not.

How it runs: this process imports the heavy third-party libraries once, then forks one child per mutant. The
child puts a finder first on `sys.meta_path` that serves the mutated module (compiled from the edited syntax
tree, so its line numbers stay those of the file) and runs the target's tests with `pytest.main`; nothing on
disk changes, so a run never leaves a mutant behind, even when killed. Tests that start a subprocess would run
the unmutated code: list only in-process tests.

    .venv/bin/python tools/mutants.py                 # every target
    .venv/bin/python tools/mutants.py executor rtc    # targets whose name contains a word
    .venv/bin/python tools/mutants.py --list          # the mutants, without running anything
"""
from __future__ import annotations

import argparse
import ast
import copy
import importlib.abc
import importlib.util
import os
import signal
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).with_name("mutants.toml")
PRELOAD = ("numpy", "torch", "lightning", "transformers", "PIL.Image", "webdataset", "omegaconf", "yaml", "hypothesis",
           "pytest", "msgpack", "websockets", "safetensors.torch", "matplotlib.pyplot")

BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
          ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Pow: "**", ast.Mod: "%",
          ast.BitAnd: "&", ast.BitOr: "|", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
          ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.And: "and",
          ast.Or: "or", ast.Not: "not", ast.USub: "-", ast.Invert: "~"}
CALLS = {"min": "max", "max": "min", "amin": "amax", "amax": "amin", "any": "all", "all": "any",
         "argmin": "argmax", "argmax": "argmin", "clamp_min": "clamp_max", "clamp_max": "clamp_min",
         "ones_like": "zeros_like", "zeros_like": "ones_like", "ones": "zeros", "zeros": "ones", "tril": "triu",
         "triu": "tril", "floor": "ceil", "ceil": "floor"}
QUIET_CALLS = {"warn", "warning", "info", "debug", "error", "print"}  # messages, not behaviour
SMALL = 1e-3  # float constants below this are tolerances (an eps, a clamp floor): doubling them is not a mutant


# ---------------------------------------------------------------- configuration
@dataclass
class Target:
    name: str
    file: Path
    module: str
    functions: list[str]  # qualified names ("Class.method", "function", "CONSTANT"); ["*"]: the whole module
    tests: list[str]  # pytest node ids or files, relative to the repository root
    match: str | None = None  # only mutate lines that contain this text (one call inside a long function)
    explained: list[dict] = field(default_factory=list)  # {line: source text, mutation: what, why: one line}


def load_targets(path: Path = CONFIG) -> list[Target]:
    cfg = tomllib.loads(path.read_text())
    explained = cfg.get("explained", [])
    out = []
    for t in cfg["target"]:
        file = ROOT / t["file"]
        out.append(Target(t["name"], file, t["module"], list(t["functions"]), list(t["tests"]), t.get("match"),
                          [e for e in explained if e["file"] == t["file"]]))
    return out


# ---------------------------------------------------------------- mutants
@dataclass
class Mutant:
    target: Target
    line: int
    what: str  # "`+` -> `-`"
    source_line: str
    tree: ast.Module

    @property
    def where(self) -> str:
        return f"{self.target.file.relative_to(ROOT)}:{self.line}"

    def explanation(self) -> str | None:
        for e in self.target.explained:
            if e["line"].strip() == self.source_line.strip() and e["mutation"] == self.what:
                return e["why"]
        return None


def _children(node: ast.AST):
    """(field, index or None, child) of a node, in source order."""
    for name, value in ast.iter_fields(node):
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ast.AST):
                    yield name, i, item
        elif isinstance(value, ast.AST):
            yield name, None, value


def _excluded(node: ast.AST, fieldname: str) -> bool:
    """Subtrees that are messages or types, not behaviour: raise statements, asserts, f-strings, annotations and
    calls that only report (warnings, logging, print)."""
    if isinstance(node, ast.Raise | ast.Assert | ast.JoinedStr) or fieldname in ("annotation", "returns"):
        return True
    if isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        return name in QUIET_CALLS
    return False


def _walk(tree: ast.Module, functions: list[str]):
    """Yield (parent, field, index, node) for every node inside the selected functions, in source order."""
    everything = functions == ["*"]

    def visit(node, qual, inside):
        for fieldname, idx, child in _children(node):
            if _excluded(child, fieldname):
                continue
            q, ins = qual, inside
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                q = f"{qual}.{child.name}" if qual else child.name
                ins = inside or everything or q in functions
            elif isinstance(child, ast.Assign) and not qual:  # a module constant the functions use, named as well
                ins = inside or any(isinstance(t, ast.Name) and t.id in functions for t in child.targets)
            if ins:
                yield node, fieldname, idx, child
            yield from visit(child, q, ins)

    yield from visit(tree, "", everything)


def _mutations(node: ast.AST, parent: ast.AST | None = None):
    """(description, function that edits a copy of the node in place or returns its replacement). A constant passed
    as a keyword argument is described with its keyword (`mmap=True` -> `mmap=False`)."""
    kw = f"{parent.arg}=" if isinstance(parent, ast.keyword) and parent.arg else ""
    if isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in BINOPS:
        new = BINOPS[type(node.op)]
        yield f"`{SYMBOL[type(node.op)]}` -> `{SYMBOL[new]}`", lambda n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in CMPOPS:
                new = CMPOPS[type(op)]
                yield (f"`{SYMBOL[type(op)]}` -> `{SYMBOL[new]}`",
                       lambda n, i=i, new=new: n.ops.__setitem__(i, new()))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield f"`{SYMBOL[type(node.op)]}` -> `{SYMBOL[new]}`", lambda n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub | ast.Invert):
        if not (isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)):  # -1 is a number
            yield f"`{SYMBOL[type(node.op)]}` removed", lambda n: n.operand
    elif isinstance(node, ast.Constant) and not isinstance(node.value, str | bytes) and node.value is not None:
        v = node.value
        if isinstance(v, bool):
            yield f"`{kw}{v}` -> `{kw}{not v}`", lambda n: setattr(n, "value", not n.value)
        elif isinstance(v, int):
            yield f"`{kw}{v}` -> `{kw}{v + 1}`", lambda n: setattr(n, "value", n.value + 1)
        elif isinstance(v, float) and (v == 0.0 or abs(v) >= SMALL):
            new = 1.0 if v == 0.0 else v * 2
            yield f"`{kw}{v!r}` -> `{kw}{new!r}`", lambda n, new=new: setattr(n, "value", new)
    elif isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if name in CALLS:
            new = CALLS[name]
            attr = "attr" if isinstance(f, ast.Attribute) else "id"
            yield f"`{name}(` -> `{new}(`", lambda n, new=new, attr=attr: setattr(n.func, attr, new)
        if name == "where" and len(node.args) == 3:
            yield "`where(c, a, b)` -> `where(c, b, a)`", lambda n: n.args.__setitem__(slice(1, 3), n.args[2:0:-1])
    elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Subscript):
        yield "in-place write removed", lambda n: ast.copy_location(ast.Pass(), n)


def generate(target: Target) -> list[Mutant]:
    source = target.file.read_text()
    lines = source.splitlines()
    base = ast.parse(source, str(target.file))
    nodes = list(_walk(base, target.functions))
    if not nodes:
        raise SystemExit(f"mutants.toml: target {target.name}: none of {target.functions} is in {target.file}")
    sites = [(k, j, desc) for k, (parent, _, _, node) in enumerate(nodes)
             for j, (desc, _) in enumerate(_mutations(node, parent))
             if target.match is None or target.match in lines[node.lineno - 1]]
    out = []
    for k, j, desc in sites:
        tree = copy.deepcopy(base)
        parent, fieldname, idx, node = list(_walk(tree, target.functions))[k]
        _, edit = list(_mutations(node, parent))[j]
        replaced = edit(node)
        if replaced is not None:
            if idx is None:
                setattr(parent, fieldname, replaced)
            else:
                getattr(parent, fieldname)[idx] = replaced
        ast.fix_missing_locations(tree)
        out.append(Mutant(target, node.lineno, desc, lines[node.lineno - 1], tree))
    return out


# ---------------------------------------------------------------- running
class MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module from a code object instead of its file (first on sys.meta_path in the child)."""

    def __init__(self, name: str, path: Path, code):
        self.name, self.path, self.code = name, path, code

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        package = [str(self.path.parent)] if self.path.name == "__init__.py" else None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self,
                                                      submodule_search_locations=package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.code, module.__dict__)  # noqa: S102 - the mutated module, compiled from our own source


def start(target: Target, tree: ast.Module, log: Path) -> int:
    """Fork a child that runs the target's tests against `tree`; returns its pid."""
    code = compile(tree, str(target.file), "exec")
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: never returns
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.meta_path.insert(0, MutantFinder(target.module, target.file, code))
        os.environ["OMP_NUM_THREADS"] = "1"  # for any subprocess a test starts
        if "torch" in sys.modules:  # one intra-op thread: on shared cores more threads only oversubscribe them
            sys.modules["torch"].set_num_threads(1)
        import pytest

        os.chdir(ROOT)
        rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", *target.tests])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(rc))
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not fall back into the parent's loop
        import traceback

        traceback.print_exc()
        os._exit(70)


def wait(pid: int, deadline: float) -> int | None:
    """The child's exit code, or None when it ran past the deadline (then it is killed with its group)."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None
        time.sleep(0.05)


def run_target(target: Target, mutants: list[Mutant], logs: Path, jobs: int, bar) -> list[tuple[Mutant, str]]:
    """Baseline first (the tests must pass unmutated), then every mutant; returns (mutant, outcome) pairs with
    outcome `killed`, `timeout` (counted as killed: the tests noticed by hanging) or `survived`."""
    t0 = time.monotonic()
    base = start(target, ast.parse(target.file.read_text()), logs / f"{target.name}-baseline.log")
    rc = wait(base, t0 + 1800)
    if rc != 0:
        raise SystemExit(f"{target.name}: the tests fail without any mutant (exit {rc}); see "
                         f"{logs / f'{target.name}-baseline.log'}")
    budget = 3 * (time.monotonic() - t0) + 30  # a mutant that makes the tests 3x slower is hanging
    results: list[tuple[Mutant, str]] = []
    running: dict[int, tuple[Mutant, float]] = {}
    queue = list(enumerate(mutants))
    while queue or running:
        while queue and len(running) < jobs:
            i, m = queue.pop(0)
            running[start(target, m.tree, logs / f"{target.name}-{i:03d}.log")] = (m, time.monotonic() + budget)
        for pid, (m, deadline) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done and time.monotonic() <= deadline:
                continue
            rc = os.waitstatus_to_exitcode(status) if done else wait(pid, 0)
            del running[pid]
            results.append((m, "timeout" if rc is None else "survived" if rc == 0 else "killed"))
            bar.update(1)
        time.sleep(0.05)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help="run only targets whose name contains one of these words")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    ap.add_argument("--logs", default=str(ROOT / "runs" / "mutants"), help="one pytest log per mutant here")
    args = ap.parse_args(argv)
    targets = [t for t in load_targets() if not args.only or any(w in t.name for w in args.only)]
    if not targets:
        raise SystemExit(f"no target matches {args.only}; targets: {[t.name for t in load_targets()]}")
    plan = [(t, generate(t)) for t in targets]
    if args.list:
        for t, ms in plan:
            for m in ms:
                print(f"{t.name:12s} {m.where:48s} {m.what:34s} {m.source_line.strip()}")
        print(f"{sum(len(ms) for _, ms in plan)} mutants")
        return 0
    for mod in PRELOAD:  # once here, not once per mutant: each child starts with them imported
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    from tqdm import tqdm

    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    with tqdm(total=sum(len(ms) for _, ms in plan), desc="mutants", unit="mutant") as bar:
        for t, ms in plan:
            bar.set_postfix_str(t.name)
            results += run_target(t, ms, logs, args.jobs, bar)
    return report(plan, results)


def report(plan, results) -> int:
    print()
    total_killed = 0
    for t, ms in plan:
        mine = [(m, o) for m, o in results if m.target is t]
        killed = sum(o != "survived" for _, o in mine)
        total_killed += killed
        print(f"{t.name:12s} {killed:4d}/{len(mine):<4d} killed ({100 * killed / max(len(mine), 1):5.1f}%)")
    n = len(results)
    print(f"{'all':12s} {total_killed:4d}/{n:<4d} killed ({100 * total_killed / max(n, 1):5.1f}%)")
    survivors = [m for m, o in results if o == "survived"]
    unexplained = [m for m in survivors if m.explanation() is None]
    if survivors:
        print("\nsurvivors:")
        for m in survivors:
            why = m.explanation()
            print(f"  {m.where:44s} {m.what:30s} {m.source_line.strip()}")
            print(f"      {'why: ' + why if why else 'UNEXPLAINED: add a test that kills it, or explain it in tools/mutants.toml'}")
    print(f"\nkill rate {100 * total_killed / max(n, 1):.1f}% ({total_killed}/{n}); "
          f"{len(survivors)} survivors, {len(unexplained)} unexplained")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
