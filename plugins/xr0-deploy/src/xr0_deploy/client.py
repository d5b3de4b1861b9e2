"""The executor's remote policy: xr0's client for `xr0 serve` (or any openpi-protocol server).

A dropped connection raises PolicyUnavailable for that request (the executor holds the arm) and the next
request reconnects; the robot side never blocks longer than `reply_timeout`.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from xr0_deploy import wire
from xr0_deploy.protocol import PolicyError, PolicyUnavailable, RTCSpec

log = logging.getLogger("xr0.deploy.client")


class RemotePolicy:
    """ChunkPolicy over websocket; `uri` like ws://gpu-host:8000. Reconnects lazily after a drop."""

    def __init__(self, uri: str, api_key: str | None = None, connect_timeout: float = 2.0,
                 reply_timeout: float = 10.0, max_message_bytes: int = 64 * 2**20):
        if not uri.startswith(("ws://", "wss://")):
            raise ValueError(f"remote policy address must start with ws:// or wss://, got {uri!r}")
        self.uri, self.api_key = uri, api_key
        self.connect_timeout, self.reply_timeout = connect_timeout, reply_timeout
        self.max_message_bytes = max_message_bytes
        self.metadata: dict[str, Any] = {}
        self.connects = 0  # 1 after the first connection; each reconnect adds one
        self._ws: ClientConnection | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def connect(self) -> None:
        headers = {"Api-Key": self.api_key} if self.api_key else None
        try:
            ws = connect(self.uri, open_timeout=self.connect_timeout, compression=None,
                         max_size=self.max_message_bytes, additional_headers=headers)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise PolicyError(f"{self.uri} refused the API key (HTTP 401): pass the server's --api-key") from exc
            raise PolicyUnavailable(f"{self.uri} answered HTTP {status}") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise PolicyUnavailable(f"cannot reach {self.uri}: {type(exc).__name__}: {exc}") from exc
        try:
            self.metadata = wire.unpackb(ws.recv(timeout=self.reply_timeout))
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            ws.close()
            raise PolicyUnavailable(f"{self.uri} closed before sending its metadata") from exc
        self._ws = ws
        self.connects += 1
        if self.connects > 1:
            log.info("reconnected to %s (connection %d)", self.uri, self.connects)

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def infer(self, obs: dict[str, Any], prefix: np.ndarray | None = None, rtc: RTCSpec | None = None) -> np.ndarray:
        """One chunk (T, A) in robot units, or PolicyUnavailable / PolicyError."""
        if self._ws is None:
            self.connect()
        msg = dict(obs)
        if prefix is not None:
            msg["prefix_actions"] = np.asarray(prefix, dtype=np.float32)
        if rtc is not None:
            msg["rtc"] = {"frozen_steps": int(rtc.frozen_steps), "max_guidance": float(rtc.max_guidance)}
        assert self._ws is not None
        try:
            self._ws.send(wire.packb(msg))
            reply = self._ws.recv(timeout=self.reply_timeout)
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            self.close()  # a half-answered connection cannot be trusted to pair replies with requests
            raise PolicyUnavailable(f"connection to {self.uri} lost: {type(exc).__name__}: {exc}") from exc
        if isinstance(reply, str):
            raise PolicyError(reply)
        out = wire.unpackb(reply)
        if not isinstance(out, dict) or "actions" not in out:
            raise PolicyError(f"reply without 'actions' from {self.uri}")
        self.last_timing = out.get("server_timing", {})
        return np.asarray(out["actions"], dtype=np.float64)
