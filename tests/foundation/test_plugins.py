import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from xr0 import plugins
from xr0.registry import EMBODIMENTS


def test_example_plugin_is_installed_and_discovered():
    names = {ep.name for ep in entry_points(group=plugins.GROUP)}
    assert "example" in names, "make test installs plugins/xr0-embodiment-example; run `make test`"
    loaded = {p.name: p for p in plugins.load_plugins()}
    assert loaded["example"].error is None
    assert loaded["example"].distribution == "xr0-embodiment-example"


def test_plugin_entries_record_their_distribution():
    plugins.load_plugins()
    origins = {e.origin for e in EMBODIMENTS.entries()}
    assert "xr0-embodiment-example" in origins


def test_broken_plugin_names_its_distribution(monkeypatch):
    class FakeDist:
        name, version = "xr0-broken-plugin", "0.0.1"

    class FakeEP:
        name, value, dist = "broken", "xr0_does_not_exist_anywhere", FakeDist()

        def load(self):
            raise ImportError("No module named 'xr0_does_not_exist_anywhere'")

    monkeypatch.setattr(plugins, "entry_points", lambda group: [FakeEP()])
    monkeypatch.setattr(plugins, "_loaded", None)
    with pytest.raises(plugins.PluginError, match="xr0-broken-plugin"):
        plugins.load_plugins()
    monkeypatch.setattr(plugins, "_loaded", None)
    monkeypatch.setenv("XR0_PLUGIN_ERRORS", "warn")
    with pytest.warns(UserWarning, match="xr0-broken-plugin"):
        found = plugins.load_plugins()
    assert found[0].error and "xr0_does_not_exist_anywhere" in found[0].error
    monkeypatch.setattr(plugins, "_loaded", None)


def test_cli_plugins_and_ls_list_the_example():
    out = subprocess.run([sys.executable, "-m", "xr0.cli", "plugins"], capture_output=True, text=True, check=True,
                         timeout=120)
    assert "xr0-embodiment-example" in out.stdout
    out = subprocess.run([sys.executable, "-m", "xr0.cli", "ls", "embodiment"], capture_output=True, text=True, check=True,
                         timeout=120)
    assert "xr0-embodiment-example" in out.stdout


def test_ls_lists_robot_drivers_and_takes_plurals(capsys):
    from xr0.cli import main

    assert main(["ls", "robots"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("robots:") and "sim_arm" in out and "xr0-deploy" in out
    assert main(["ls", "heads"]) == 0 and "dit" in capsys.readouterr().out
    assert main(["ls", "head"]) == 0 and "choice_policy" in capsys.readouterr().out


def test_the_registry_never_loads_plugins_itself():
    """Plugins load at the entry points (CLI, fit, load_policy): a fresh interpreter that only asks the registry sees
    xr0's own entries, and the unknown-name error says how to load them; the CLI sees the plugin's."""
    code = ("from xr0.registry import EMBODIMENTS\n"
            "assert 'libero_franka' in EMBODIMENTS and 'example_arm' not in EMBODIMENTS\n"
            "try:\n    EMBODIMENTS.get('example_arm')\n"
            "except KeyError as e:\n    print(e)\n"
            "from xr0.plugins import load_plugins\nload_plugins()\nassert 'example_arm' in EMBODIMENTS\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "plugins are not loaded: from Python, call xr0.plugins.load_plugins()" in out.stdout
