"""msgpack with NumPy arrays, in the encoding openpi's client uses (so its client and ours interoperate).

Arrays travel as {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": [...]};
NumPy scalars as {b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}. Object, void and complex
dtypes are refused on both sides: a message must never be able to run code or smuggle pickles.
"""
from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_REFUSED = ("V", "O", "c")


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED:
        raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in _REFUSED:
            raise ValueError(f"array dtype {dtype} is not accepted")
        shape = tuple(int(s) for s in obj[b"shape"])
        data = obj[b"data"]
        if any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
            raise ValueError(f"array of shape {shape} and dtype {dtype} does not match its {len(data)} bytes")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # writable, owns its memory
    if b"__npgeneric__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in _REFUSED:
            raise ValueError(f"scalar dtype {dtype} is not accepted")
        return dtype.type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
