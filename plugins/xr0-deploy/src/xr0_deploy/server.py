"""`xr0 serve`: a policy over websocket + msgpack-numpy, wire-compatible with openpi's policy server.

Protocol (openpi): on connect the server sends one binary metadata message (the processor's: embodiment, action
and state names, cameras, trained image size, limits, control rate, chunk length, default action frame); then
each binary request is an observation dict and each reply a dict with `actions` (T, A) and `server_timing`
{infer_ms, prev_total_ms}. A text frame is an error reply (openpi's client raises it). xr0 additions in the
request: `prefix_actions` (P, A) committed actions, `rtc` {frozen_steps, max_guidance} to guide instead,
`action_frame` (absolute | delta) for this request, `seed` for this request's flow noise; in the reply:
`action_frame`, `clipped` (values clipped to the embodiment's limits) and `missing_cameras`.
Unlike openpi, a bad request gets an error reply and the connection stays open.
"""
from __future__ import annotations

import asyncio
import hmac
import http
import logging
import threading
import time
import traceback
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from xr0_deploy import wire
from xr0_deploy.local import OutputError, RequestError
from xr0_deploy.protocol import RTCSpec

log = logging.getLogger("xr0.deploy.server")
MESSAGE_TOO_BIG = 1009  # websocket close code when a frame exceeds max_size


def parse_request(message: Any) -> tuple[dict[str, Any], np.ndarray | None, RTCSpec | None, dict[str, Any]]:
    """Observation, prefix, RTC settings and options (action_frame, seed) from one frame; RequestError says what
    is wrong."""
    if isinstance(message, str):
        raise RequestError("expected a binary msgpack frame, got text")
    try:
        obs = wire.unpackb(message)
    except Exception as exc:
        raise RequestError(f"not a valid msgpack-numpy message ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obs, dict):
        raise RequestError(f"the request must be a mapping (the observation), got {type(obs).__name__}")
    obs = dict(obs)
    prefix = obs.pop("prefix_actions", None)
    rtc_node = obs.pop("rtc", None)
    options = {"frame": obs.pop("action_frame", None), "seed": obs.pop("seed", None)}
    if options["frame"] is not None and not isinstance(options["frame"], str):
        raise RequestError("action_frame: expected 'absolute' or 'delta'")
    if options["seed"] is not None and (isinstance(options["seed"], bool) or not isinstance(options["seed"], int)):
        raise RequestError(f"seed: expected an integer, got {type(options['seed']).__name__}")
    rtc = None
    if rtc_node is not None:
        if not isinstance(rtc_node, dict) or "frozen_steps" not in rtc_node:
            raise RequestError("rtc: expected {frozen_steps: int, max_guidance: float}")
        try:
            rtc = RTCSpec(int(rtc_node["frozen_steps"]), float(rtc_node.get("max_guidance", 5.0)))
        except (TypeError, ValueError) as exc:
            raise RequestError(f"rtc: {exc}") from exc
        if prefix is None:
            raise RequestError("rtc needs prefix_actions (the rest of the executing chunk)")
    if prefix is not None and not isinstance(prefix, np.ndarray):
        try:
            prefix = np.asarray(prefix, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise RequestError(f"prefix_actions: expected a (P, action_dim) array of numbers ({exc})") from exc
    return obs, prefix, rtc, options


class PolicyServer:
    """Serves one ChunkPolicy; `start()` runs it on a background thread (tests, embedding), `serve_forever()`
    in the foreground (CLI). Model calls are serialised: one GPU, one inference at a time."""

    def __init__(self, policy: Any, metadata: dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, max_message_bytes: int = 16 * 2**20):
        self.policy, self.host, self.port = policy, host, port
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("max_message_bytes", max_message_bytes)
        self.api_key, self.max_message_bytes = api_key, max_message_bytes
        self.counts = {"connections": 0, "requests": 0, "errors": 0, "oversized": 0, "unauthorized": 0,
                       "bad_outputs": 0, "clipped_values": 0}
        self._lock = threading.Lock()
        self._counted = threading.Condition()  # notified on every count: wait_for_count blocks on it
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def wait_for_count(self, name: str, at_least: int, timeout: float = 10.0) -> bool:
        """Block until `counts[name] >= at_least` or `timeout` s pass; returns whether it got there. The counters
        change on the server's thread (a close is noticed after the client saw it), so a caller waits, bounded."""
        with self._counted:
            return self._counted.wait_for(lambda: self.counts[name] >= at_least, timeout)

    def _count(self, name: str, n: int = 1) -> None:
        with self._counted:
            self.counts[name] += n
            self._counted.notify_all()

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> int:
        """Serve on a daemon thread; returns the bound port (useful with port=0)."""
        self._ready.clear()
        self._thread = threading.Thread(target=self.serve_forever, name="xr0-policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"policy server did not start within {timeout}s")
        if self._failure:
            raise RuntimeError(f"policy server failed to start: {self._failure}") from self._failure
        return self.port

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # start() reports it instead of hanging
            self._failure = exc
            self._ready.set()
            if threading.current_thread() is threading.main_thread():
                raise

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._handle, self.host, self.port, compression=None, max_size=self.max_message_bytes,
                         process_request=self._check_request) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("xr0 policy server on ws://%s:%d", self.host, self.port)
            self._ready.set()
            await self._stop.wait()

    # ---- protocol ---------------------------------------------------------------------------------
    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is None:
            return None
        given = request.headers.get("Api-Key")
        auth = request.headers.get("Authorization", "")
        if given is None and auth.startswith("Api-Key "):
            given = auth[len("Api-Key "):]  # openpi's client sends `Authorization: Api-Key <key>`
        if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            self._count("unauthorized")
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong Api-Key header\n")
        return None

    def _infer(self, obs: dict[str, Any], prefix: np.ndarray | None, rtc: RTCSpec | None,
               options: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if hasattr(self.policy, "reply"):  # LocalPolicy: the processor's frame, clip count, missing cameras
                r = self.policy.reply(obs, prefix, rtc, frame=options["frame"], seed=options["seed"])
                return {"actions": r.actions, "action_frame": r.frame, "clipped": r.clipped,
                        "missing_cameras": r.missing_cameras}
            return {"actions": self.policy.infer(obs, prefix, rtc)}

    async def _handle(self, ws: ServerConnection) -> None:
        self._count("connections")
        await ws.send(wire.packb(self.metadata))
        prev_total_ms: float | None = None
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                codes = {getattr(exc.sent, "code", None), getattr(exc.rcvd, "code", None)}
                if MESSAGE_TOO_BIG in codes:
                    self._count("oversized")
                    log.warning("closed %s: message larger than %d bytes", ws.remote_address, self.max_message_bytes)
                return
            start = time.perf_counter()
            try:
                obs, prefix, rtc, options = parse_request(message)
                reply = await asyncio.to_thread(self._infer, obs, prefix, rtc, options)
                actions = np.asarray(reply["actions"], dtype=np.float32)
                if actions.ndim != 2 or not np.all(np.isfinite(actions)):  # never a NaN onto a robot
                    raise OutputError(f"the policy returned a chunk of shape {actions.shape} with non-finite values")
                infer_ms = (time.perf_counter() - start) * 1000
                reply.update(actions=actions, server_timing={"infer_ms": infer_ms})
                self._count("clipped_values", int(reply.get("clipped", 0)))
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                self._count("requests")  # before the reply: a client may read the counts right after it
                await ws.send(wire.packb(reply))
            except ConnectionClosed:
                return
            except RequestError as exc:
                self._count("errors")
                await self._error(ws, f"bad request: {exc}")
            except OutputError as exc:
                self._count("errors")
                self._count("bad_outputs")
                log.error("refused to send a chunk: %s", exc)
                await self._error(ws, f"inference failed: {exc}; nothing was sent to the robot")
            except Exception as exc:  # noqa: BLE001 - the server outlives any single failed inference
                self._count("errors")
                log.error("inference failed:\n%s", traceback.format_exc())
                await self._error(ws, f"inference failed: {type(exc).__name__}: {exc}")
            prev_total_ms = (time.perf_counter() - start) * 1000

    @staticmethod
    async def _error(ws: ServerConnection, text: str) -> None:
        try:
            await ws.send(f"xr0 policy server: {text}")  # a text frame is an error in openpi's protocol
        except ConnectionClosed:
            pass
