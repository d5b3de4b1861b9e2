"""No train/serve skew: for random robots (mixed relative/absolute dims, odd canonical slots), 1–4 cameras of
different native sizes and frames missing at random, the batch the training reader builds for a recorded timestep
equals, bit for bit, the batch the server's processor builds from the same raw observation, and the model-side
actions decode back to the recorded robot-unit actions."""
from __future__ import annotations

import contextlib
import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xr0.data.module import WebDatasetData
from xr0.data.writer import write_episodes
from xr0.embodiments import Embodiment
from xr0.processor import collate, finish_images
from xr0.registry import EMBODIMENTS

_names = itertools.count()


@contextlib.contextmanager
def registered(emb: Embodiment):
    """The card's embodiment must be registered for the reader; the registry has no public removal (names are
    forever in a real process), so the test takes its entry out again."""
    EMBODIMENTS.register(emb.name)(emb)
    try:
        yield emb
    finally:
        EMBODIMENTS._entries.pop(emb.name, None)


@st.composite
def cases(draw):
    a = draw(st.integers(1, 6))
    s = a + draw(st.integers(0, 3))
    slots = draw(st.permutations(range(32)))
    state_slots = draw(st.permutations(range(32)))
    relative = tuple(draw(st.lists(st.booleans(), min_size=a, max_size=a)))
    n_cams = draw(st.integers(1, 4))
    sizes = [(draw(st.integers(6, 40)), draw(st.integers(6, 40))) for _ in range(n_cams)]
    emb = Embodiment(name=f"skew_arm_{next(_names)}", action_names=tuple(f"a{i}" for i in range(a)),
                     state_names=tuple(f"s{i}" for i in range(s)), cameras=tuple(f"cam{i}" for i in range(n_cams)),
                     control_hz=10.0, chunk=draw(st.integers(1, 4)), action_low=(-5.0,) * a, action_high=(5.0,) * a,
                     relative=relative, relative_state_index=tuple(range(a)), action_slots=tuple(slots[:a]),
                     state_slots=tuple(state_slots[:s]), camera_sizes=tuple(sizes))
    return emb, draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from(["letterbox", "stretch"]))


def episodes(emb: Embodiment, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for e in range(2):
        n = int(rng.integers(2, 5))
        state = (rng.normal(0.7, 1.3, (n, emb.state_dim))).astype(np.float32)
        actions = np.clip(state[:, : emb.action_dim] + rng.normal(0.2, 0.5, (n, emb.action_dim)), -4.9, 4.9)
        images = {}
        for cam, (h, w) in zip(emb.cameras, emb.camera_sizes):
            if rng.random() < 0.15:
                continue  # the camera is missing for the whole episode
            images[cam] = [None if rng.random() < 0.3 else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                           for _ in range(n)]
        out.append({"state": state, "actions": actions.astype(np.float32), "images": images,
                    "instruction": f"task {e} of {seed % 97}"})
    return out


@settings(max_examples=20)  # deadline, health checks and the seed: the suite profile (conftest.py)
@given(cases())
def test_reader_and_server_build_the_same_batch(tmp_path_factory, case):
    emb, seed, resize = case
    eps = episodes(emb, seed)
    out = tmp_path_factory.mktemp("skew")
    with registered(emb):
        card = write_episodes(eps, out, emb.name, emb.name, progress=False, image_format="png")
        dm = WebDatasetData(card=str(card), batch_size=1, num_workers=0, shuffle_buffer=0, shard_shuffle=0,
                            image_size=[28, 56], image_resize=resize)
        dm.configure({"factor": 28, "resample": "bilinear"})
        proc = dm.processor()
        recorded = [(ep, t) for ep in eps for t in range(len(ep["actions"]))]  # the order write_episodes wrote
        n = 0
        for batch, (ep, t) in zip(dm.dataset(), recorded):
            batch = dm.account(batch)
            # the raw observation a client would send: missing frames as None or left out, at random
            frames = {c: f[t] for c, f in ep["images"].items() if f[t] is not None or (t + n) % 2}
            raw = {"state": ep["state"][t].astype(np.float64), "images": frames, "prompt": ep["instruction"]}
            served = finish_images(collate([proc.observation(raw)]))
            for k in ("images", "image_mask", "state", "action_mask"):
                assert torch.equal(batch[k], served[k]), k
            assert batch["instruction"] == served["instruction"] and batch["embodiment"] == [emb.name]
            steps = int(batch["chunk_mask"][0].sum())
            back, clipped = proc.decode(batch["actions"][0], ep["state"][t])
            want = ep["actions"][t:t + steps]
            np.testing.assert_allclose(back[:steps], want, atol=2e-5 * max(1.0, float(np.abs(want).max())))
            assert clipped == 0
            n += 1
        assert n == len(recorded)
