"""`xr0 data write|write-vl|stats|inspect|from-lerobot`: get datasets into shards + cards, and check them."""
from __future__ import annotations

import json

from xr0.registry import COMMANDS


def _load_npz_episodes(folder: str):
    """Episodes from `*.npz` files: arrays state (N,S), actions (N,A), image.<camera> (N,H,W,3) uint8, an optional
    valid.<camera> (N,) bool (False: that frame is missing), and an optional 0-d string `instruction`."""
    from pathlib import Path

    import numpy as np

    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.npz episode files (arrays state, actions, image.<camera>, instruction)")
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            images = {}
            for k in z.files:
                if k.startswith("image."):
                    cam, frames = k[6:], z[k]
                    valid = z[f"valid.{cam}"] if f"valid.{cam}" in z.files else np.ones(len(frames), bool)
                    images[cam] = [fr if ok else None for fr, ok in zip(frames, valid)]
            yield {"state": z["state"], "actions": z["actions"], "images": images,
                   "instruction": str(z["instruction"]) if "instruction" in z.files else ""}


def _write(args) -> int:
    from xr0.data import write_episodes

    card = write_episodes(_load_npz_episodes(args.episodes), args.out, args.embodiment, args.name, fps=args.fps,
                          chunk=args.chunk, maxcount=args.maxcount, license=args.license, source=args.source,
                          image_format=args.image_format)
    print(f"wrote {card}")
    return 0


def _load_vl_records(path: str, images: str | None):
    """Vision-language samples from a LLaVA-style JSON list (or JSONL): each record names its image file(s) under
    `image` (a path, or a list) relative to `images`, and holds `conversations` [{from: human|gpt, value}] (LLaVA's
    "<image>" placeholders are dropped: xr0's backbone places the images itself) or `prompt` and `answer`."""
    from pathlib import Path

    text = Path(path).read_text()
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    root = Path(images) if images else Path(path).parent
    files = []
    for i, r in enumerate(records):  # every record checked before anything is written
        ref = r.get("image", r.get("images"))
        if not ref:
            raise ValueError(f"{path} record {i}: no 'image' (a file under {root}, or a list of them)")
        files.append([root / f for f in (ref if isinstance(ref, list) else [ref])])
        missing = [str(f) for f in files[-1] if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{path} record {i}: image {missing[0]} not found (pass --images DIR, the folder "
                                    f"the paths are relative to)")
        if "conversations" not in r and (r.get("prompt") is None or r.get("answer") is None):
            raise ValueError(f"{path} record {i}: needs conversations, or prompt and answer")
    return _vl_samples(records, files)


def _vl_samples(records: list, files: list):
    import numpy as np
    from PIL import Image

    for r, paths in zip(records, files):
        frames = [np.asarray(Image.open(f).convert("RGB")) for f in paths]
        sample: dict = {"image": frames if len(frames) > 1 else frames[0]}
        if "conversations" in r:
            sample["conversations"] = [{**t, "value": t["value"].replace("<image>", "").strip()} for t in r["conversations"]]
        else:
            sample.update(prompt=r["prompt"], answer=r["answer"])
        yield sample


def _write_vl(args) -> int:
    from xr0.data import write_vl_samples

    card = write_vl_samples(_load_vl_records(args.file, args.images), args.out, args.name, maxcount=args.maxcount,
                            license=args.license, source=args.source or f"xr0 data write-vl {args.file}")
    print(f"wrote {card} (kind: vl); mix it into stage 1 with data.cards: [..., {card}] and data.vl_ratio: \"1:6\"")
    return 0


def _stats(args) -> int:
    from xr0.data.tools import compute_stats

    stats = compute_stats(args.card, reservoir=args.reservoir)
    a = stats["actions"]
    print(f"{int(stats['state']['count'])} samples; per-timestep action stats over {len(a['count'])} steps "
          f"(step 0 count {int(a['count'][0])}, last step count {int(a['count'][-1])})")
    return 0


def _inspect(args) -> int:
    from xr0.data.tools import inspect_card

    info = inspect_card(args.card, sheet=args.sheet)
    print(f"card        {info['card']} ({info['kind']}, embodiment {info['embodiment']})")
    print(f"shards      {len(info['shards'])}")
    for url, n in info["samples_per_shard"].items():
        print(f"  {n:>7}  {url}")
    print(f"samples     {info['samples']}")
    if info["missing_frames"]:
        print("missing     " + ", ".join(f"{c} {n}" for c, n in info["missing_frames"].items()) + " frames")
    print("sample      " + json.dumps(info["sample"], indent=2, default=str).replace("\n", "\n            "))
    if "contact_sheet" in info:
        print(f"contact sheet: {info['contact_sheet']}")
    return 0


def _from_lerobot(args) -> int:
    from xr0.data.cards import load_card
    from xr0.data.lerobot_import import from_lerobot

    bad = [c for c in args.camera if "=" not in c]
    if bad:
        raise ValueError(f"--camera {bad[0]!r}: write XR0_NAME=FEATURE, e.g. --camera agentview=observation.images.image")
    cams = dict(c.split("=", 1) for c in args.camera) if args.camera else None
    path = from_lerobot(args.path, args.out, args.embodiment, args.name, cameras=cams, state_key=args.state,
                        action_key=args.action, fps=args.fps, chunk=args.chunk, card=args.card,
                        maxcount=args.maxcount)
    card = load_card(path)
    print(f"wrote {card.num_samples} samples into {card.shards_pattern}; card {path}, statistics {card.stats_path}")
    return 0


@COMMANDS.register("data")
class Data:
    """Datasets: write shards from episodes, compute stats, inspect a card, import LeRobot v2.x/v3."""

    @staticmethod
    def add_arguments(p):
        sub = p.add_subparsers(dest="data_command", metavar="VERB", required=True)
        w = sub.add_parser("write", help="episodes (*.npz: state, actions, image.<camera>, valid.<camera>, instruction) "
                                         "→ shards + card")
        w.add_argument("episodes", help="folder of *.npz episode files")
        w.add_argument("--embodiment", required=True)
        w.add_argument("--name", required=True)
        w.add_argument("--out", required=True, help="output folder (shards, <name>.yaml, <name>.stats.json)")
        w.add_argument("--fps", type=float, default=None, help="default: the embodiment's control rate")
        w.add_argument("--chunk", type=int, default=None, help="future actions per sample; default: the embodiment's")
        w.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
        w.add_argument("--license", default="unknown")
        w.add_argument("--source", default="")
        w.add_argument("--image-format", choices=("jpg", "png"), default="jpg",
                       help="jpg (small) or png (lossless: training sees exactly the recorded frames)")
        w.set_defaults(_verb=_write)
        v = sub.add_parser("write-vl", help="vision-language samples (LLaVA-style JSON or JSONL: image + conversations, "
                                            "or prompt/answer) → shards + a `kind: vl` card for stage 1")
        v.add_argument("file", help="JSON list or JSONL of records")
        v.add_argument("--images", default=None, help="folder the records' image paths are relative to "
                                                      "(default: the file's folder)")
        v.add_argument("--name", required=True)
        v.add_argument("--out", required=True, help="output folder (shards, <name>.yaml)")
        v.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
        v.add_argument("--license", default="unknown")
        v.add_argument("--source", default="")
        v.set_defaults(_verb=_write_vl)
        s = sub.add_parser("stats", help="recompute a card's statistics (streaming, per-timestep mean/std, q01/q99)")
        s.add_argument("card")
        s.add_argument("--reservoir", type=int, default=4096, help="samples kept per timestep for the quantiles")
        s.set_defaults(_verb=_stats)
        i = sub.add_parser("inspect", help="shards, sample count, one decoded sample, a contact sheet PNG")
        i.add_argument("card")
        i.add_argument("--sheet", default="contact_sheet.png", help="PNG path for the cameras of the first sample")
        i.set_defaults(_verb=_inspect)
        lr = sub.add_parser("from-lerobot", help="a local LeRobot v2.0/v2.1/v3.0 dataset → shards + stats (+ card); "
                                                 "resumable: rerun the same command to continue")
        lr.add_argument("path", help="the downloaded dataset folder (holds meta/info.json)")
        lr.add_argument("--card", default=None, help="a stock card (data_cards/, e.g. libero_openpi): it gives "
                                                     "everything below and where the shards go ($XR0_DATA)")
        lr.add_argument("--embodiment", default=None)
        lr.add_argument("--out", default=None, help="output folder (without --card)")
        lr.add_argument("--name", default=None, help="default: the dataset folder's name")
        lr.add_argument("--camera", action="append", default=[], metavar="XR0_NAME=FEATURE",
                        help="map a camera, e.g. scene=observation.images.top (repeatable; default: all image features)")
        lr.add_argument("--state", default=None, metavar="FEATURE", help="default: observation.state, else state")
        lr.add_argument("--action", default=None, metavar="FEATURE", help="default: action, else actions")
        lr.add_argument("--fps", type=float, default=None,
                        help="resample every stream to this rate by nearest timestamp (default: keep the dataset's)")
        lr.add_argument("--chunk", type=int, default=None, help="future actions per sample; default: the embodiment's")
        lr.add_argument("--maxcount", type=int, default=1000, help="samples per shard (about)")
        lr.set_defaults(_verb=_from_lerobot)

    @staticmethod
    def run(args):
        import sys

        from xr0.data.cards import CardError

        try:
            return args._verb(args)
        except (CardError, ValueError, ImportError, FileNotFoundError) as exc:  # user-fixable: say what, not a traceback
            print(f"xr0 data {args.data_command}: error: {exc}", file=sys.stderr)
            return 2
