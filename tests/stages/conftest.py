import sys
from pathlib import Path

# pytest runs in importlib mode: make the shared test helpers (fakes.py) importable for this folder
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture
def fake_policy(monkeypatch):
    """Stages 2/3 build `xr0.policy.Policy`; stage-logic tests swap in the contract-shaped FakePolicy where the stage
    modules name it."""
    from fakes import FakePolicy

    from xr0.stages import dit_flow, post_train

    monkeypatch.setattr(dit_flow, "Policy", FakePolicy)
    monkeypatch.setattr(post_train, "Policy", FakePolicy)
    return FakePolicy
