"""The chunk executor (docs/method.md §3): pure and clock-driven, one call per control tick, no threads inside.

A driver (the simulator, the real-time runner) owns time and inference. Each tick it hands over the
chunks that finished (`deliver` / `fail`), calls `tick(k)`, starts the inference the returned `Step`
asks for (if any) on the observation of tick k, and sends the returned action — or holds when it is None.

Every held tick carries a `hold_reason` in the trace (`wait_inference`: startup, or sync idling for its chunk;
`late_chunk`: the chunk ran out before the next arrived; `server_unavailable` / `policy_error` / `policy_crashed` /
`chunk_rejected` / `stale_chunk`: the last request gave no usable chunk), counted in `hold_reasons`, with the first
detail of each reason in `hold_details` (what a user reads first).

Timeline, with T the chunk length, T_e `exec_steps`, Δt_c `prefix_steps`, d the latency in ticks:
- sync:  execute T_e actions, request on the latest observation, idle d ticks, execute the new chunk
         from index 0.
- async: at step T_e of the current chunk (tick k) request with prefix = its actions T_e … T_e+Δt_c−1
         and keep executing it; the new chunk's index 0 is aligned to tick k, so when it arrives at k+d
         it is executed from index d. Needs Δt_c ≥ d, measured and warned about (or adapted, never past the
         longest prefix the checkpoint was trained with: its metadata's `max_prefix`).
- rtc:   the async timeline for policies trained without a prefix: the request carries the rest of the
         current chunk as a soft guidance target (inference-time RTC, see rtc.py).

Configuration that cannot work with the policy's chunk length T (T_e > T; async T_e + Δt_c > T) is refused by
`configure(T)`, which drivers call before the clock starts. After a failed inference the next request waits a
bounded, jittered exponential number of ticks; every held tick is counted by its reason (`hold_reasons`).
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from xr0_deploy.latency import LatencyEstimator
from xr0_deploy.protocol import EventLog, RTCSpec
from xr0_deploy.safety import Safety

MODES = ("sync", "async", "rtc")


class ExecutorConfigError(ValueError):
    """Executor settings that cannot work with the policy (e.g. more exec steps than the chunk holds)."""


def failure_kind(exc: BaseException) -> str:
    """The hold reason an inference failure stands for: the server is gone, or it answered with an error."""
    from xr0_deploy.protocol import PolicyError, PolicyUnavailable

    if isinstance(exc, PolicyUnavailable):
        return "server_unavailable"
    if isinstance(exc, PolicyError | ValueError):
        return "policy_error"
    return "policy_crashed"


def declared_chunk_len(policy: Any) -> int | None:
    """The chunk length a policy declares in its metadata (local policies, `xr0 serve` after connecting)."""
    meta = getattr(policy, "metadata", None)
    try:
        meta = meta() if callable(meta) else meta
    except Exception:  # noqa: BLE001 - metadata is optional; the first chunk then tells
        return None
    value = meta.get("chunk_len") if isinstance(meta, dict) else None
    return int(value) if isinstance(value, int) and value > 0 else None


def declared_max_prefix(policy: Any) -> int | None:
    """The longest committed prefix Δt_c the policy's checkpoint was trained with, from its metadata (None: unknown)."""
    meta = getattr(policy, "metadata", None)
    try:
        meta = meta() if callable(meta) else meta
    except Exception:  # noqa: BLE001 - metadata is optional
        return None
    value = meta.get("max_prefix") if isinstance(meta, dict) else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class LatencyWarning(UserWarning):
    """Inference latency outgrew the committed prefix (or the chunk): transitions will not be seamless."""


class PrefixRangeWarning(UserWarning):
    """The committed prefix is (or would grow) longer than the policy was trained with."""


@dataclass(frozen=True)
class ExecutorConfig:
    """How chunks are stitched: mode, T_e, Δt_c, the Δt_inf estimator and RTC's max guidance weight."""

    mode: str = "async"
    exec_steps: int = 4  # T_e: actions of a chunk executed before the next inference starts
    prefix_steps: int = 4  # Δt_c: committed actions sent as the async prefix
    estimator: str = "max"  # Δt_inf estimate: rolling "max" or "quantile"
    window: int = 20
    quantile: float = 0.9
    adapt_prefix: bool = False  # grow Δt_c to the measured Δt_inf (bounded by T − T_e and the trained maximum)
    max_guidance: float = 5.0  # rtc: β, the cap on the guidance weight
    record_trace: bool = True
    keep_chunks: bool = False  # keep every adopted chunk and sent request (simulation and tests)
    retry_base_ticks: int = 1  # after the n-th failure in a row wait ~base·2^(n-1) ticks before asking again,
    retry_max_ticks: int = 30  # at most this many (1 s at 30 Hz), jittered down by up to half
    retry_seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"executor mode must be one of {MODES}, got {self.mode!r}")
        if self.exec_steps < 1:
            raise ValueError(f"exec_steps (T_e) must be >= 1, got {self.exec_steps}")
        if self.prefix_steps < 0:
            raise ValueError(f"prefix_steps (Δt_c) must be >= 0, got {self.prefix_steps}")
        if self.max_guidance < 0:
            raise ValueError(f"max_guidance must be >= 0, got {self.max_guidance}")
        if not 1 <= self.retry_base_ticks <= self.retry_max_ticks:
            raise ValueError(f"retry ticks need 1 <= base <= max, got base {self.retry_base_ticks}, "
                             f"max {self.retry_max_ticks}")


@dataclass(frozen=True)
class Request:
    """An inference the driver must start on this tick's observation."""

    id: int
    tick: int
    prefix: np.ndarray | None  # (P, A) committed actions (async) or guidance target (rtc), robot units
    rtc: RTCSpec | None
    origin: int | None  # tick the new chunk's index 0 is aligned to; None = the arm waits, start at index 0


@dataclass(frozen=True)
class Step:
    action: np.ndarray | None  # None: hold the last target
    request: Request | None
    record: dict[str, Any]


class Executor:
    """Turns chunks into one action per tick (see the module docstring for the three timelines)."""

    def __init__(self, config: ExecutorConfig = ExecutorConfig(), safety: Safety | None = None,
                 events: EventLog | None = None):
        self.cfg = config
        self.safety = safety or Safety()
        self.events = events or EventLog()
        self.latency = LatencyEstimator(config.estimator, config.window, config.quantile)
        self.prefix_steps = config.prefix_steps  # may grow when adapt_prefix is on
        self.trace: list[dict[str, Any]] = []
        self.chunks: dict[int, np.ndarray] = {}  # adopted chunks by id (keep_chunks)
        self.requests: dict[int, Request] = {}  # sent requests by id (keep_chunks)
        self.chunk: np.ndarray | None = None
        self.chunk_id: int | None = None
        self.origin = 0
        self.chunk_len: int | None = None
        self.max_prefix: int | None = None  # the longest Δt_c the policy was trained with (configure), None: unknown
        self.inflight: Request | None = None
        self.last_target: np.ndarray | None = None
        self._arrived: list[tuple[int, np.ndarray | None, str, str]] = []
        self._next_id = 0
        self._warned: set[tuple[str, int]] = set()
        self.hold_reasons: Counter[str] = Counter()  # held ticks by why no action was available
        self._problem: str | None = None  # what went wrong last (a failure, a rejected or stale chunk)
        self._detail = ""  # ... and its message
        self.hold_details: dict[str, str] = {}  # the first detail seen per hold reason
        self.failures_in_row = 0
        self.retry_at = 0  # no request before this tick (backoff after failures)
        self._rng = np.random.default_rng(config.retry_seed)

    def configure(self, chunk_len: int, max_prefix: int | None = None) -> None:
        """Check the settings against the policy's chunk length T before the loop starts; raises
        ExecutorConfigError with what to change. max_prefix: the longest committed prefix the policy was trained
        with (`declared_max_prefix`); adapt_prefix never grows Δt_c past it, and a longer Δt_c set by hand is
        warned about once."""
        t_e, p = self.cfg.exec_steps, self.prefix_steps
        if chunk_len < 1:
            raise ExecutorConfigError(f"the policy's chunk length must be >= 1, got {chunk_len}")
        if t_e > chunk_len:
            raise ExecutorConfigError(f"exec_steps (T_e={t_e}) exceeds the policy's chunk length T={chunk_len}; "
                                      f"use --exec-steps <= {chunk_len}")
        if self.cfg.mode == "async" and t_e + p > chunk_len:
            raise ExecutorConfigError(f"the async prefix runs past the chunk: T_e={t_e} + Δt_c={p} > T={chunk_len}; "
                                      f"use --prefix <= {chunk_len - t_e} (or fewer --exec-steps)")
        self.chunk_len, self.max_prefix = chunk_len, max_prefix
        if self.cfg.mode == "async" and max_prefix is not None and p > max_prefix:
            self._warn(-1, "prefix_beyond_training", p,
                       f"the async prefix Δt_c={p} is longer than the {max_prefix} committed actions the policy was "
                       f"trained with: its chunks are conditioned outside the trained range; use --prefix <= "
                       f"{max_prefix} or post-train with a longer prefix (stage.prefix_sampler.max_len)",
                       PrefixRangeWarning)

    # ---- driver interface -------------------------------------------------------------------------
    def deliver(self, request_id: int, chunk: np.ndarray) -> None:
        """A chunk finished; it is taken into account at the next `tick`."""
        self._arrived.append((request_id, chunk, "", ""))

    def fail(self, request_id: int, reason: str, kind: str = "server_unavailable") -> None:
        """An inference failed (server down, error reply; `kind` from `failure_kind`); the arm keeps going /
        holds and we retry after a backoff."""
        self._arrived.append((request_id, None, reason or "inference failed", kind))

    def tick(self, k: int) -> Step:
        """Advance to control tick k (ticks may jump when the driver missed some)."""
        n_events = len(self.events.events)
        finished = self._absorb(k)
        request = self._maybe_request(k) if self.inflight is None else None
        action, idx = self._action(k)
        record = {
            "tick": k,
            "chunk_id": self.chunk_id if action is not None else None,
            "index_in_chunk": idx,
            "action": None if action is None else [float(x) for x in action],
            "inference_started": request.id if request else None,
            "inference_finished": finished,
            "held": action is None,
        }
        if action is None:
            reason = self._hold_reason
            record["hold_reason"] = reason
            self.hold_reasons[reason] += 1
            self.hold_details.setdefault(reason, self._detail if self._problem else "")
        kinds = [e["kind"] for e in self.events.events[n_events:]]
        if kinds:
            record["events"] = kinds
        if self.cfg.record_trace:
            self.trace.append(record)
        return Step(action, request, record)

    # ---- internals --------------------------------------------------------------------------------
    def _absorb(self, k: int) -> int | None:
        finished = None
        for rid, chunk, reason, kind in self._arrived:
            req = self.inflight
            if req is None or req.id != rid:
                self.events.add(k, "unexpected_chunk", f"request {rid} is not the one in flight; dropped")
                continue
            self.inflight, finished = None, rid
            self.latency.add(k - req.tick)
            if chunk is None:
                self.events.add(k, "inference_failed", reason)
                self._problem, self._detail = kind, reason
                self._back_off(k)
            else:
                self.failures_in_row = 0
                self._adopt(k, req, chunk)
            self._check_latency(k)
        self._arrived.clear()
        return finished

    def _adopt(self, k: int, req: Request, chunk: np.ndarray) -> None:
        chunk = np.array(chunk, dtype=np.float64, copy=True)
        committed = req.prefix
        if req.rtc is not None and committed is not None:
            committed = committed[: req.rtc.frozen_steps]  # RTC freezes only what runs before arrival
        if (committed is not None and chunk.ndim == 2 and chunk.shape[1:] == committed.shape[1:]
                and len(chunk) >= len(committed)):
            # committed actions are a promise: whatever the model returned there, they are what ran / runs
            chunk[: len(committed)] = committed
        safe, reason, n_clipped = self.safety.check_chunk(chunk)
        if safe is None:
            self.events.add(k, "chunk_rejected", f"request {req.id}: {reason}; holding the last safe target")
            self._problem, self._detail = "chunk_rejected", reason
            return
        if n_clipped:
            self.events.add(k, "clipped", f"request {req.id}: {n_clipped} values clipped to the limits")
        if self.chunk_len is None:  # the driver could not tell the chunk length before the loop
            self.configure(len(safe))
        if len(safe) != self.chunk_len:
            self.events.add(k, "chunk_rejected", f"request {req.id}: {len(safe)} actions, the run was configured "
                                                 f"for chunks of {self.chunk_len}; holding the last safe target")
            self._problem, self._detail = "chunk_rejected", f"{len(safe)} actions, configured for {self.chunk_len}"
            return
        origin = k if req.origin is None else req.origin
        if k - origin >= len(safe):
            self.events.add(k, "stale_chunk", f"request {req.id} arrived {k - req.tick} ticks late, past its "
                                              f"{len(safe)} actions; dropped")
            self._problem, self._detail = "stale_chunk", f"request {req.id} arrived {k - req.tick} ticks after it was made"
            return
        self.chunk, self.chunk_id, self.origin, self._problem = safe, req.id, origin, None
        if self.cfg.keep_chunks:
            self.chunks[req.id] = safe

    def _check_latency(self, k: int) -> None:
        est, T = self.latency.estimate(), self.chunk_len
        if est is None or self.cfg.mode == "sync":
            return
        if self.cfg.mode == "async" and est > self.prefix_steps:
            if self.cfg.adapt_prefix and T is not None:
                grown = min(est, T - self.cfg.exec_steps)
                if self.max_prefix is not None and grown > self.max_prefix:
                    self._warn(k, "prefix_at_trained_max", self.max_prefix,
                               f"adapt_prefix: the measured latency Δt_inf={est} ticks asks for Δt_c={grown}, but "
                               f"the policy was trained with at most {self.max_prefix} committed actions; Δt_c "
                               f"stays at {max(self.prefix_steps, self.max_prefix)} (longer prefixes are outside the "
                               f"trained range). Make inference faster or post-train with a longer prefix "
                               f"(stage.prefix_sampler.max_len)", PrefixRangeWarning)
                    grown = self.max_prefix
                if grown > self.prefix_steps:
                    self.events.add(k, "prefix_adapted", f"Δt_c {self.prefix_steps} -> {grown} (Δt_inf={est})")
                    self.prefix_steps = grown
            if est > self.prefix_steps:
                self._warn(k, "latency_exceeds_prefix", est,
                           f"inference latency Δt_inf={est} ticks exceeds the prefix Δt_c={self.prefix_steps}: "
                           f"the arm runs uncommitted actions and chunk transitions can jerk. Raise prefix_steps "
                           f"to >= {est}, enable adapt_prefix, or make inference faster")
        # one inference in flight: the next starts at index max(T_e, Δt_inf) and lands Δt_inf later
        if T is not None and max(self.cfg.exec_steps, est) + est > T:
            self._warn(k, "latency_exceeds_chunk", est,
                       f"max(T_e={self.cfg.exec_steps}, Δt_inf={est}) + Δt_inf > chunk length T={T}: the current "
                       f"chunk runs out before the next one arrives and the arm holds. Lower exec_steps, use a "
                       f"longer chunk, or make inference faster (needs Δt_inf <= {T // 2})")

    def _warn(self, k: int, kind: str, est: int, message: str, category: type[Warning] = LatencyWarning) -> None:
        first = (kind, est) not in self._warned
        if first or category is LatencyWarning:  # latency goes in the trace at every chunk; the rest once
            self.events.add(k, kind, message)
        if first:  # the warning once per value, not every chunk
            self._warned.add((kind, est))
            warnings.warn(message, category, stacklevel=3)

    def _new_request(self, k: int, prefix: np.ndarray | None, rtc: RTCSpec | None, origin: int | None) -> Request:
        req = Request(self._next_id, k, prefix, rtc, origin)
        self._next_id += 1
        self.inflight = req
        if self.cfg.keep_chunks:
            self.requests[req.id] = req
        return req

    def _back_off(self, k: int) -> None:
        """Schedule the next request after a failure: base·2^(n-1) ticks for the n-th in a row, capped at
        retry_max_ticks, jittered into its upper half so many arms do not reconnect in lockstep."""
        self.failures_in_row += 1
        cap = min(self.cfg.retry_max_ticks, self.cfg.retry_base_ticks * 2 ** min(self.failures_in_row - 1, 30))
        wait = max(1, int(np.ceil(self._rng.uniform(cap / 2, cap))))
        self.retry_at = k + wait
        if wait > 1:
            self.events.add(k, "retry_backoff", f"{self.failures_in_row} failures in a row; next request in "
                                                f"{wait} ticks")

    @property
    def _hold_reason(self) -> str:
        if self._problem is not None:
            return self._problem
        if self.inflight is not None and self.inflight.origin is None:
            return "wait_inference"  # startup, or sync's idle by design
        return "late_chunk"  # the chunk ran out before the next one arrived

    def _maybe_request(self, k: int) -> Request | None:
        if k < self.retry_at:
            return None
        chunk = self.chunk
        if chunk is None or k - self.origin >= len(chunk):
            self.chunk = None  # nothing left to run: the arm waits for a fresh chunk from index 0
            return self._new_request(k, None, None, None)
        j = k - self.origin
        if j < self.cfg.exec_steps:
            return None
        if self.cfg.mode == "sync":
            self.chunk = None  # sync drops the rest and idles until the new chunk is in
            return self._new_request(k, None, None, None)
        if self.cfg.mode == "async":
            p = min(self.prefix_steps, len(chunk) - j)
            return self._new_request(k, chunk[j:j + p].copy() if p > 0 else None, None, k)
        rest = chunk[j:].copy()
        frozen = min(max(self.latency.estimate() or 1, 1), len(rest))
        return self._new_request(k, rest, RTCSpec(frozen, self.cfg.max_guidance), k)

    def _action(self, k: int) -> tuple[np.ndarray | None, int | None]:
        if self.chunk is not None and 0 <= k - self.origin < len(self.chunk):
            idx = k - self.origin
            action, limited = self.safety.bound_step(self.last_target, self.chunk[idx])
            if limited:
                self.events.add(k, "rate_limited", f"chunk {self.chunk_id} index {idx}: change bounded by max_delta")
            self.last_target = action
            return action, idx
        expected = self.inflight is not None and self.inflight.origin is None
        if expected and (self.cfg.mode == "sync" or self.chunk_id is None):  # sync's idle, or startup
            self.events.add(k, "wait_inference", "arm idle until the chunk arrives")
        else:
            self.events.add(k, "watchdog_hold", "no action available; holding the last safe target")
        return None, None
