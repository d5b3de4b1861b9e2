"""Recipes: load (inheritance + CLI dotlist + interpolation) → validate → build.

A recipe is OmegaConf YAML. Components are dicts with a `name` key, placed under a *slot* key that
says which registry they come from (`head: {name: dit, depth: 16}`). Validation walks the whole tree
and binds every component's kwargs against its builder's signature before any work starts, so every
mistake is reported with the YAML path of the bad key. Values are checked against the builders' annotations
(int, float, bool, str, Literal, Optional/Union, lists, dicts, dataclass fields), and `trainer:` keys against
Lightning's Trainer, so `depth: "two"` is caught here rather than as a TypeError minutes into `fit`.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xr0 import registry as R

# slot key → registry. A component dict (has `name`) under one of these keys, or in a list under one,
# is looked up there. Keys ending in `_sampler`/`_mask`/`_head` map by suffix.
SLOTS: dict[str, R.Registry] = {
    "backbone": R.BACKBONES,
    "head": R.HEADS,
    "mask": R.MASKS,
    "sampler": R.SAMPLERS,
    "embodiment": R.EMBODIMENTS,
    "stage": R.STAGES,
    "data": R.DATASETS,
    "sources": R.DATASETS,
}
SUFFIXES = {"_backbone": R.BACKBONES, "_head": R.HEADS, "_mask": R.MASKS, "_sampler": R.SAMPLERS}
TOP_LEVEL = {"inherit", "stage", "data", "trainer", "run", "embodiment", "description"}
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


@dataclasses.dataclass
class RunConfig:
    """The `run:` section: where a run writes, how it checkpoints, how it survives bad steps (used by xr0.run)."""

    out_dir: str = "runs/${stage.name}"
    seed: int = 0
    checkpoint_every_n_steps: int = 500
    keep_last_k: int = 3
    tensorboard: bool = True
    max_nonfinite_steps: int = 5  # consecutive skipped non-finite steps before the run stops
    activation_checkpointing: bool = False  # with trainer.strategy=fsdp: checkpoint each wrapped block


class RecipeError(ValueError):
    """A recipe problem, with the YAML path of the bad key in the message (`problems`: one line each)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


def slot_registry(key: str) -> R.Registry | None:
    if key in SLOTS:
        return SLOTS[key]
    for suffix, reg in SUFFIXES.items():
        if key.endswith(suffix):
            return reg
    return None


# ---------------------------------------------------------------- load
def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise RecipeError(f"{path}: a recipe must be a mapping at the top level")
    return cfg


def _resolve_base(ref: str, child: Path) -> Path:
    for cand in (child.parent / ref, RECIPES_DIR / ref, Path(ref)):
        if cand.is_file():
            return cand.resolve()
    raise RecipeError(f"{child}: inherit: base recipe '{ref}' not found (looked beside the recipe and in {RECIPES_DIR})")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Load a recipe with its `inherit:` chain (one base per file) and CLI dotlist overrides."""
    path = Path(path).resolve()
    chain, seen = [], set()
    while True:
        if path in seen:
            raise RecipeError(f"inherit cycle through {path}")
        seen.add(path)
        cfg = _read_yaml(path)
        chain.append(cfg)
        base = cfg.get("inherit")
        if base is None:
            break
        if not isinstance(base, str):
            raise RecipeError(f"{path}: inherit: must be one path (a recipe may inherit one base)")
        path = _resolve_base(base, path)
    merged = OmegaConf.merge(*reversed(chain))
    merged.pop("inherit", None)
    items = list(overrides or [])
    for item in items:
        if "=" not in item:
            raise RecipeError(f"override '{item}' is not of the form key.path=value (e.g. trainer.max_steps=10)")
    if not items:
        return _checked(merged)
    # `_name` variables first: a key merged into an interpolated section (stage.mask.x=… where stage.mask is
    # ${_variants.${_variant}.mask}) freezes that section as the variables stand, whatever order they were typed in
    items = [i for i in items if i.startswith("_")] + [i for i in items if not i.startswith("_")]
    try:  # all at once: merging them one by one re-parents the whole tree each time (quadratic in the count)
        result = OmegaConf.merge(merged, OmegaConf.from_dotlist(items))
    except (OmegaConfBaseException, ValueError, TypeError):
        result = None
    if result is not None:
        return _checked(result)
    # name the override that does not fit: the shortest failing prefix, found by bisection
    def fails(n: int) -> Exception | None:
        try:
            OmegaConf.merge(merged, OmegaConf.from_dotlist(items[:n]))
        except (OmegaConfBaseException, ValueError, TypeError) as exc:
            return exc
        return None

    lo, hi = 0, len(items)  # fails(hi) holds, fails(lo) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fails(mid) else (mid, hi)
    item, exc = items[hi - 1], fails(hi)
    key = item.split("=", 1)[0]
    raise RecipeError(f"{key}: override '{item}' does not fit the recipe ({type(exc).__name__}: {exc}); "
                      f"e.g. a scalar cannot replace a section, nor a key index a list") from exc


def _checked(cfg: DictConfig) -> DictConfig:
    """A `_variant` must select a row that the stage reads (xr0.recipe_rules.variant_problems)."""
    from xr0.recipe_rules import variant_problems

    problems = variant_problems(cfg)
    if problems:
        raise RecipeError(problems[0], problems)
    return cfg


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """Interpolate `${...}` and return plain containers."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise RecipeError(f"{key or 'recipe'}: interpolation failed: {exc.msg if hasattr(exc, 'msg') else exc}") from exc


# ---------------------------------------------------------------- validate
def _dataclass_of(annotation: Any) -> type | None:
    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and dataclasses.is_dataclass(cand):
            return cand
    return None


def _params(builder: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    sig = inspect.signature(builder)
    try:
        hints = typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    except Exception:  # unresolvable forward refs: validate names only
        hints = {}
    params = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return params, hints, var_kw


def _name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def type_problem(value: Any, hint: Any) -> str | None:
    """What `value` (plain YAML data) should have been to fit the annotation `hint`, or None when it fits.
    Annotations YAML cannot express (classes such as nn.Module, callables) are not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is None or hint is typing.Any or hint is inspect.Parameter.empty or isinstance(hint, typing.TypeVar):
        return None
    if origin in (typing.Union, types.UnionType):
        wanted, allowed = [], []  # Literal members read as one list of allowed values
        for arg in args:
            problem = type_problem(value, arg)
            if problem is None:
                return None
            if typing.get_origin(arg) is typing.Literal:
                allowed += typing.get_args(arg)
            else:
                wanted.append(f"({problem})" if " " in problem and len(args) > 1 else problem)
        if allowed:
            wanted.insert(0, _name(typing.Literal[tuple(allowed)]))
        return " or ".join(dict.fromkeys(wanted))
    if origin is typing.Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        return None if ok else _name(hint)
    if hint is type(None):
        return None if value is None else "null"
    if hint is bool:
        return None if isinstance(value, bool) else "bool"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "int"
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "float"
    if hint is str:
        return None if isinstance(value, str) else "str"
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return None if isinstance(value, str) else "a path (str)"
    seq = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
    if hint in seq or origin in seq:
        if not isinstance(value, list | tuple):
            return "a list"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"a list of {len(args)} items"
            pairs = zip(value, args)
        else:
            pairs = ((v, args[0]) for v in value) if args else ()
        for i, (v, a) in enumerate(pairs):
            problem = type_problem(v, a)
            if problem is not None:
                return f"a list whose item {i} is {problem}"
        return None
    mapping = (dict, collections.abc.Mapping)
    if hint in mapping or origin in mapping:
        if not isinstance(value, dict):
            return "a mapping"
        for k, v in value.items():
            problem = type_problem(v, args[1]) if len(args) == 2 else None
            if problem is not None:
                return f"a mapping whose '{k}' is {problem}"
        return None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return None if isinstance(value, dict) else f"a mapping of {hint.__name__} fields"
    return None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_types(path: str, given: dict[str, Any], hints: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in given.items():
        if key not in hints or (isinstance(value, dict) and "name" in value and slot_registry(key) is not None):
            continue  # a component: built from its own kwargs, checked there
        if isinstance(value, str) and value == "???":
            continue  # reported as a missing value
        wanted = type_problem(value, hints[key])
        if wanted is not None:
            problems.append(f"{path}.{key}: expected {wanted}, got {_describe(value)}")
    return problems


def _dataclass_hints(dc: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(dc)
    except Exception:  # unresolvable forward refs: names only
        return {}


def _check_keys(path: str, given: dict[str, Any], params: dict[str, Any], required: set[str], what: str, var_kw=False) -> list[str]:
    problems = []
    for key in given:
        if key not in params and not var_kw:
            import difflib

            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"{path}.{key}: unknown argument for {what}.{hint} Valid: {', '.join(sorted(params))}")
    for key in sorted(required - set(given)):
        problems.append(f"{path}.{key}: missing required argument of {what}")
    return problems


def _check_component(path: str, node: dict[str, Any], reg: R.Registry) -> list[str]:
    name = node.get("name")
    if not isinstance(name, str) or name not in reg:
        return [f"{path}.name: {reg.unknown_message(name)}"]
    builder = reg.get(name)
    params, hints, var_kw = _params(builder)
    kwargs = {k: v for k, v in node.items() if k != "name"}
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    problems = _check_keys(path, kwargs, params, required, f"{reg.kind} '{name}'", var_kw)
    problems += _check_types(path, {k: v for k, v in kwargs.items() if k in params}, hints)
    for key, value in kwargs.items():
        dc = _dataclass_of(hints.get(key))
        if dc is not None and isinstance(value, dict) and "name" not in value:
            fields = {f.name: f for f in dataclasses.fields(dc)}
            req = {f.name for f in fields.values()
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            problems += _check_keys(f"{path}.{key}", value, fields, req, dc.__name__)
            problems += _check_types(f"{path}.{key}", value, _dataclass_hints(dc))
        else:
            problems += _walk(f"{path}.{key}", key, value)
    hook = getattr(builder, "__xr0_validate__", None)  # builder-specific checks (e.g. data cards exist)
    if hook is not None and not problems:
        problems += [f"{path}: {p}" for p in hook(kwargs)]
    return problems


def _walk(path: str, key: str, value: Any) -> list[str]:
    reg = slot_registry(key)
    if isinstance(value, dict):
        if "name" in value and reg is not None:
            return _check_component(path, value, reg)
        return [p for k, v in value.items() for p in _walk(f"{path}.{k}", k, v)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _walk(f"{path}[{i}]", key, v)]
    if value == "???":
        return [f"{path}: missing value (the recipe leaves it as ???); set it in the recipe or as {path}=..."]
    if reg is R.EMBODIMENTS and isinstance(value, str):  # an embodiment may be named by a bare string
        return [] if value in reg else [f"{path}: {reg.unknown_message(value)}"]
    if reg is not None and value is not None:
        return [f"{path}: expected a {reg.kind} component like {{name: ..., <kwargs>}}, got {value!r}"]
    return []


def validate(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Check a whole recipe; raise RecipeError listing every problem. Returns the resolved dict."""
    tree = resolve(cfg) if isinstance(cfg, DictConfig) else cfg
    problems = []
    for key in tree:
        if key not in TOP_LEVEL and not key.startswith("_"):
            problems.append(f"{key}: unknown top-level key; valid: {', '.join(sorted(TOP_LEVEL))} (or a '_name' for your own variables)")
    if tree.get("stage") is None:
        problems.append("stage: missing; a recipe names its stage, e.g. stage: {name: dit_flow, ...}")
    elif not isinstance(tree["stage"], dict) or "name" not in tree["stage"]:  # data alone may be a list (a mixture)
        problems.append(f"stage: expected one stage component like {{name: ..., <kwargs>}}, got {tree['stage']!r}")
    for key in ("stage", "data", "embodiment"):
        if key in tree and (key != "stage" or isinstance(tree[key], dict) and "name" in tree[key]):
            problems += _walk(key, key, tree[key])
    for key in ("run", "trainer"):
        if key in tree and not isinstance(tree[key], dict | None):
            problems.append(f"{key}: must be a mapping of keys to values, got {tree[key]!r}")
    if "trainer" in tree:
        import lightning

        params, hints, _ = _params(lightning.Trainer)
        if isinstance(tree["trainer"], dict):
            problems += _check_keys("trainer", tree["trainer"], params, set(), "lightning.Trainer")
            problems += _check_types("trainer", tree["trainer"], hints)
    if isinstance(tree.get("run"), dict):
        fields = {f.name: f for f in dataclasses.fields(RunConfig)}
        problems += _check_keys("run", tree["run"] or {}, fields, set(), "run")
        problems += _check_types("run", tree["run"] or {}, _dataclass_hints(RunConfig))
    if not problems:  # rules across components, once each component is well-formed
        from xr0.recipe_rules import cross_checks

        problems += cross_checks(tree)
    if problems:
        raise RecipeError("recipe is invalid:\n  - " + "\n  - ".join(problems), problems)
    return tree


# ---------------------------------------------------------------- build
def build(node: Any, key: str = "") -> Any:
    """Build a (validated) component tree depth-first: builders receive built objects, never config nodes."""
    reg = slot_registry(key)
    if isinstance(node, dict):
        if "name" in node and reg is not None:
            builder = reg.get(node["name"])
            _, hints, _ = _params(builder)
            kwargs = {}
            for k, v in node.items():
                if k == "name":
                    continue
                dc = _dataclass_of(hints.get(k))
                kwargs[k] = dc(**v) if dc is not None and isinstance(v, dict) else build(v, k)
            return builder(**kwargs)
        return {k: build(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [build(v, key) for v in node]
    return node


def save_resolved(tree: dict[str, Any], path: Path) -> None:
    from xr0.fault import atomic_write

    text = OmegaConf.to_yaml(OmegaConf.create(tree)).encode()
    atomic_write(path, lambda f: f.write(text))
