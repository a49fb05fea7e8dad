"""The network's inference form: the arithmetic search runs, every batch norm folded; torch-free.

The first pair layer is symmetric and splits into one half per item (PresenceNet.project), so
search computes per item, once, the folded halves

    PA = s * W_a h,  PB = s * W_b h + shift   (s, shift: the pair batch norm)

and a pooled unit embedding (closeness); per pair it then only runs the head, given here as
plain grouped weights with the batch norms folded in (InferenceHead). The search engine asks
for this form once (ModelBase.inference_form()) instead of reaching into the layers.

Everything here is numpy, folded from the model's state dict (ModelBase.state_arrays(), the
same arrays whether the weights were loaded as a torch network or by model.arrays), so the
folding is written once for both search backends (search.backends). `Tower` is the item-only
part (embed, then project) in numpy with its batch norms folded too: the numpy backend's
query side and database side. The torch backend computes that part with the network itself
(PresenceNet.embed, .project); tests/test_backends.py holds the two to float tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from soundsearch.model.arrays import BN_EPS
from soundsearch.presence import STATES

if TYPE_CHECKING:
    from soundsearch.model.arrays import ModelBase
    from soundsearch.model.config import ModelConfig


def fold_bn(state: Mapping[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch norm `prefix` as y = s * x + shift, float64."""
    var = np.asarray(state[f"{prefix}.running_var"], np.float64)
    mean = np.asarray(state[f"{prefix}.running_mean"], np.float64)
    weight = np.asarray(state[f"{prefix}.weight"], np.float64)
    bias = np.asarray(state[f"{prefix}.bias"], np.float64)
    s = weight / np.sqrt(var + BN_EPS)
    return s, bias - mean * s


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass
class InferenceHead:
    """The pair-specific part of a PresenceNet with batch norm folded in, grouped (G, ...)."""

    groups: int
    per_group: int  # categories per group (C, or 1 per sub-model)
    width: int  # G * K1: values per step of each half
    pair_scale: np.ndarray  # (G*K1,)
    pair_shift: np.ndarray  # (G*K1,)
    layers: list[tuple[np.ndarray, np.ndarray]]  # (G, fin, fout) weight, (G, 1, fout) bias
    out_w: np.ndarray  # (G, last, 4 * per_group): 3 state columns k-major, then attention
    out_b: np.ndarray  # (G, 1, 4 * per_group)
    attention: bool
    steps: int

    @property
    def n_categories(self) -> int:
        return self.groups * self.per_group

    def flops_per_step(self) -> int:
        """Floating-point operations per (query, item) pair and step, matrix products and adds."""
        g = self.groups
        flops = 3 * self.width  # two adds and the sum of both orders
        for w, _ in self.layers:
            flops += 2 * g * w.shape[1] * w.shape[2]
        flops += 2 * g * self.out_w.shape[1] * self.out_w.shape[2]
        return flops


def fold_head(state: Mapping[str, np.ndarray], config: "ModelConfig") -> InferenceHead:
    """The pair head of a state dict with its batch norms folded (in float64, then float32)."""
    g = config.groups
    per_group = config.outputs_per_group
    s, shift = fold_bn(state, "pair_norm")
    layers = []
    for j in range(len(config.head) - 1):
        w = np.asarray(state[f"head.{j}.linear.weight"], np.float64)  # (G, fin, fout)
        bs, bshift = fold_bn(state, f"head.{j}.norm")
        fout = w.shape[2]
        layers.append((_f32(w * bs.reshape(g, 1, fout)), _f32(bshift.reshape(g, 1, fout))))
    nstates = len(STATES)
    sw = np.asarray(state["state.weight"], np.float32)  # (G, last, per_group * 3), columns category-major
    sb = np.asarray(state["state.bias"], np.float32).reshape(g, per_group * nstates)
    last = sw.shape[1]
    # State columns reordered k-major (all categories' "both", then "neither", then "differs")
    # so the pooling reads contiguous runs of categories.
    sw = sw.reshape(g, last, per_group, nstates).transpose(0, 1, 3, 2).reshape(g, last, nstates * per_group)
    sb = sb.reshape(g, per_group, nstates).transpose(0, 2, 1).reshape(g, nstates * per_group)
    if config.attention:
        aw = np.asarray(state["attend.weight"], np.float32)
        ab = np.asarray(state["attend.bias"], np.float32).reshape(g, per_group)
    else:
        aw = np.zeros((g, last, per_group), np.float32)
        ab = np.zeros((g, per_group), np.float32)
    return InferenceHead(
        groups=g,
        per_group=per_group,
        width=g * config.head[0],
        pair_scale=_f32(s),
        pair_shift=_f32(shift),
        layers=layers,
        out_w=_f32(np.concatenate([sw, aw], axis=2)),
        out_b=_f32(np.concatenate([sb, ab], axis=1).reshape(g, 1, (nstates + 1) * per_group)),
        attention=config.attention,
        steps=config.steps,
    )


def _grouped(x: np.ndarray, w: np.ndarray, shared: bool) -> np.ndarray:
    """PresenceNet's GroupedLinear without bias: (rows, G*fin) (or (rows, fin) read by every
    group when `shared`) x (G, fin, fout) -> (rows, G*fout)."""
    g, fin, fout = w.shape
    if g == 1:
        return x @ w[0]
    if shared:
        return x @ w.transpose(1, 0, 2).reshape(fin, g * fout)
    rows = x.shape[0]
    y = np.matmul(x.reshape(rows, g, fin).transpose(1, 0, 2), w)  # (G, rows, fout)
    return y.transpose(1, 0, 2).reshape(rows, g * fout)


@dataclass
class Tower:
    """The item-only part of the network in numpy, batch norms folded: embed, then project."""

    config: "ModelConfig"
    blocks: list[tuple[np.ndarray, np.ndarray, bool]]  # (G, fin, fout) weight, (G*fout,) shift, shared input
    proj_a: np.ndarray  # (G, pair_in, K1), the pair batch norm's scale folded in
    proj_b: np.ndarray
    proj_b_shift: np.ndarray  # (G*K1,): the pair batch norm's shift
    proj_shared: bool

    @classmethod
    def of(cls, state: Mapping[str, np.ndarray], config: "ModelConfig") -> "Tower":
        g = config.groups
        blocks = []
        if config.siamese:
            for i in range(len(config.tower)):
                w = np.asarray(state[f"tower.{i}.linear.weight"], np.float64)
                s, shift = fold_bn(state, f"tower.{i}.norm")
                fout = w.shape[2]
                blocks.append((_f32(w * s.reshape(g, 1, fout)), _f32(shift), i == 0 and g > 1))
        s, shift = fold_bn(state, "pair_norm")
        k1 = config.head[0]
        scale = s.reshape(g, 1, k1)
        return cls(
            config=config,
            blocks=blocks,
            proj_a=_f32(np.asarray(state["proj_a.weight"], np.float64) * scale),
            proj_b=_f32(np.asarray(state["proj_b.weight"], np.float64) * scale),
            proj_b_shift=_f32(shift),
            proj_shared=not config.siamese and g > 1,
        )

    def embed(self, x: np.ndarray) -> np.ndarray:
        """(n, T, D) normalised frames -> (n, T, E) tower output (PresenceNet.embed)."""
        n, t, _ = x.shape
        if self.config.context == "stats":
            ctx = np.concatenate([x.mean(1), x.std(1), x.max(1)], axis=-1).astype(np.float32)
            x = np.concatenate([x, np.broadcast_to(ctx[:, None, :], (n, t, ctx.shape[-1]))], axis=-1)
        h = x.reshape(n * t, -1)
        for w, shift, shared in self.blocks:
            h = _grouped(h, w, shared)
            h += shift
            np.maximum(h, 0.0, out=h)
        return h.reshape(n, t, -1)

    def sides(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, T, D) normalised frames -> the folded halves PA, PB (n, T, G*K1) and the pooled
        unit embedding (n, E) of each item, float32."""
        n, t, _ = x.shape
        h = self.embed(np.asarray(x, dtype=np.float32))
        flat = h.reshape(n * t, -1)
        pa = _grouped(flat, self.proj_a, self.proj_shared).reshape(n, t, -1)
        pb = _grouped(flat, self.proj_b, self.proj_shared)
        pb += self.proj_b_shift
        pooled = h.mean(1)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (np.ascontiguousarray(pa, np.float32), np.ascontiguousarray(pb.reshape(n, t, -1), np.float32),
                np.ascontiguousarray(pooled, np.float32))


@dataclass
class InferenceForm:
    """A model as search uses it: the folded head, and the item-side computation in numpy."""

    model: "ModelBase"
    head: InferenceHead
    tower: Tower
    embed_width: int  # values of the pooled tower embedding

    @classmethod
    def of(cls, model: "ModelBase") -> "InferenceForm":
        config = model.config
        state = model.state_arrays()
        embed_width = config.groups * config.tower[-1] if config.siamese else config.input_dim
        return cls(model=model, head=fold_head(state, config), tower=Tower.of(state, config), embed_width=embed_width)

    def sides(self, feats_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw (n, T, D) features -> the folded halves PA, PB (n, T, G*K1) and the pooled unit
        embedding (n, E) of each item (numpy)."""
        return self.tower.sides(self.model.normalise(feats_raw))
