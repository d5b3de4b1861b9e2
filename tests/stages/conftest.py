import sys
from pathlib import Path

# pytest runs in importlib mode: make the shared test helpers (fakes.py) importable for this folder
sys.path.insert(0, str(Path(__file__).parent))

import types  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def fake_policy(monkeypatch):
    """Stages 2/3 build `xr0.policy.Policy`; stage-logic tests swap in the contract-shaped FakePolicy."""
    from fakes import FakePolicy

    from xr0.policy import reweight_mode

    mod = types.ModuleType("xr0.policy")
    mod.Policy, mod.reweight_mode = FakePolicy, reweight_mode  # the stages read the recipe's reweight through it
    monkeypatch.setitem(sys.modules, "xr0.policy", mod)
    return FakePolicy
