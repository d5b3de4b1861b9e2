"""A stand-in backbone implementing the Backbone contract (xr0.backbones.protocol) without its optional capabilities,
for stage tests that need no real tiny VLM (test-only)."""
from __future__ import annotations

import torch
from torch import nn

from xr0.types import VLMContext


class TinyBackbone(nn.Module):
    """Character tokens + mean image colour → a few residual MLP layers with per-layer K/V."""

    scales = {"tiny": {"kwargs": {}, "image_hw": (8, 8)}}

    def __init__(self, hidden=32, num_layers=2, num_kv_heads=2, head_dim=8, vocab=64, freeze=False):
        super().__init__()
        self.hidden_size, self.num_layers, self.num_kv_heads, self.head_dim = hidden, num_layers, num_kv_heads, head_dim
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, hidden)
        self.img = nn.Linear(3, hidden)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU())
                                    for _ in range(num_layers))
        self.kv = nn.ModuleList(nn.Linear(hidden, 2 * num_kv_heads * head_dim) for _ in range(num_layers))
        self.lm_head = nn.Linear(hidden, vocab)
        self.frozen = False
        if freeze:
            self.freeze()

    def freeze(self):
        self.requires_grad_(False)
        self.frozen = True
        self.eval()

    def train(self, mode=True):
        return super().train(mode and not self.frozen)

    def static_prefill(self):
        return None  # declared: no fast path

    def cost(self, *args):
        return None  # declared: no analytic cost

    def input_spec(self):
        return {"factor": 1}

    @staticmethod
    def spec_factor(kwargs):
        return 1

    def encode_images(self, inputs):
        return self.img(inputs["pixel"])

    def fsdp_wrap_modules(self):
        return set()

    def _ids(self, text):
        return [1 + ord(c) % (self.vocab - 1) for c in text][:12]

    def prepare(self, images, image_mask, texts, answers=None):
        seqs, labels = [], []
        for i, t in enumerate(texts):
            p = self._ids(t)
            a = self._ids(answers[i]) if answers is not None else []
            seqs.append(p + a)
            labels.append([-100] * len(p) + a)
        n = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), n, dtype=torch.long)
        lab = torch.full((len(seqs), n), -100)
        mask = torch.zeros(len(seqs), n, dtype=torch.bool)
        for i, (s, l) in enumerate(zip(seqs, labels)):  # left padding: every prompt ends at position n
            ids[i, n - len(s):], lab[i, n - len(s):], mask[i, n - len(s):] = torch.tensor(s), torch.tensor(l), True
        m = image_mask.float()[:, :, None, None, None]
        pix = (images * m).sum(dim=(1, 3, 4)) / (m.flatten(1).sum(1, keepdim=True) * images.shape[-1] * images.shape[-2]).clamp_min(1)
        out = {"input_ids": ids, "attention_mask": mask, "pixel": pix.reshape(len(seqs), 3)}
        if answers is not None:
            out["labels"] = lab
        dev = self.embed.weight.device
        return {k: v.to(dev) for k, v in out.items()}

    def _run(self, inputs, extra_embeds=None):
        x = self.embed(inputs["input_ids"]) + self.img(inputs["pixel"])[:, None]
        mask = inputs["attention_mask"]
        if extra_embeds is not None:
            x = torch.cat([x, extra_embeds.to(x.dtype)], 1)
            mask = torch.cat([mask, torch.ones(x.shape[0], extra_embeds.shape[1], dtype=torch.bool, device=x.device)], 1)
        kvs = []
        for layer, kv in zip(self.layers, self.kv):
            ctx = (x * mask[..., None]).cumsum(1) / mask.cumsum(1).clamp_min(1)[..., None]  # causal mean
            x = x + layer(x + ctx)
            k, v = kv(x).chunk(2, -1)
            shape = (x.shape[0], x.shape[1], self.num_kv_heads, self.head_dim)
            kvs.append((k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)))
        return x, mask, kvs

    def rope(self, pos):
        inv = 1.0 / (1e4 ** (torch.arange(0, self.head_dim, 2, device=pos.device).float() / self.head_dim))
        ang = pos.float()[..., None] * inv
        emb = torch.cat([ang, ang], -1)
        return emb.cos(), emb.sin()

    def context(self, inputs, num_layers, extra_embeds=None):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            x, mask, kvs = self._run(inputs, extra_embeds)
        n = 0 if extra_embeds is None else extra_embeds.shape[1]
        s = x.shape[1] - n
        kvs = kvs[-num_layers:]
        return VLMContext(keys=[k[:, :, :s] for k, _ in kvs], values=[v[:, :, :s] for _, v in kvs],
                          attention_mask=mask[:, :s], next_position=mask[:, :s].sum(1).long(), rope=self.rope,
                          hidden=x[:, :s], extra_hidden=x[:, s:] if n else None)

    def lm_loss(self, inputs):
        x, _, _ = self._run(inputs)
        logits = self.lm_head(x)
        labels = inputs["labels"]
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return loss, logits, labels


def robot_batch(b=2, t=4, v=1, hw=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    am = torch.zeros(b, 32, dtype=torch.bool)
    am[:, :7] = True
    return {
        "images": torch.rand(b, v, 3, hw, hw, generator=g), "image_mask": torch.ones(b, v, dtype=torch.bool),
        "instruction": [f"pick {i}" for i in range(b)], "state": torch.randn(b, 32, generator=g) * am,
        "actions": torch.randn(b, t, 32, generator=g) * am[:, None], "action_mask": am,
        "chunk_mask": torch.ones(b, t, dtype=torch.bool), "embodiment": ["sim"] * b,
    }


def vl_batch(b=2, v=1, hw=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(b, v, 3, hw, hw, generator=g), "image_mask": torch.ones(b, v, dtype=torch.bool),
            "prompt": [f"what is {i}?" for i in range(b)], "answer": [f"it is {i}" for i in range(b)]}


class FlowHead(nn.Module):
    """A tiny velocity model on pooled VLM keys (stand-in for the DiT in stage-logic tests)."""

    def __init__(self, kv_dim=16, t=4, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(kv_dim + 32 + 32 + 1, width), nn.SiLU(), nn.Linear(width, 32))

    def forward(self, ctx, state, x, tau):
        k = ctx.keys[-1].mean(dim=(1, 2)).flatten(1)  # (B, hd)
        v = ctx.values[-1].mean(dim=(1, 2)).flatten(1)
        c = torch.cat([k, v], -1)[:, None].expand(-1, x.shape[1], -1)
        s = state[:, None].expand(-1, x.shape[1], -1)
        return self.net(torch.cat([c, s, x, tau[..., None]], -1))


class FakePolicy(nn.Module):
    """Implements the Policy contract (context, flow_loss, predict_chunk) simply, for stage-logic tests."""

    def __init__(self, backbone, head, mask, tau_sampler, flow_steps=5):
        super().__init__()
        self.backbone, self.head, self.mask, self.tau_sampler = backbone, head, mask, tau_sampler
        self.flow_steps = flow_steps
        self.calls = []

    def context(self, batch):
        inputs = self.backbone.prepare(batch["images"], batch["image_mask"], list(batch["instruction"]))
        return self.backbone.context(inputs, 1)

    def flow_loss(self, batch, ctx, prefix_len=None, reweight=False, repeat=1):
        self.calls.append({"prefix_len": prefix_len, "reweight": reweight, "repeat": repeat})
        a = batch["actions"].repeat(repeat, 1, 1)
        state = batch["state"].repeat(repeat, 1)
        ctx_r = type(ctx)(keys=[k.repeat(repeat, 1, 1, 1) for k in ctx.keys],
                          values=[v.repeat(repeat, 1, 1, 1) for v in ctx.values],
                          attention_mask=ctx.attention_mask, next_position=ctx.next_position, rope=ctx.rope)
        tau = torch.rand(a.shape[0], 1).expand(-1, a.shape[1])
        eps = torch.randn_like(a)
        x = tau[..., None] * a + (1 - tau[..., None]) * eps
        v = self.head(ctx_r, state, x, tau)
        loss = ((v - (a - eps)) ** 2 * batch["action_mask"].repeat(repeat, 1)[:, None]).mean()
        return {"loss": loss, "flow_mse": loss.detach()}

    def predict_chunk(self, batch, prefix=None, steps=5):
        ctx = self.context(batch)
        x = torch.randn_like(batch["actions"])
        for i in range(steps):
            tau = torch.full(x.shape[:2], i / steps)
            x = x + self.head(ctx, batch["state"], x, tau) / steps
        return x
