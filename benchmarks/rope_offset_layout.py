"""What a stage-2 DiT loses when it runs in another RoPE layout than it was trained in (a benchmark, not a test).

Trains a tiny stage 2 (frozen tiny Qwen3-VL, DiT from scratch, causal mask) twice with the same data, seed and
steps, once with `stage.head.rope_offset` 0 and once with 10, then evaluates the flow MSE of both on the same
held-out batch with the same (ε, τ) draws, at offset 0 and at offset 10, without a prefix: the Δt_c = 0 half of
the samples an async post-training sees, where every action token is noisy and the offset moves them all. The
diagonal is each model in its own layout; the off-diagonal is what an ablation arm pays when it post-trains in
another layout than its stage 2 (README, "Pre-training layout").

Default: recipes/tiny/stage2.yaml on synthetic data (the last --heldout samples never trained on). With --card (a
robot card with several shards, e.g. from `xr0 sim collect`), the last shard is held out and the rest trains:

    .venv/bin/python benchmarks/rope_offset_layout.py --steps 600 --seeds 0 1 --out runs/bench/rope_layout
    xr0 sim collect --tasks reach-v3 --episodes 40 --out runs/bench/mw
    .venv/bin/python benchmarks/rope_offset_layout.py --card runs/bench/mw/metaworld.yaml \
        --recipe plugins/xr0-metaworld/recipes/metaworld_tiny/stage2.yaml --batch 32 --steps 600 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

OFFSETS = (0, 10)
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "stage2.yaml"


def split_card(card_path: str, out: Path) -> tuple[Path, Path]:
    """Two cards over one card's shards: all but the last to train, the last held out; one statistics file."""
    import dataclasses

    from xr0.data.cards import load_card, shard_list, write_card

    card = load_card(card_path)
    shards = shard_list(card.urls)
    if len(shards) < 2:
        raise SystemExit(f"{card_path} has {len(shards)} shard; the held-out split needs at least 2 (collect more "
                         f"episodes or write it with a smaller maxcount)")
    stats = str(Path(card.stats_path).resolve())
    train = dataclasses.replace(card, shards="::".join(shards[:-1]), stats=stats, num_samples=None)
    heldout = dataclasses.replace(card, shards=shards[-1], stats=stats, num_samples=None)
    return (write_card(train, out / "cards" / f"{card.name}.yaml"),
            write_card(heldout, out / "cards" / "heldout" / f"{card.name}.yaml"))


def heldout_from_card(card: Path, tree: dict, n: int) -> dict:
    """The first n samples of the held-out card, read the way training reads (same chunk, images, statistics)."""
    import torch as th

    from xr0.config import build

    node = {**tree["data"], "card": str(card), "cards": None, "weights": None, "batch_size": n, "num_workers": 0,
            "shuffle_buffer": 0, "shard_shuffle": 0}
    node = {k: v for k, v in node.items() if v is not None}
    dm = build(node, "data")
    backbone = build(tree["stage"]["backbone"], "backbone")
    dm.configure(backbone.input_spec() if hasattr(backbone, "input_spec") else {})
    try:
        batch = dm.account(next(iter(dm.train_dataloader())))
    except StopIteration:
        raise SystemExit(f"the held-out shard ({card}) holds fewer than --heldout {n} samples; lower --heldout") from None
    return {k: v for k, v in batch.items() if th.is_tensor(v) or isinstance(v, list)}


def train(offset: int, seed: int, args, out: Path) -> Path:
    """One tiny stage 2 at this rope offset; a finished run (its `done` marker) is reused."""
    from xr0.run import fit

    run = out / f"stage2_offset{offset}_seed{seed}"
    ckpt = run / "checkpoints" / "last.ckpt"
    if (run / "done").is_file() and ckpt.is_file():
        return ckpt
    if run.exists():  # a half-trained run: start it again (fit never overwrites a folder that holds checkpoints)
        import shutil

        shutil.rmtree(run)
    fit(args.recipe, [f"stage.head.rope_offset={offset}", "stage.init_from=null", f"run.out_dir={run}",
                      f"run.seed={seed}", f"trainer.max_steps={args.steps}", f"data.batch_size={args.batch}",
                      "stage.plot_every_n_steps=0", f"run.checkpoint_every_n_steps={args.steps}",
                      "trainer.enable_progress_bar=true", "trainer.enable_model_summary=false"] + args.data_overrides)
    (run / "done").write_text("ok\n")
    return ckpt


@torch.no_grad()
def heldout_mse(ckpt: Path, offset: int, batch: dict, draws: int, seed: int = 1234) -> float:
    """Flow MSE on the held-out batch with the DiT's noisy tokens at `offset`; the same ε and τ for every call."""
    from xr0.checkpoint import load_policy

    policy = load_policy(ckpt).policy.eval()
    policy.head.rope_offset = offset
    ctx = policy.context(batch)
    torch.manual_seed(seed)
    return float(policy.flow_loss(batch, ctx, prefix_len=None, repeat=draws)["mse"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(RECIPE), help="a stage-2 recipe (its data: synthetic, or --card)")
    ap.add_argument("--card", default=None, help="a robot card of >= 2 shards: the last is held out")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--samples", type=int, default=256, help="training samples")
    ap.add_argument("--heldout", type=int, default=64, help="held-out samples (the evaluation batch)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="a recipe override key=value")
    ap.add_argument("--draws", type=int, default=16, help="(ε, τ) draws per held-out sample")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="runs/bench/rope_layout")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (more oversubscribe a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from xr0.config import load_recipe, validate

    out = Path(args.out)
    t0 = time.perf_counter()
    if args.card:
        train_card, heldout_card = split_card(args.card, out)
        args.data_overrides = [f"data.card={train_card}"] + args.overrides
        tree = validate(load_recipe(args.recipe, ["stage.init_from=null"] + args.data_overrides))
        batch = heldout_from_card(heldout_card, tree, args.heldout)
    else:  # the recipe's synthetic data; its last --heldout samples are never trained on
        from xr0.data.synthetic import SyntheticData

        args.data_overrides = [f"data.num_samples={args.samples + args.heldout}", f"data.holdout={args.heldout}"]
        args.data_overrides += args.overrides
        tree = validate(load_recipe(args.recipe, ["stage.init_from=null"] + args.data_overrides))
        node = {k: v for k, v in tree["data"].items() if k != "name"}
        batch = SyntheticData(**node).heldout_batch()
    rows = []
    for seed in args.seeds:
        for trained in OFFSETS:
            ckpt = train(trained, seed, args, out)
            mse = {f"eval_offset{e}": heldout_mse(ckpt, e, batch, args.draws) for e in OFFSETS}
            rows.append({"seed": seed, "trained_offset": trained, **mse})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| trained at | flow MSE, eval at offset 0 | flow MSE, eval at offset 10 | other layout vs own |",
             "|---|---|---|---|"]
    for trained in OFFSETS:
        own = [r[f"eval_offset{trained}"] for r in rows if r["trained_offset"] == trained]
        other_off = OFFSETS[1 - OFFSETS.index(trained)]
        other = [r[f"eval_offset{other_off}"] for r in rows if r["trained_offset"] == trained]
        e0 = [r["eval_offset0"] for r in rows if r["trained_offset"] == trained]
        e10 = [r["eval_offset10"] for r in rows if r["trained_offset"] == trained]
        change = " / ".join(f"{100 * (o / w - 1):+.0f}%" for o, w in zip(other, own))
        lines.append(f"| offset {trained} | {' / '.join(f'{v:.3f}' for v in e0)} | "
                     f"{' / '.join(f'{v:.3f}' for v in e10)} | {change} |")
    table = "\n".join(lines)
    wall = time.perf_counter() - t0
    data = f"card {args.card} (last shard held out)" if args.card else f"synthetic, {args.samples} training samples"
    print(f"\nseeds {', '.join(map(str, args.seeds))} (values per seed, separated by /); {args.recipe}; {data}; "
          f"{args.steps} steps, batch {args.batch}; {args.heldout} held-out samples, {args.draws} draws each; "
          f"{wall:.0f} s\n\n{table}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "wall_s": wall}, indent=2))
    (out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
