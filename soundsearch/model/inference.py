"""The network's inference form: the arithmetic search runs, every batch norm folded.

The first pair layer is symmetric and splits into one half per item (PresenceNet.project), so
search computes per item, once, the folded halves

    PA = s * W_a h,  PB = s * W_b h + shift   (s, shift: the pair batch norm)

and a pooled unit embedding (closeness); per pair it then only runs the head, given here as
plain grouped weights with the batch norms folded in (InferenceHead). The search engine asks
for this form once (LoadedModel.inference_form()) instead of reaching into the layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from soundsearch.presence import STATES

if TYPE_CHECKING:
    from soundsearch.model.network import LoadedModel


def _fold_bn(norm: torch.nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference batch norm as y = s * x + shift."""
    var = norm.running_var.double()
    mean = norm.running_mean.double()
    weight = norm.weight.double() if norm.weight is not None else torch.ones_like(var)
    bias = norm.bias.double() if norm.bias is not None else torch.zeros_like(var)
    s = weight / torch.sqrt(var + norm.eps)
    return s, bias - mean * s


@dataclass
class InferenceHead:
    """The pair-specific part of a PresenceNet with batch norm folded in, grouped (G, ...)."""

    groups: int
    per_group: int  # categories per group (C, or 1 per sub-model)
    width: int  # G * K1: values per step of each half
    pair_scale: torch.Tensor  # (G*K1,)
    pair_shift: torch.Tensor  # (G*K1,)
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (G, fin, fout) weight, (G, 1, fout) bias
    out_w: torch.Tensor  # (G, last, 4 * per_group): 3 state columns k-major, then attention
    out_b: torch.Tensor  # (G, 1, 4 * per_group)
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


@torch.no_grad()
def _fold_head(net) -> InferenceHead:
    config = net.config
    g = config.groups
    per_group = config.outputs_per_group
    s, shift = _fold_bn(net.pair_norm)
    layers = []
    for block in net.head:
        w = block.linear.weight.detach().double()  # (G, fin, fout)
        bs, bshift = _fold_bn(block.norm)
        fout = w.shape[2]
        layers.append(
            (
                (w * bs.view(g, 1, fout)).float().contiguous(),
                bshift.view(g, 1, fout).float().contiguous(),
            )
        )
    nstates = len(STATES)
    sw = net.state.weight.detach()  # (G, last, per_group * 3), columns category-major
    sb = net.state.bias.detach().view(g, per_group * nstates)
    last = sw.shape[1]
    # State columns reordered k-major (all categories' "both", then "neither", then "differs")
    # so the pooling reads contiguous runs of categories.
    sw = sw.view(g, last, per_group, nstates).permute(0, 1, 3, 2).reshape(g, last, nstates * per_group)
    sb = sb.view(g, per_group, nstates).permute(0, 2, 1).reshape(g, nstates * per_group)
    if net.attend is not None:
        aw = net.attend.weight.detach()
        ab = net.attend.bias.detach().view(g, per_group)
    else:
        aw = torch.zeros(g, last, per_group)
        ab = torch.zeros(g, per_group)
    out_w = torch.cat([sw, aw], dim=2).float().contiguous()
    out_b = torch.cat([sb, ab], dim=1).view(g, 1, (nstates + 1) * per_group).float().contiguous()
    return InferenceHead(
        groups=g,
        per_group=per_group,
        width=g * config.head[0],
        pair_scale=s.float(),
        pair_shift=shift.float(),
        layers=layers,
        out_w=out_w,
        out_b=out_b,
        attention=net.attend is not None,
        steps=config.steps,
    )


@dataclass
class InferenceForm:
    """A loaded model as search uses it: the folded head and the item-side computation."""

    model: "LoadedModel"
    head: InferenceHead
    embed_width: int  # values of the pooled tower embedding

    @classmethod
    def of(cls, model: "LoadedModel") -> "InferenceForm":
        model.net.eval()
        return cls(model=model, head=_fold_head(model.net), embed_width=model.net.embed_width)

    @torch.no_grad()
    def sides(self, feats_raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw (n, T, D) features -> the folded halves PA, PB (n, T, G*K1) and the pooled unit
        embedding (n, E) of each item."""
        x = torch.from_numpy(np.ascontiguousarray(self.model.normalise(feats_raw)))
        net = self.model.net
        net.eval()
        h = net.embed(x)
        pa, pb = net.project(h)
        pa = pa * self.head.pair_scale
        pb = torch.addcmul(self.head.pair_shift, pb, self.head.pair_scale)
        pooled = h.mean(1)
        pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return pa.contiguous(), pb.contiguous(), pooled.contiguous()
