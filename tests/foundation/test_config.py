"""Recipe loading, inheritance, overrides and validation messages (each names the bad key)."""
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from xr0 import config
from xr0.config import RecipeError, build, load_recipe, validate
from xr0.registry import Registry


@dataclass
class Optim:
    lr: float = 1e-4
    weight_decay: float = 0.0


def make_registries(monkeypatch):
    stages, heads, masks = Registry("stage"), Registry("head"), Registry("mask")

    @masks.register("lambda")
    def lambda_mask(window: int = 4):
        """Λ mask."""
        return ("lambda", window)

    @heads.register("dit")
    def dit(depth: int, width: int = 8, mask=None):
        """DiT head."""
        return {"depth": depth, "width": width, "mask": mask}

    @stages.register("toy")
    def toy(head, optim: Optim = Optim(), training_repeat: int = 1):
        """Toy stage."""
        return {"head": head, "optim": optim, "repeat": training_repeat}

    monkeypatch.setitem(config.SLOTS, "stage", stages)
    monkeypatch.setitem(config.SLOTS, "head", heads)
    monkeypatch.setitem(config.SLOTS, "mask", masks)
    monkeypatch.setitem(config.SUFFIXES, "_mask", masks)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


BASE = """
    trainer: {max_steps: 100, accelerator: cpu}
    run: {seed: 1}
    _depth: 2
    stage:
      name: toy
      head: {name: dit, depth: "${_depth}", mask: {name: lambda, window: 4}}
"""


def test_inherit_override_and_interpolation(tmp_path, monkeypatch):
    make_registries(monkeypatch)
    write(tmp_path, "_base/b.yaml", BASE)
    child = write(tmp_path, "child.yaml", """
        inherit: _base/b.yaml
        trainer: {max_steps: 50}
        stage: {training_repeat: 4}
    """)
    tree = validate(load_recipe(child, ["trainer.max_steps=10", "_depth=3", "stage.optim.lr=0.5"]))
    assert tree["trainer"] == {"max_steps": 10, "accelerator": "cpu"}  # child then CLI win, base keys kept
    assert tree["stage"]["training_repeat"] == 4
    assert tree["stage"]["head"]["depth"] == 3  # interpolation sees the override
    built = build(tree["stage"], "stage")
    assert built["head"]["mask"] == ("lambda", 4)  # nested components arrive built
    assert built["optim"] == Optim(lr=0.5)  # dataclass kwargs arrive as the dataclass
    assert "inherit" not in tree


@pytest.mark.parametrize(
    "override, needle",
    [
        ("stage.head.dpeth=3", "stage.head.dpeth: unknown argument for head 'dit'. Did you mean 'depth'?"),
        ("stage.head.name=dti", "stage.head.name: unknown head 'dti'. Did you mean 'dit'?"),
        ("stage.head.mask.name=lamda", "stage.head.mask.name: unknown mask 'lamda'. Did you mean 'lambda'?"),
        ("stage.optim.lrr=1", "stage.optim.lrr: unknown argument for Optim. Did you mean 'lr'?"),
        ("trainer.max_step=3", "trainer.max_step: unknown argument for lightning.Trainer"),
        ("run.sed=3", "run.sed: unknown argument for run"),
        ("stagee.x=1", "stagee: unknown top-level key"),
    ],
)
def test_validation_names_the_bad_key(tmp_path, monkeypatch, override, needle):
    make_registries(monkeypatch)
    p = write(tmp_path, "r.yaml", BASE)
    with pytest.raises(RecipeError) as exc:
        validate(load_recipe(p, [override]))
    assert needle in str(exc.value)


def test_missing_required_argument(tmp_path, monkeypatch):
    make_registries(monkeypatch)
    p = write(tmp_path, "r.yaml", """
        stage: {name: toy, head: {name: dit}}
    """)
    with pytest.raises(RecipeError, match=r"stage\.head\.depth: missing required argument of head 'dit'"):
        validate(load_recipe(p))


def test_all_problems_reported_at_once(tmp_path, monkeypatch):
    make_registries(monkeypatch)
    p = write(tmp_path, "r.yaml", BASE)
    with pytest.raises(RecipeError) as exc:
        validate(load_recipe(p, ["stage.head.dpeth=3", "trainer.max_step=3"]))
    assert "stage.head.dpeth" in str(exc.value) and "trainer.max_step" in str(exc.value)


def test_load_errors(tmp_path, monkeypatch):
    make_registries(monkeypatch)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    p = write(tmp_path, "r.yaml", "inherit: missing_base.yaml\n")
    with pytest.raises(RecipeError, match="base recipe 'missing_base.yaml' not found"):
        load_recipe(p)
    a = write(tmp_path, "a.yaml", "inherit: b.yaml\n")
    write(tmp_path, "b.yaml", "inherit: a.yaml\n")
    with pytest.raises(RecipeError, match="inherit cycle"):
        load_recipe(a)
    p = write(tmp_path, "s.yaml", BASE)
    with pytest.raises(RecipeError, match="not of the form key.path=value"):
        load_recipe(p, ["trainer.max_steps"])
    p = write(tmp_path, "i.yaml", "stage: {name: toy, head: {name: dit, depth: '${_nope}'}}\n")
    with pytest.raises(RecipeError, match="interpolation"):
        validate(load_recipe(p))
    p = write(tmp_path, "bad.yaml", "stage: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)


def test_missing_stage(tmp_path, monkeypatch):
    make_registries(monkeypatch)
    p = write(tmp_path, "r.yaml", "trainer: {max_steps: 1}\n")
    with pytest.raises(RecipeError, match="stage: missing"):
        validate(load_recipe(p))


@pytest.mark.parametrize("stage", ["[]", "{}", "[{name: toy, head: {name: dit, depth: 2}}]", "{head: {name: dit, depth: 2}}"])
def test_stage_must_be_one_named_component(tmp_path, monkeypatch, stage):
    """Found by test_random_trees: these validated, then failed to build (a list or an unnamed mapping)."""
    make_registries(monkeypatch)
    p = write(tmp_path, "r.yaml", f"stage: {stage}\n")
    with pytest.raises(RecipeError, match=r"stage: expected one stage component like \{name: ..., <kwargs>\}"):
        validate(load_recipe(p))


def test_save_resolved_roundtrip(tmp_path, monkeypatch):
    make_registries(monkeypatch)
    tree = validate(load_recipe(write(tmp_path, "r.yaml", BASE)))
    config.save_resolved(tree, tmp_path / "out" / "recipe.yaml")
    again = validate(load_recipe(tmp_path / "out" / "recipe.yaml"))
    assert again == tree


# ---- bad input: random recipe trees and overrides (hypothesis)
import re

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

keys = st.sampled_from(["stage", "stage.head", "stage.head.depth", "stage.head.mask", "stage.head.mask.name",
                        "stage.optim.lr", "trainer.max_steps", "run.seed", "trainer", "run", "data", "x",
                        "stage.name", "embodiment", "_v", "stage.head.name"])
values = st.one_of(st.integers(-3, 3), st.sampled_from(["dit", "lambda", "???", "null", "[1, 2]", "{a: 1}",
                                                         "${_v}", "${nope}", "toy", "'x y'", ""]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
trees = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                      st.dictionaries(st.sampled_from(["stage", "name", "head", "mask", "data", "run", "trainer", "depth", "x"]), kids, max_size=3)),
                     max_leaves=12)

SETTINGS = settings(max_examples=60)  # deadline, health checks and the seed: the suite profile (conftest.py)


# "path.to[0].key: what is wrong", after the recipe file's name for errors about the file itself
PROBLEM = re.compile(r"^(?:  - )?(?:\S+\.yaml: )?([A-Za-z_]\w*)(?:[.\[][\w.\[\]]*)?: \S")


def check_outcome(run, roots: set[str]):
    """A recipe either validates, or fails with a RecipeError (anything else escapes and fails the test) whose every
    problem line starts with the key path it is about, rooted at a key the recipe or an override holds."""
    try:
        return run()
    except RecipeError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        assert lines, "an empty error message"
        problems = lines[1:] if lines[0] == "recipe is invalid:" else lines[:1]
        assert problems, str(exc)
        for line in problems:
            m = PROBLEM.match(line)
            assert m, f"a problem that names no key path: {line!r}"
            assert m.group(1) in roots, f"{line!r} names a key that is in neither the recipe nor an override"
        return None


@SETTINGS
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_random_overrides(tmp_path, monkeypatch, pairs):
    """Also pins the two cases hypothesis found: a list replacing a section, a key into a list."""
    make_registries(monkeypatch)
    p = write(tmp_path, "r.yaml", BASE)
    overrides = [f"{k}={v}" for k, v in pairs]
    roots = {"trainer", "run", "_depth", "stage"} | {k.split(".")[0] for k, _ in pairs}
    tree = check_outcome(lambda: validate(load_recipe(p, overrides)), roots)
    if tree is None:
        return
    built = build(tree["stage"], "stage")  # what validates, builds
    assert built["head"]["depth"] == tree["stage"]["head"]["depth"]
    if any(str(v) == "???" for _, v in pairs):
        return  # OmegaConf's "no value": merging it keeps the recipe's value
    for i, (k, v) in enumerate(pairs):  # each override that nothing later touches holds its value in the tree
        later = [k2 for k2, _ in pairs[i + 1:]]
        if "${" in str(v) or any(k2 == k or k2.startswith(k + ".") or k.startswith(k2 + ".") for k2 in later):
            continue
        want, got = OmegaConf.to_container(OmegaConf.from_dotlist([f"{k}={v}"])), tree
        for part in k.split("."):
            want, got = want[part], got[part]
        assert got == want, (k, v)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["stage", "trainer", "run", "data", "embodiment", "x", "inherit"]), trees, max_size=4))
def test_random_trees(tmp_path, monkeypatch, tree):
    make_registries(monkeypatch)
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(tree))
    roots = set(tree) | {"stage", "recipe"}  # a missing stage is named; a file that is no mapping is "recipe"
    valid = check_outcome(lambda: validate(load_recipe(p)), roots)
    if valid is not None:  # only a tree with a buildable stage validates
        assert build(valid["stage"], "stage")["head"] is not None


@pytest.mark.parametrize("overrides", [["run=[1, 2]", "run.seed=0"], ["stage=[1, 2]"]])
def test_overrides_that_do_not_fit_name_the_key(tmp_path, monkeypatch, overrides):
    make_registries(monkeypatch)
    p = write(tmp_path, "r.yaml", BASE)
    with pytest.raises(RecipeError):
        validate(load_recipe(p, overrides))


# ---- types against the builders' annotations; many overrides; one-line errors at the CLI
@pytest.mark.parametrize(
    "override, needle",
    [
        ("stage.head.depth=two", "stage.head.depth: expected int, got str 'two'"),
        ("trainer.max_steps=ten", "trainer.max_steps: expected int, got str 'ten'"),
        ("stage.training_repeat=2.5", "stage.training_repeat: expected int, got float 2.5"),
        ("stage.head.depth=true", "stage.head.depth: expected int, got bool True"),
        ("stage.optim.lr=fast", "stage.optim.lr: expected float, got str 'fast'"),  # a dataclass field
        ("stage.head.mask.window=[4]", "stage.head.mask.window: expected int, got list [4]"),
        ("run.tensorboard=maybe", "run.tensorboard: expected bool, got str 'maybe'"),
        ("trainer.precision=33", "trainer.precision: expected one of 64, 32, 16, 'transformer-engine'"),  # Literal
        ("trainer.devices=[a]", "trainer.devices: expected (a list whose item 0 is int) or str or int"),
    ],
)
def test_validation_checks_value_types_with_the_yaml_path(tmp_path, monkeypatch, override, needle):
    make_registries(monkeypatch)
    p = write(tmp_path, "r.yaml", BASE)
    with pytest.raises(RecipeError) as exc:
        validate(load_recipe(p, [override]))
    assert needle in str(exc.value)
    assert any(line.startswith(needle) for line in exc.value.problems)


def test_type_problem_accepts_what_the_annotation_allows():
    from typing import Literal, Optional

    from xr0.config import type_problem

    ok = [(3, int), (3, float), (0.5, float), (None, Optional[int]), ("bf16-mixed", Literal["bf16-mixed", 32]),
          (32, Literal["bf16-mixed", 32]), ([0.9, 0.95], tuple[float, float]), ({"a": 1}, dict[str, int]),
          ("x", str | None), ({"lr": 1}, Optim), ("runs/x", Path)]
    bad = [(3.0, int), ("32", Literal[32]), (True, Literal[1]), ([1, "a"], list[int]), ({"a": "b"}, dict[str, int]),
           (None, int), (1, str)]
    assert [v for v, h in ok if type_problem(v, h) is not None] == []
    assert [v for v, h in bad if type_problem(v, h) is None] == []


def test_thousands_of_overrides_merge_in_one_pass(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    make_registries(monkeypatch)
    p = write(tmp_path, "r.yaml", BASE)
    merges = []
    real = OmegaConf.merge
    monkeypatch.setattr(OmegaConf, "merge", staticmethod(lambda *a, **k: merges.append(len(a)) or real(*a, **k)))
    items = [f"_v{i}.x={i}" for i in range(1000)] + ["trainer.max_steps=7"]
    cfg = load_recipe(p, items)
    assert cfg._v999.x == 999 and cfg.trainer.max_steps == 7
    # one merge for the inherit chain, one for all overrides: the work grows with the count, not its square
    assert len(merges) == 2
    merges.clear()
    bad = items[:700] + ["run=[1, 2]"] + items[700:]  # a list cannot replace the run section
    with pytest.raises(RecipeError, match=r"^run: override 'run=\[1, 2\]' does not fit"):
        load_recipe(p, bad)
    assert len(merges) <= 2 + 2 + 11  # the culprit found by bisection, not by one merge per override


def test_cli_prints_every_error_as_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    recipe = root / "recipes" / "tiny" / "stage2.yaml"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "xr0.cli", "fit", str(recipe), "stage.init_from=null", f"run.out_dir={out}",
           "stage.head.depth=two", "trainer.max_steps=ten"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xr0: error: recipe is invalid:"), res.stderr[-2000:]
    assert "stage.head.depth: expected int, got str 'two'" in lines[0] and "trainer.max_steps" in lines[0]
    assert not out.exists()  # nothing written before the recipe is known to be good
    # an error that is not one of xr0's (here an OSError: run.out_dir names a file) is one line too, with its
    # type; --debug shows the traceback
    from xr0.cli import main

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = ["fit", str(recipe), "stage.init_from=null", f"run.out_dir={a_file}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xr0: error: FileExistsError:"), err
    assert err[0].endswith("(--debug for the traceback)")
    with pytest.raises(FileExistsError):
        main(argv + ["--debug"])
    assert main(["validate", str(recipe), "--set", "stage.head.depth=two", "--set", "trainer.max_steps=ten"]) == 1
    assert sorted(capsys.readouterr().out.strip().splitlines()) == [
        f"INVALID {recipe}: stage.head.depth: expected int, got str 'two'",
        f"INVALID {recipe}: trainer.max_steps: expected int, got str 'ten'"]
