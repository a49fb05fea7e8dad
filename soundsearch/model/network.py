"""The Siamese pairwise-presence-matrix network, its variants, and its checkpoint format.

Structure (Fan et al. 2020, with a symmetric first pair layer so that search can precompute
everything that depends on one item only):

    embed(x)    item-only tower, frame by frame: 3 x (linear, batch norm, ReLU, dropout).
                Identity without --siamese (the raw frames go into the pair head).
    project(h)  the item-only half of the first pair layer: (W_a h, W_b h).
    pair head   z1 = ReLU(BN(W_a h_a + W_b h_b)) + ReLU(BN(W_a h_b + W_b h_a))
                (both orders summed, so score(a, b) == score(b, a)); BN's shift plays the
                role of the bias c. Then (linear, BN, ReLU, dropout) layers, then per step t
                a 3-way softmax f_t per category and an attention logit per category,
                softmax-normalised over T: y = sum_t v_t f_t, still a distribution.
                Without attention: y = mean_t f_t.

Per-category variant: C independent sub-models (own tower, own head, one category each),
run as grouped matrix products rather than a Python loop. Every layer keeps activations
flat as (rows, groups * units) so a batch norm over that width is one independent batch
norm per sub-model.

The checkpoint format is in soundsearch.model.checkpoint, finding models in
soundsearch.model.registry (torch-free).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from soundsearch.errors import ModelError
from soundsearch.model.arrays import ModelBase
from soundsearch.model.config import ModelConfig
from soundsearch.presence import STATES, level_from_states
from soundsearch.taxonomy import Taxonomy


class GroupedLinear(nn.Module):
    """G independent linear maps on flat (rows, G * fin) activations; G = 1 is nn.Linear.

    With shared_input the input is (rows, fin) and every group reads all of it (the first
    layer of each per-category sub-model sees the same frames).
    """

    def __init__(self, groups: int, fin: int, fout: int, bias: bool = True, shared_input: bool = False):
        super().__init__()
        self.groups, self.fin, self.fout, self.shared_input = groups, fin, fout, shared_input
        self.weight = nn.Parameter(torch.empty(groups, fin, fout))
        self.bias = nn.Parameter(torch.zeros(groups * fout)) if bias else None
        # He initialisation: every such layer feeds a ReLU (or a softmax, where scale is harmless).
        bound = math.sqrt(6.0 / fin)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        if g == 1 or self.shared_input:
            w = self.weight[0] if g == 1 else self.weight.permute(1, 0, 2).reshape(self.fin, g * self.fout)
            if self.bias is not None:
                return torch.addmm(self.bias, x, w)
            return x @ w
        rows = x.shape[0]
        y = torch.bmm(x.view(rows, g, self.fin).transpose(0, 1), self.weight)  # (g, rows, fout)
        y = y.transpose(0, 1).reshape(rows, g * self.fout)
        return y + self.bias if self.bias is not None else y


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with keep-probability in steps of 1/256, from raw random bytes.

    torch's CPU Bernoulli sampler made F.dropout ~40% of a training step; eight mask bytes
    per random int64 cost a tenth of that. p = 0.5 (the paper's) is represented exactly.
    """
    if not training or p <= 0.0:
        return x
    keep = min(255, max(1, round((1.0 - p) * 256)))
    n = x.numel()
    raw = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
    mask = raw.view(torch.uint8)[:n].view(x.shape) < keep
    return x * mask.to(x.dtype).mul_(256.0 / keep)


class Block(nn.Module):
    """Linear (no bias: batch norm's shift replaces it), batch norm, ReLU, dropout."""

    def __init__(self, groups: int, fin: int, fout: int, dropout: float, shared_input: bool = False):
        super().__init__()
        self.linear = GroupedLinear(groups, fin, fout, bias=False, shared_input=shared_input)
        self.norm = nn.BatchNorm1d(groups * fout)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(F.relu(self.norm(self.linear(x))), self.dropout, self.training)


class PresenceNet(nn.Module):
    """Predicts the (C, 3) presence matrix of a pair of items; see the module docstring."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        g, c = config.groups, config.n_categories
        din = config.input_dim
        tower: list[nn.Module] = []
        if config.siamese:
            fin, shared = din, True
            for units in config.tower:
                tower.append(Block(g, fin, units, config.dropout, shared_input=shared))
                fin, shared = units, False
            self.embed_width = g * config.tower[-1]
            pair_in, pair_shared = config.tower[-1], False
        else:
            self.embed_width = din
            pair_in, pair_shared = din, True
        self.tower = nn.ModuleList(tower)
        k1 = config.head[0]
        self.proj_a = GroupedLinear(g, pair_in, k1, bias=False, shared_input=pair_shared)
        self.proj_b = GroupedLinear(g, pair_in, k1, bias=False, shared_input=pair_shared)
        self.pair_norm = nn.BatchNorm1d(g * k1)
        head: list[nn.Module] = []
        for fin, units in zip(config.head[:-1], config.head[1:]):
            head.append(Block(g, fin, units, config.dropout))
        self.head = nn.ModuleList(head)
        last = config.head[-1]
        self.state = GroupedLinear(g, last, config.outputs_per_group * len(STATES))
        self.attend = GroupedLinear(g, last, config.outputs_per_group) if config.attention else None
        self.n_categories = c

    # -- item-only part: search precomputes these for the whole database ------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) normalised frames -> (N, T, E) tower output; depends on one item only."""
        n, t, d = x.shape
        if d != self.config.dim or t != self.config.steps:
            raise ModelError(
                f"model expects items of shape ({self.config.steps}, {self.config.dim}), got ({t}, {d})"
            )
        if self.config.context == "stats":
            ctx = torch.cat([x.mean(1), x.std(1, unbiased=False), x.amax(1)], dim=-1)
            x = torch.cat([x, ctx.unsqueeze(1).expand(n, t, ctx.shape[-1])], dim=-1)
        h = x.reshape(n * t, -1)
        for block in self.tower:
            h = block(h)
        return h.reshape(n, t, -1)

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, E) embeddings -> (W_a h, W_b h), each (N, T, G*K1): the item's half of layer 1."""
        n, t, _ = h.shape
        flat = h.reshape(n * t, -1)
        return self.proj_a(flat).reshape(n, t, -1), self.proj_b(flat).reshape(n, t, -1)

    # -- pair-specific part ---------------------------------------------------------------

    def pair_log_probs(
        self, a_proj: tuple[torch.Tensor, torch.Tensor], b_proj: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Log of the pooled presence matrix (B, C, 3) from both items' projections."""
        (pa_a, pb_a), (pa_b, pb_b) = a_proj, b_proj
        bsz, t, width = pa_a.shape
        u1 = (pa_a + pb_b).reshape(bsz * t, width)
        u2 = (pa_b + pb_a).reshape(bsz * t, width)
        # One batch norm over both orders keeps even training-mode statistics symmetric.
        u = F.relu(self.pair_norm(torch.cat([u1, u2])))
        z = u[: bsz * t] + u[bsz * t :]
        z = dropout(z, self.config.dropout, self.training)
        for block in self.head:
            z = block(z)
        c = self.n_categories
        logf = F.log_softmax(self.state(z).view(bsz, t, c, len(STATES)), dim=-1)
        if self.attend is not None:
            logv = F.log_softmax(self.attend(z).view(bsz, t, c), dim=1).unsqueeze(-1)
            return torch.logsumexp(logv + logf, dim=1)
        return torch.logsumexp(logf, dim=1) - math.log(t)

    def log_probs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, T, D) x (B, T, D) normalised -> (B, C, 3) log probabilities."""
        bsz = a.shape[0]
        # One tower pass over both sides: half the Python overhead and one set of BN statistics.
        pa, pb = self.project(self.embed(torch.cat([a, b])))
        return self.pair_log_probs((pa[:bsz], pb[:bsz]), (pa[bsz:], pb[bsz:]))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, T, D) x (B, T, D) normalised -> (B, C, 3) probabilities, states (both, neither, differs)."""
        return self.log_probs(a, b).exp()


# -- scores ------------------------------------------------------------------------------


@dataclass
class PairScores:
    probs: np.ndarray  # (B, C, 3) float32
    level: np.ndarray  # (B,) int64: categories whose most likely state is both or neither
    expected: np.ndarray  # (B,) float32: expected number of agreeing categories

    @property
    def states(self) -> np.ndarray:
        return self.probs.argmax(-1)


def scores_from_probs(probs: np.ndarray) -> PairScores:
    probs = np.asarray(probs, dtype=np.float32)
    states = probs.argmax(-1)
    level = np.asarray(level_from_states(states), dtype=np.int64)
    expected = (probs[..., 0] + probs[..., 1]).sum(-1).astype(np.float32)
    return PairScores(probs=probs, level=level, expected=expected)


# -- loaded models -----------------------------------------------------------------------


@dataclass
class LoadedModel(ModelBase):
    """A model with its weights as a torch network (training, evaluation, the torch search
    backend); model.arrays.ArrayModel is the same model as numpy arrays, torch-free."""

    net: PresenceNet
    config: ModelConfig
    taxonomy: Taxonomy
    featurizer_spec: dict
    featurizer_identity: str
    norm_mean: np.ndarray  # (D,) float32
    norm_std: np.ndarray  # (D,) float32
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The network's state dict as numpy arrays sharing the parameters' memory (the
        network is the source: training updates it in place)."""
        return {k: v.detach().cpu().contiguous().numpy() for k, v in self.net.state_dict().items()}

    @torch.no_grad()
    def score_pairs(self, a_raw: np.ndarray, b_raw: np.ndarray, batch: int = 4096) -> PairScores:
        """Score raw-feature pairs row by row; an `a_raw` of one item is paired with every b."""
        a = np.asarray(a_raw, dtype=np.float32)
        b = np.asarray(b_raw, dtype=np.float32)
        if a.ndim == 2:
            a = a[None]
        if b.ndim == 2:
            b = b[None]
        if a.shape[0] == 1 and b.shape[0] > 1:
            a = np.broadcast_to(a, b.shape)
        if a.shape != b.shape:
            raise ModelError(f"cannot pair items of shapes {a.shape} and {b.shape}")
        self.net.eval()
        chunks = []
        for start in range(0, a.shape[0], batch):
            ta = torch.from_numpy(self.normalise(a[start : start + batch]))
            tb = torch.from_numpy(self.normalise(b[start : start + batch]))
            chunks.append(self.net(ta, tb).numpy())
        c = self.config.n_categories
        probs = np.concatenate(chunks) if chunks else np.zeros((0, c, len(STATES)), np.float32)
        return scores_from_probs(probs)

    def save(self, path: Path | str) -> Path:
        from soundsearch.model.checkpoint import save_model

        return save_model(
            path, self.net, self.config, self.taxonomy, self.featurizer_spec,
            self.featurizer_identity, self.norm_mean, self.norm_std, self.meta,
        )
