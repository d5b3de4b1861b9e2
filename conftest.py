"""Suite-wide test settings (tests/ and plugins/*/tests): a reproducible Hypothesis seed, and bounded waits.

Hypothesis draws from one seed for the whole run: 0 unless XR0_HYPOTHESIS_SEED says otherwise (a number, or
`random` to explore new examples). The seed is printed at the end of every run, so a failure found with a random
seed replays with `XR0_HYPOTHESIS_SEED=<seed> make test` (or `--hypothesis-seed=<seed>`). CI sets nothing, so it
always runs the same examples. Per-test time limits come from pytest-timeout (pyproject.toml).
"""
from __future__ import annotations

import os
import queue
import random
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

SEED_ENV = "XR0_HYPOTHESIS_SEED"


def _seed_from_env() -> int:
    raw = os.environ.get(SEED_ENV, "0").strip()
    if raw == "random":
        return random.SystemRandom().randrange(2**32)
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"{SEED_ENV}={raw!r}: use an integer seed, or 'random'") from None


@pytest.hookimpl(tryfirst=True)  # before Hypothesis's own plugin reads --hypothesis-seed
def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import HealthCheck, settings

    # database=None: examples come from the seed alone, and a test run writes no .hypothesis/ folder
    settings.register_profile("xr0", deadline=None, database=None, print_blob=True,
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    settings.load_profile("xr0")
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(_seed_from_env())


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    seed = config.getoption("hypothesis_seed", None)
    terminalreporter.write_line(f"hypothesis seed {seed} (replay: {SEED_ENV}={seed}; explore: {SEED_ENV}=random)")


# ---------------------------------------------------------------- bounded waits
def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
    """The first line of `proc`'s stdout (text mode) that matches `pattern`, read on a helper thread so the wait is
    bounded; fails the test with everything the process printed if the line does not come within `timeout` s or the
    process exits first. Later output keeps draining, so the process never blocks on a full pipe."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # end of output: the process closed stdout (exited)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"the process exited ({proc.wait(timeout=10)}) before printing /{pattern}/: {''.join(seen)}")
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    pytest.fail(f"no line matching /{pattern}/ within {timeout} s; the process printed: {''.join(seen)}")


@pytest.fixture
def wait_for_line():
    """`wait_for_line(proc, pattern, timeout)`: the bounded wait for a subprocess's line (see _wait_for_line)."""
    return _wait_for_line


@pytest.fixture
def reserved_port() -> Iterator[int]:
    """A free TCP port on 127.0.0.1 kept reserved for the whole test: a bound, non-listening socket with SO_REUSEADDR
    holds it, so a server may stop and start again on it (Linux lets a listener share an address with a socket that is
    not listening) while no other process can take it in between."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()
