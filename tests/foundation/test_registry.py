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


def test_builtin_registries_load_their_package():
    # the first look-up imports xr0.backbones, whose import registers the built-ins
    assert isinstance(BACKBONES.names(), list)
