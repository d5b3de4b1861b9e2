"""Run by test_resume.py: `xr0 fit` whose Nth checkpoint save stops half-way into the run folder's filesystem.

The hooks stop wherever checkpoint bytes reach that filesystem: `torch.save` into a real file (xr0's atomic
writer) or `shutil.move` (Lightning's fsspec commit, which copies when TMPDIR is on another filesystem). Half the
bytes are written and flushed, then the marker file names the file being written and the process waits to be
killed, so the test kills it at a known point instead of racing a timer. argv: MARKER RUN_DIR N -- fit args...
"""
import io
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import torch

marker, run_dir, block_at = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), int(sys.argv[3])
saves = 0
_save, _move = torch.save, shutil.move


def _in_run(path) -> bool:
    return Path(path).resolve().is_relative_to(run_dir)


def _stop_half_way(dst, data: bytes, write) -> None:
    global saves
    saves += 1
    if saves < block_at:
        write(data)
        return
    write(data[: len(data) // 2])
    marker.write_text(json.dumps({"file": str(dst), "bytes": len(data) // 2, "of": len(data)}))
    threading.Event().wait()  # until SIGKILL


def save(obj, f, *args, **kwargs):
    name = getattr(f, "name", None)
    if not isinstance(name, str) or not _in_run(name):
        return _save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    _save(obj, buf, *args, **kwargs)

    def write(data):
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

    _stop_half_way(name, buf.getvalue(), write)


def move(src, dst, *args, **kwargs):
    if not _in_run(dst) or not str(dst).endswith(".ckpt"):
        return _move(src, dst, *args, **kwargs)
    data = Path(src).read_bytes()

    def write(chunk):  # what copy2 does across filesystems: write into the destination itself
        with open(dst, "wb") as out:
            out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if len(chunk) == len(data):
            os.unlink(src)

    _stop_half_way(dst, data, write)


torch.save, shutil.move = save, move

if __name__ == "__main__":
    from xr0.cli import main

    sys.exit(main(sys.argv[sys.argv.index("--") + 1:]))
