"""The search kernel in numpy: kernel.py's pair-specific arithmetic without torch.

The same steps as kernel._Block, on the same folded head (model.inference.InferenceHead), in
reused buffers:

    z1 = ReLU(PA_q + PB_i) + ReLU(PA_i + PB_q)    the model's pair layer, both orders
    z  = ReLU(W' z + b') ...                      the rest of the head, batch norm folded
    per category a 3-way softmax f_t and an attention weight v_t (softmax over T)
    y  = sum_t v_t f_t                            (mean over t without attention)

Used by the numpy search backend (search.backends), which a query whose features are already
known (an indexed file, or a store whose featurizer needs no torch) runs without importing
torch; tests/test_backends.py holds it to the torch kernel within float tolerance.
"""

from __future__ import annotations

import numpy as np

from soundsearch.model.inference import InferenceHead
from soundsearch.presence import STATES

# Logits this far from zero cannot overflow or underflow exp() in float32 in any sum the
# pooling forms, so the softmaxes can skip their max-shift (as kernel._EXP_SAFE).
_EXP_SAFE = 80.0


class NumpyBlock:
    """Reusable buffers and the pair-specific arithmetic for a chunk of database items."""

    def __init__(self, head: InferenceHead, sub_items: int, chunk_items: int):
        self.head = head
        g, t = head.groups, head.steps
        k1 = head.width // g
        self.sub_items = sub_items
        f32 = np.float32
        self.u = np.empty(g * sub_items * 2 * t * k1, f32)
        self.z = np.empty(g * sub_items * t * k1, f32)
        self.layer_out = [np.empty(g * sub_items * t * w.shape[2], f32) for w, _ in head.layers]
        width = head.out_w.shape[2]
        self.sub_out = np.empty(g * sub_items * t * width, f32)
        self.out = np.empty(g * chunk_items * t * width, f32)

    def probs(self, halves: np.ndarray, qpair: np.ndarray, m: int) -> np.ndarray:
        """(m, 2, T, G*K1) database halves (PB, PA) x (2, T, G*K1) query halves (PA, PB) ->
        presence probabilities pooled over T, (m, 3, C) float32."""
        return self.pool(self.logits(halves, qpair), m)

    def self_probs(self, halves: np.ndarray) -> np.ndarray:
        """(m, 2, T, G*K1) database halves (PB, PA) -> each item paired with itself, pooled
        over T, (m, 3, C) float32: the query side of item i is its own (PA_i, PB_i)."""
        head = self.head
        g, t = head.groups, head.steps
        k1 = head.width // g
        m = halves.shape[0]
        width = head.out_w.shape[2]
        out = self.out[: g * m * t * width].reshape(g, m * t, width)
        for s in range(0, m, self.sub_items):
            e = min(m, s + self.sub_items)
            part = halves[s:e]
            own = part[:, ::-1]  # (PA_i, PB_i), lined up with the database's (PB_i, PA_i)
            if g > 1:
                own = own.reshape(e - s, 2, t, g, k1).transpose(3, 0, 1, 2, 4)
            self._sub(part, own, out[:, s * t : e * t])
        return self.pool(out, m)

    def logits(self, halves: np.ndarray, qpair: np.ndarray) -> np.ndarray:
        """-> the output layer, (G, m*T, 4p)."""
        head = self.head
        g, t = head.groups, head.steps
        m = halves.shape[0]
        width = head.out_w.shape[2]
        out = self.out[: g * m * t * width].reshape(g, m * t, width)
        if g > 1:
            qpair = qpair.reshape(2, t, g, -1).transpose(2, 0, 1, 3)[:, None]  # (G, 1, 2, T, K1)
        for s in range(0, m, self.sub_items):
            e = min(m, s + self.sub_items)
            self._sub(halves[s:e], qpair, out[:, s * t : e * t])
        return out

    def _sub(self, halves: np.ndarray, qpair: np.ndarray, dst_out: np.ndarray) -> None:
        head = self.head
        g, t = head.groups, head.steps
        m = halves.shape[0]
        k1 = head.width // g
        rows = m * t
        u = self.u[: g * rows * 2 * k1].reshape(g, m, 2, t, k1)
        z = self.z[: g * rows * k1].reshape(g, m, t, k1)
        # z1 = ReLU(PA_q + PB_i) + ReLU(PA_i + PB_q): both orders in one add, one ReLU, one sum.
        if g == 1:
            np.add(halves, qpair, out=u[0])
        else:
            np.add(halves.reshape(m, 2, t, g, k1).transpose(3, 0, 1, 2, 4), qpair, out=u)
        np.maximum(u, 0.0, out=u)
        np.add(u[:, :, 0], u[:, :, 1], out=z)
        z = z.reshape(g, rows, k1)
        for (w, b), buf in zip(head.layers, self.layer_out):
            dst = buf[: g * rows * w.shape[2]].reshape(g, rows, w.shape[2])
            if g == 1:
                np.matmul(z[0], w[0], out=dst[0])
            else:
                np.matmul(z, w, out=dst)
            dst += b
            z = np.maximum(dst, 0.0, out=dst)
        width = head.out_w.shape[2]
        tmp = self.sub_out[: g * rows * width].reshape(g, rows, width)
        if g == 1:
            np.matmul(z[0], head.out_w[0], out=tmp[0])
        else:
            np.matmul(z, head.out_w, out=tmp)
        tmp += head.out_b
        dst_out[...] = tmp

    def pool(self, out: np.ndarray, m: int) -> np.ndarray:
        """Output layer (G, m*T, 4p) -> presence probabilities pooled over T, (m, 3, C)."""
        head = self.head
        g, t, p = head.groups, head.steps, head.per_group
        ns = len(STATES)
        if g == 1 and -_EXP_SAFE < float(out.min()) and float(out.max()) < _EXP_SAFE:
            return self._pool_unshifted(out[0], m)
        # (G, m, T, 3, p) -> (m, T, 3, C) with category = group * p + index within the group.
        logits = out[:, :, : ns * p].reshape(g, m, t, ns, p).transpose(1, 2, 3, 0, 4).reshape(m, t, ns, g * p)
        e = np.exp(logits - logits.max(2, keepdims=True))
        total = e.sum(2)  # (m, T, C): the per-step softmax denominators
        if head.attention:
            att = out[:, :, ns * p :].reshape(g, m, t, p).transpose(1, 2, 0, 3).reshape(m, t, g * p)
            a = np.exp(att - att.max(1, keepdims=True))
            w = a / a.sum(1, keepdims=True)
            w /= total
        else:
            w = np.reciprocal(total)
            w *= np.float32(1.0 / t)
        return (e * w[:, :, None, :]).sum(1)

    def _pool_unshifted(self, out: np.ndarray, m: int) -> np.ndarray:
        """pool() for logits known to lie within +-_EXP_SAFE: no max-shift needed."""
        head = self.head
        t, c = head.steps, head.per_group
        ns = len(STATES)
        ex = np.exp(out).reshape(m, t, (ns + 1) * c)
        total = ex[:, :, :c] + ex[:, :, c : 2 * c]
        total += ex[:, :, 2 * c : 3 * c]
        if head.attention:
            att = ex[:, :, ns * c :]
            w = att / att.sum(1, keepdims=True)
            w /= total
        else:
            w = np.reciprocal(total)
            w *= np.float32(1.0 / t)
        return (ex[:, :, : ns * c].reshape(m, t, ns, c) * w[:, :, None, :]).sum(1)
