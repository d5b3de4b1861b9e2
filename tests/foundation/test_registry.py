import pytest

from xr0.registry import BACKBONES, Registry, RegistryError


def test_register_get_build_and_names():
    reg = Registry("widget")

    @reg.register("box")
    class Box:
        """A box."""

        def __init__(self, size=1):
            self.size = size

    assert reg.get("box") is Box
    assert reg.build("box", size=3).size == 3
    assert reg.names() == ["box"]
    assert reg.entry("box").origin == "xr0"
    assert reg.entry("box").doc == "A box."


def test_duplicate_name_raises():
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a")(lambda: 2)


def test_unknown_name_lists_names_and_suggests():
    reg = Registry("widget")
    for n in ("lambda", "causal"):
        reg.register(n)(lambda: None)
    with pytest.raises(RegistryError) as exc:
        reg.get("lamda")
    msg = str(exc.value)
    assert "unknown widget 'lamda'" in msg
    assert "Did you mean 'lambda'?" in msg
    assert "causal, lambda" in msg


def test_unknown_name_without_close_match_has_no_hint():
    reg = Registry("widget")
    reg.register("causal")(lambda: None)
    with pytest.raises(RegistryError) as exc:
        reg.get("zzzzzz")
    assert "Did you mean" not in str(exc.value)


def test_builtin_registries_load_their_package(tmp_path, monkeypatch):
    """The first look-up imports the kind's package, whose import registers the built-ins."""
    import sys
    import types

    from xr0.registry import HEADS, MASKS, SAMPLERS

    assert "qwen3vl" in BACKBONES.names() and BACKBONES.get("qwen3vl").__module__ == "xr0.backbones.qwen3vl"
    assert {"dit", "choice_policy"} <= set(HEADS.names()) and {"causal", "lambda"} <= set(MASKS.names())
    assert {"beta", "uniform", "logit_normal", "prefix"} <= set(SAMPLERS.names())
    # the mechanism, on a package of our own: nothing is imported until the first look-up, which imports it once
    reg = Registry("widget", builtin="xr0_test_widgets")
    holder = types.ModuleType("xr0_test_widget_holder")
    holder.REG, holder.imports = reg, 0
    monkeypatch.setitem(sys.modules, "xr0_test_widget_holder", holder)
    (tmp_path / "xr0_test_widgets.py").write_text(
        "import xr0_test_widget_holder as h\nh.imports += 1\nh.REG.register('cog')(lambda: 'cog')\n"
        "h.REG.register('axle')(lambda: 'axle')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "xr0_test_widgets", raising=False)
    assert holder.imports == 0 and "xr0_test_widgets" not in sys.modules
    assert reg.names() == ["axle", "cog"] and reg.build("cog") == "cog"
    assert holder.imports == 1
    sys.modules.pop("xr0_test_widgets", None)
