"""Surviving bad steps and bad files: a non-finite guard, atomic checkpoint writes, and a resume that falls
back past corrupt checkpoints.

Lightning's own TorchCheckpointIO saves through an fsspec transaction whose temporary file lives in
`tempfile.gettempdir()` and is moved with `shutil.move`: with TMPDIR on another filesystem that move is a
copy into the run folder, and a SIGKILL during it leaves a half-written `*.ckpt`. `AtomicCheckpointIO` writes
a temporary file beside the destination, fsyncs it and renames it into place (one `os.replace`), so a
checkpoint name only ever points at a complete file.
"""
from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class NonFiniteError(RuntimeError):
    pass


class NonFiniteGuard(L.Callback):
    """Skip optimiser steps whose gradients are not finite; stop after `max_consecutive` in a row.

    Setting every grad to None makes torch optimisers skip those parameters, so the weights and the
    AdamW moments stay as they were (the LR scheduler still advances one step).
    """

    def __init__(self, max_consecutive: int = 5):
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._source = "?"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._source = describe_batch(batch, batch_idx)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        finite = all(bool(torch.isfinite(_local(g)).all()) for g in grads)
        # sharded (FSDP) ranks each see a part of the gradients: skip on all of them or on none
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        for g in optimizer.param_groups:
            for p in g["params"]:
                p.grad = None
        pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, reduce_fx="max")
        warnings.warn(f"step {trainer.global_step}: non-finite loss/gradients, step skipped (batch {self._source})")
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} consecutive non-finite steps, last at global step {trainer.global_step} "
                f"(batch {self._source}). Lower the learning rate, check the data source for NaN/inf, or use "
                f"precision 32 to locate the overflow."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor (FSDP2) holds this rank's shard


def describe_batch(batch: Any, batch_idx: int) -> str:
    """Where a batch came from, for error messages: its sources/embodiments and index."""
    parts = [f"index {batch_idx}"]
    if isinstance(batch, dict):
        for key in ("source", "kind", "embodiment", "__url__"):
            if key in batch:
                val = batch[key]
                if isinstance(val, (list, tuple)):
                    val = sorted({str(v) for v in val})
                parts.append(f"{key}={val}")
    return ", ".join(parts)


# ---------------------------------------------------------------- atomic writes
TMP_MARK = ".tmp-"  # `.<name>.tmp-<pid>-<hex>`: a write in progress (or killed); removed at the next start
OLD_MARK = ".old-"  # `.<name>.old-<pid>-<hex>`: a sharded checkpoint being replaced
CORRUPT_MARK = ".corrupt-"  # `<stem>.corrupt-<time>.ckpt`: an unreadable checkpoint a resume set aside
LEDGER = ".xr0-owned"  # "<run id> <file name>" per checkpoint a run wrote: rotation touches only its own


def _hidden(path: Path, mark: str) -> Path:
    return path.with_name(f".{path.name}{mark}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a crash of the machine, not only the process, keeps it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that `path` is either its old content or the complete new one, never a part: a
    temporary file in the same folder (same filesystem), fsync, then one `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden(path, TMP_MARK)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def replace_dir(tmp: Path, path: Path) -> None:
    """Move a completely written directory `tmp` onto `path`. Directories cannot be swapped in one rename, so
    the old one is first renamed aside; `clean_stale` puts it back if the process dies in between."""
    old = None
    if path.exists():
        old = _hidden(path, OLD_MARK)
        os.rename(path, old)
    os.rename(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(folder: str | Path) -> list[str]:
    """Remove what killed writes left in a checkpoint folder (call with the run folder locked). Returns the
    names removed; an old sharded checkpoint whose replacement never landed is restored instead."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith("."):
            continue
        for mark in (OLD_MARK, TMP_MARK):
            if mark in entry.name:
                target = folder / entry.name[1:entry.name.index(mark)]
                if mark == OLD_MARK and not target.exists():
                    os.rename(entry, target)
                else:
                    _remove(entry)
                    removed.append(entry.name)
                break
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO with local saves through `atomic_write` (remote URLs keep fsspec)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


# ---------------------------------------------------------------- resume
def _step_of(path: Path) -> float:
    m = re.search(r"step(\d+)", path.name)
    return float(m.group(1)) if m else math.inf  # last.ckpt is newest


def _loads(path: Path, key: str) -> int | None:
    """The checkpoint's global_step (-1 where it has none) when it loads and holds `key`, else None."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(ckpt, dict) or key not in ckpt:
        return None
    return int(ckpt.get("global_step", -1))


def checkpoint_step(path: Path) -> int | None:
    """global_step of a complete checkpoint (a file, or a sharded folder); None when it is unreadable."""
    path = Path(path)
    if path.is_dir():  # sharded: torch.distributed.checkpoint's .metadata (written last) + Lightning's meta.pt
        return _loads(path / "meta.pt", "global_step") if (path / ".metadata").is_file() else None
    return _loads(path, "state_dict")


def checkpoint_is_readable(path: Path) -> bool:
    return checkpoint_step(path) is not None


def _candidates(ckpt_dir: Path) -> list[Path]:
    """Checkpoints in a folder, newest first (last.ckpt, then by step), without temporaries or set-aside files."""
    found = [p for p in Path(ckpt_dir).glob("*.ckpt") if not p.name.startswith(".") and CORRUPT_MARK not in p.name]
    return sorted(found, key=lambda p: (_step_of(p), p.stat().st_mtime), reverse=True)


def _scan(ckpt_dir: Path) -> tuple[Path, list[Path]]:
    """The readable checkpoint with the most steps (last.ckpt on a tie) and the unreadable ones, each loaded once."""
    candidates = _candidates(ckpt_dir)
    if not candidates:
        raise FileNotFoundError(f"--resume last: no checkpoints in {ckpt_dir}; start without --resume")
    best, best_step, unreadable = None, None, []
    for cand in candidates:
        step = checkpoint_step(cand)
        if step is None:
            unreadable.append(cand)
            warnings.warn(f"checkpoint {cand} is corrupt or truncated; falling back to the previous one")
        elif best_step is None or step > best_step:
            best, best_step = cand, step
    if best is None:
        raise FileNotFoundError(f"--resume last: every checkpoint in {ckpt_dir} is unreadable "
                                f"({', '.join(p.name for p in candidates)})")
    return best, unreadable


def find_resume_checkpoint(ckpt_dir: Path) -> Path:
    """The readable checkpoint with the most steps in a run's checkpoint folder (last.ckpt on a tie); warns about
    each corrupt one. By step, not by name: a kill between a run's step save and its last.ckpt save leaves
    last.ckpt one save behind, and resuming from it would throw the newer checkpoint's steps away."""
    return _scan(ckpt_dir)[0]


def recover_last(ckpt_dir: Path) -> Path:
    """`--resume last` with the folder put right: every unreadable checkpoint is renamed
    `<stem>.corrupt-<time>.ckpt`, and `last.ckpt` is made the readable one with the most steps (a hard link, or a
    copy), so what recipes, `init_from` and the README point at is the checkpoint the run continues from. Returns
    last.ckpt."""
    ckpt_dir = Path(ckpt_dir)
    good, unreadable = _scan(ckpt_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for bad in unreadable:
        aside = bad.with_name(f"{bad.stem}{CORRUPT_MARK}{stamp}{bad.suffix}")
        n = 1
        while aside.exists():
            aside, n = bad.with_name(f"{bad.stem}{CORRUPT_MARK}{stamp}-{n}{bad.suffix}"), n + 1
        os.rename(bad, aside)
        warnings.warn(f"kept the unreadable {bad.name} as {aside.name}; resuming from {good.name}")
    last = ckpt_dir / "last.ckpt"
    if good != last:
        tmp = _hidden(last, TMP_MARK)
        if good.is_dir():
            shutil.copytree(good, tmp)
        else:
            try:
                os.link(good, tmp)  # saves replace files, never rewrite them in place: a link is safe to share
            except OSError:
                shutil.copy2(good, tmp)
        if good.is_dir():
            replace_dir(tmp, last)
        else:
            os.replace(tmp, last)
            fsync_dir(ckpt_dir)
    return last


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"


class RollingCheckpoint(L.pytorch.callbacks.ModelCheckpoint):
    """ModelCheckpoint that keeps the newest `keep_last_k` step checkpoints of *this run* on disk.

    A run has an id, stored in its checkpoints and taken over by a resume; every file it writes is entered in
    the folder's ledger (`.xr0-owned`). Rotation deletes only ledger entries with this run's id: files an
    earlier, killed process of the same run wrote after its last recorded state (which the resumed run would
    not otherwise know of) go; files another run or a person put there stay. Names never get a `-v1`: the
    run folder is locked to one run, so a name that exists is this run's own earlier write.
    """

    def __init__(self, keep_last_k: int, run_id: str | None = None, **kwargs: Any):
        super().__init__(save_top_k=keep_last_k, monitor="step", mode="max", enable_version_counter=False, **kwargs)
        self.keep_last_k = keep_last_k
        self.run_id = run_id or new_run_id()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "xr0_run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.run_id = state_dict.get("xr0_run_id", self.run_id)

    def owned(self) -> set[str]:
        """Names of the checkpoints this run wrote into its folder."""
        ledger = Path(self.dirpath or ".") / LEDGER
        if not ledger.is_file():
            return set()
        rows = (line.split(" ", 1) for line in ledger.read_text().splitlines() if " " in line)
        return {name for rid, name in rows if rid == self.run_id}

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if not trainer.is_global_zero or not self.dirpath:
            return
        with open(Path(self.dirpath) / LEDGER, "a") as f:
            f.write(f"{self.run_id} {Path(filepath).name}\n")
        if self.keep_last_k > 0:
            steps = [Path(self.dirpath) / n for n in self.owned() if n.startswith("step")]
            steps = sorted((p for p in steps if p.exists()), key=_step_of, reverse=True)
            for old in steps[self.keep_last_k:]:
                _remove(old)
