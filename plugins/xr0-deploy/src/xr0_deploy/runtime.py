"""The real-time runner: a fixed-rate control loop on a monotonic clock, inference on its own thread.

Each tick: take new sensor readings, resample every sensor onto the tick's time (nearest timestamp),
hand finished chunks to the executor, start the inference it asks for, send its action or hold.
Tick lateness (actual start − scheduled start) is recorded; p50/p99 are reported at the end.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xr0_deploy.executor import Executor, Request, declared_chunk_len, declared_max_prefix, failure_kind
from xr0_deploy.protocol import ChunkPolicy, PolicyError, PolicyUnavailable, Reading, Robot


def nearest_index(timestamps: np.ndarray, t: float) -> int:
    """Index of the timestamp closest to t (ties → the earlier sample); timestamps sorted ascending.
    One control time through `xr0.data.resample.nearest_index`, the alignment the training data used."""
    from xr0.data.resample import nearest_index as nearest_many  # xr0.data imports the data stack: lazily

    return int(nearest_many(timestamps, np.asarray([t], dtype=np.float64))[0])


class Resampler:
    """Per-sensor buffers of timestamped readings; `at(t)` aligns every sensor to one control time."""

    def __init__(self, keep: int = 64):
        self._buf: dict[str, deque[Reading]] = {}
        self._keep = keep
        self._nearest = nearest_index  # xr0.data.resample's nearest-timestamp rule (docs/method.md §3)

    def add(self, reading: Reading) -> None:
        self._buf.setdefault(reading.name, deque(maxlen=self._keep)).append(reading)

    def at(self, t: float) -> dict[str, Reading]:
        out = {}
        for name, buf in self._buf.items():
            ts = np.fromiter((r.t for r in buf), dtype=np.float64, count=len(buf))
            out[name] = buf[self._nearest(ts, t)]
        return out

    def observation(self, t: float, prompt: str = "", max_frame_age: float = float("inf")) -> dict[str, Any]:
        """The observation at control time t. A camera whose nearest frame is further than `max_frame_age` seconds
        from t, or whose driver reported the frame as None, is sent as missing (None): the processor then feeds it
        as a black frame with image_mask False, exactly as training treated a frame the episode recorded missing."""
        obs: dict[str, Any] = {"prompt": prompt}
        for name, r in self.at(t).items():
            if name.startswith("images/"):
                fresh = r.value is not None and abs(r.t - t) <= max_frame_age
                obs.setdefault("images", {})[name.split("/", 1)[1]] = r.value if fresh else None
            else:
                obs[name] = r.value
        return obs


@dataclass
class RunReport:
    """What a real-time run measured."""

    ticks: int
    hz: float
    lateness_ms: list[float] = field(repr=False, default_factory=list)
    missed_ticks: int = 0
    warmup_ms: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    holds: dict[str, int] = field(default_factory=dict)  # held ticks by reason

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.lateness_ms, q)) if self.lateness_ms else float("nan")

    def summary(self) -> str:
        ev = ", ".join(f"{k}={v}" for k, v in sorted(self.events.items())) or "none"
        return (f"warm-up {self.warmup_ms:.0f} ms; {self.ticks} ticks at {self.hz:g} Hz, {self.chunks} chunks; tick lateness p50 "
                f"{self.percentile(50):.2f} ms, p99 {self.percentile(99):.2f} ms, max "
                f"{max(self.lateness_ms, default=float('nan')):.2f} ms; missed ticks {self.missed_ticks}; events: {ev}")


class _InferenceThread:
    """One request at a time (the executor never has two in flight); results come back on a queue."""

    def __init__(self, policy: ChunkPolicy):
        self.policy = policy
        self.inbox: queue.Queue = queue.Queue(maxsize=1)
        self.outbox: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="xr0-inference", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            req, obs = item
            try:
                self.outbox.put((req.id, self.policy.infer(obs, req.prefix, req.rtc), "", ""))
            except (PolicyUnavailable, PolicyError, ValueError) as exc:
                self.outbox.put((req.id, None, f"{type(exc).__name__}: {exc}", failure_kind(exc)))
            except Exception as exc:  # noqa: BLE001 - a crashing policy must not kill the control loop
                self.outbox.put((req.id, None, f"policy crashed: {type(exc).__name__}: {exc}", failure_kind(exc)))

    def submit(self, req: Request, obs: dict[str, Any]) -> None:
        self.inbox.put((req, obs))

    def stop(self, timeout: float) -> None:
        try:
            self.inbox.put_nowait(None)
        except queue.Full:
            pass  # still busy; it is a daemon thread and dies with the process
        self.thread.join(timeout)


class RealTimeRunner:
    """Drives an Executor against a Robot at `hz` on a monotonic clock (clock and sleep injectable)."""

    def __init__(self, executor: Executor, robot: Robot, policy: ChunkPolicy, hz: float = 30.0, prompt: str = "",
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 on_tick: Callable[[int, float], None] | None = None, max_frame_age: float | None = None):
        """max_frame_age: a camera frame older than this (seconds; default 3 control periods, at least 0.1 s) is
        sent as missing rather than reused."""
        if hz <= 0:
            raise ValueError(f"control rate must be > 0 Hz, got {hz}")
        self.max_frame_age = max(0.1, 3.0 / hz) if max_frame_age is None else max_frame_age
        self.ex, self.robot, self.policy = executor, robot, policy
        self.hz, self.period, self.prompt = hz, 1.0 / hz, prompt
        self.clock, self.sleep, self.on_tick = clock, sleep, on_tick
        self.resampler = Resampler()
        self.warmup_chunk_len: int | None = None

    def warmup(self) -> float:
        """One untimed inference (two in rtc mode) before the clock starts: first calls pay one-off costs
        (kernel selection, autograd setup: 0.3 s for RTC on the tiny CPU policy) that would read as latency."""
        from xr0_deploy.protocol import RTCSpec

        t = time.perf_counter()
        for r in self.robot.observe():
            self.resampler.add(r)
        obs = self.resampler.observation(self.clock(), self.prompt, self.max_frame_age)
        try:
            chunk = self.policy.infer(obs)
            self.warmup_chunk_len = len(chunk)
            if self.ex.cfg.mode == "rtc":
                self.policy.infer(obs, chunk[len(chunk) // 2:], RTCSpec(1, self.ex.cfg.max_guidance))
        except (PolicyUnavailable, PolicyError, ValueError) as exc:
            self.ex.events.add(-1, "warmup_failed", f"{type(exc).__name__}: {exc}")
        return (time.perf_counter() - t) * 1000

    def run(self, max_ticks: int, warmup: bool = True) -> RunReport:
        """Run `max_ticks` control periods (late ticks are skipped and counted, never bunched up)."""
        report = RunReport(0, self.hz)
        if warmup:
            report.warmup_ms = self.warmup()
        if self.ex.chunk_len is None:  # refuse settings that cannot fit the chunk before the clock starts
            chunk_len = self.warmup_chunk_len or declared_chunk_len(self.policy)
            if chunk_len is not None:
                self.ex.configure(chunk_len, declared_max_prefix(self.policy))
        worker = _InferenceThread(self.policy)
        t0, k = self.clock(), 0
        try:
            while k < max_ticks:
                scheduled = t0 + k * self.period
                now = self.clock()
                if now < scheduled:
                    self.sleep(scheduled - now)
                    now = self.clock()
                late = now - scheduled
                if late >= self.period:  # a whole period lost: skip to the current tick, the executor re-aligns
                    skip = int(late // self.period)
                    report.missed_ticks += skip
                    self.ex.events.add(k, "missed_ticks", f"{skip} ticks skipped ({late * 1000:.1f} ms late)")
                    k += skip
                    scheduled = t0 + k * self.period
                    late = now - scheduled
                    if k >= max_ticks:
                        break
                report.lateness_ms.append(late * 1000)
                self._tick(k, scheduled, worker, report)
                if self.on_tick:
                    self.on_tick(k, now)
                k += 1
                report.ticks += 1
        finally:
            worker.stop(timeout=2 * self.period + 1.0)
        report.events = dict(self.ex.events.counts)
        report.holds = dict(self.ex.hold_reasons)
        return report

    def _tick(self, k: int, t: float, worker: _InferenceThread, report: RunReport) -> None:
        for r in self.robot.observe():
            self.resampler.add(r)
        while True:
            try:
                rid, chunk, err, kind = worker.outbox.get_nowait()
            except queue.Empty:
                break
            if chunk is None:
                self.ex.fail(rid, err, kind)
            else:
                self.ex.deliver(rid, chunk)
                report.chunks += 1
        step = self.ex.tick(k)
        if step.request is not None:
            worker.submit(step.request, self.resampler.observation(t, self.prompt, self.max_frame_age))
        if step.action is not None:
            self.robot.act(step.action)
        else:
            self.robot.hold()
