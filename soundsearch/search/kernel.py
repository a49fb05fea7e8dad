"""The search engine's numeric kernel: the pair-specific arithmetic on chunks of items.

For a query's folded halves (PA_q, PB_q) and a chunk of database halves (PB_i, PA_i), per step:

    z1 = ReLU(PA_q + PB_i) + ReLU(PA_i + PB_q)    the model's pair layer, both orders
    z  = ReLU(W' z + b') ...                      the rest of the head, batch norm folded
    per category a 3-way softmax f_t and an attention weight v_t (softmax over T)
    y  = sum_t v_t f_t                            (mean over t without attention)

in reused buffers (_Block), with chunks spread over Python threads (_run_chunks); the first
step in one compiled pass where numba is installed (fused.py), torch's products for the rest.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterable, Iterator

import torch

from soundsearch.model.inference import InferenceHead
from soundsearch.search.backends import map_threads
from soundsearch.presence import STATES

# relu(a + b) in one pass (the op torch's mobile optimizer fuses add + relu into); plain add
# then relu where a torch build lacks it.
try:
    _ADD_RELU_OUT = torch.ops.aten._add_relu.out
    _ADD_RELU_ = torch.ops.aten._add_relu_
except (AttributeError, RuntimeError):  # pragma: no cover - every torch in range has it
    _ADD_RELU_OUT = _ADD_RELU_ = None


def _add_relu(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """out = relu(a + b), b broadcast."""
    if _ADD_RELU_OUT is None or a.dtype != torch.float32 or b.dtype != torch.float32:  # fused: float32 only
        torch.add(a, b, out=out).relu_()
    else:
        _ADD_RELU_OUT(a, b, out=out)


def _bias_relu_(x: torch.Tensor, bias: torch.Tensor) -> None:
    """x = relu(x + bias) in place, bias broadcast."""
    if _ADD_RELU_ is None or x.dtype != torch.float32 or bias.dtype != torch.float32:
        x.add_(bias).relu_()
    else:
        _ADD_RELU_(x, bias)


# Logits this far from zero cannot overflow or underflow exp() in float32 in any sum the
# pooling forms, so the softmaxes can skip their max-shift.
_EXP_SAFE = 80.0


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_chunks(fn: Callable[[int], None], starts: Iterable[int], workers: int) -> None:
    """Run fn over chunk starts on `workers` threads, each with single-threaded torch ops.

    Threads that each take whole chunks, rather than torch's intra-op threads splitting every
    small operation, keep each block in one core's cache and never wait at a barrier for a
    descheduled thread: on a busy machine intra-op threading was measured 10x slower.
    """
    local = threading.local()

    def run(start: int) -> None:
        if not getattr(local, "single", False):
            # OpenMP/MKL thread counts are per thread: a fresh worker would otherwise run its
            # products with the library default, measured 35x slower than single-threaded.
            torch.set_num_threads(1)
            local.single = True
        with torch.no_grad():  # grad mode is per thread too
            fn(start)

    with _torch_threads(1):
        map_threads(run, starts, workers)


@functools.lru_cache(maxsize=1)
def fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16, Linux's cpu flags):
    elsewhere torch emulates bfloat16 products, slower than float32."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False


def _relu16_(x: torch.Tensor) -> None:
    """ReLU in place on a bfloat16 or float16 tensor through its bits: a negative value (sign
    bit set) is a negative int16 and becomes 0, i.e. +0.0; torch's own 16-bit ReLU converts
    each value to float32 and back, 6x slower."""
    x.view(torch.int16).clamp_min_(0)


def _bits(x: torch.Tensor):
    """A tensor as a numpy view: float32 as is, a 16-bit float as its bits (uint16)."""
    if x.dtype == torch.float32:
        return x.numpy()
    return x.view(torch.int16).numpy().view("uint16")


def head_in(head: InferenceHead, dtype: torch.dtype) -> InferenceHead:
    """The head with its weights in `dtype` (the kernel's products then run in it)."""
    if dtype == torch.float32:
        return head
    return replace(
        head,
        layers=[(w.to(dtype), b.to(dtype)) for w, b in head.layers],
        out_w=head.out_w.to(dtype),
        out_b=head.out_b.to(dtype),
    )


class _Block:
    """Reusable buffers and the pair-specific arithmetic for a chunk of database items.

    The first layers run on sub-blocks of `sub_items` (their activations stay in cache); the
    pooling, a dozen small operations whose cost is mostly per call, runs once per chunk.

    The products run in the head's dtype: float32 (exact), or bfloat16 for an approximate scan
    (a compact cache's, or a float32 cache's fast scan) where the CPU multiplies bfloat16
    natively (AMX, AVX512-BF16: 5x the float32 rate measured here). The fused first step reads
    float32 or bfloat16 halves and writes the head's dtype; otherwise halves of another dtype
    than the head's (a float16 cache) are converted first. The pooling always runs in float32.
    """

    def __init__(self, head: InferenceHead, sub_items: int, chunk_items: int):
        self.head = head
        self.dtype = dtype = head.out_w.dtype
        g, t = head.groups, head.steps
        k1 = head.width // g
        self.sub_items = sub_items
        # Flat storage, viewed per block so that a short last block still gets contiguous
        # (G, m, ...) tensors for the grouped products.
        self.z = torch.empty(g * sub_items * t * k1, dtype=dtype)
        self.layer_out = [torch.empty(g * sub_items * t * w.shape[2], dtype=dtype) for w, _ in head.layers]
        width = head.out_w.shape[2]
        self.sub_out = torch.empty(g * sub_items * t * width, dtype=dtype) if g > 1 or dtype != torch.float32 else None
        self.up = None  # the halves in the head's dtype, made on first need
        self.out = torch.empty(g * chunk_items * t * width)
        from soundsearch.search import fused

        # The pair layer's first step in one pass where numba is installed (fused.py); torch's
        # passes need a buffer for both orders.
        self.fused = fused.pair_layer if fused.available() else None
        self.u = torch.empty(g * sub_items * 2 * t * k1, dtype=dtype) if self.fused is None else None

    def logits(self, halves, qpair) -> torch.Tensor:
        """(m, 2, T, G*K1) database halves (PB, PA) x (2, T, G*K1) query halves (PA, PB)
        -> the output layer, (G, m*T, 4p) float32."""
        head = self.head
        g, t = head.groups, head.steps
        m = halves.shape[0]
        width = head.out_w.shape[2]
        out = self.out[: g * m * t * width].view(g, m * t, width)
        if self.fused is not None:
            qpair = qpair.to(torch.float32).numpy()  # the fused pass adds in float32
        else:
            qpair = qpair.to(self.dtype)
            if g > 1:
                qpair = qpair.view(2, t, g, -1).permute(2, 0, 1, 3).unsqueeze(1)  # (G, 1, 2, T, K1)
        for s in range(0, m, self.sub_items):
            e = min(m, s + self.sub_items)
            self._sub(halves[s:e], qpair, out[:, s * t : e * t])
        return out

    def _sub(self, halves, qpair, dst_out) -> None:
        head = self.head
        g, t = head.groups, head.steps
        m = halves.shape[0]
        k1 = head.width // g
        rows = m * t
        exact = self.dtype == torch.float32
        # The fused pass reads float32 or bfloat16 halves into either; torch's passes need them
        # in the head's dtype (a float16 cache: always).
        if halves.dtype != self.dtype and (self.fused is None or halves.dtype == torch.float16):
            if self.up is None:
                self.up = torch.empty(self.sub_items * 2 * t * g * k1, dtype=self.dtype)
            halves = self.up[: halves.numel()].view(halves.shape).copy_(halves)
        z = self.z[: g * rows * k1].view(g, m, t, k1)
        # z1 = ReLU(PA_q + PB_i) + ReLU(PA_i + PB_q)
        if self.fused is not None:
            self.fused(_bits(halves), qpair, _bits(z))
        else:
            # Both orders in one add-ReLU, then one sum.
            u = self.u[: g * rows * 2 * k1].view(g, m, 2, t, k1)
            if g > 1:
                halves = halves.view(m, 2, t, g, k1).permute(3, 0, 1, 2, 4)
            if exact:
                _add_relu(halves, qpair, out=u[0] if g == 1 else u)
            else:
                torch.add(halves, qpair, out=u[0] if g == 1 else u)
                _relu16_(u)
            torch.add(u[:, :, 0], u[:, :, 1], out=z)
        z = z.view(g, rows, k1)
        # Hidden layers, float32: the bare product, then bias and ReLU in one pass (addmm would
        # first copy the bias into every output row, then ReLU would make another pass);
        # 16-bit: addmm (the bias is oneDNN's), then the bit ReLU.
        for (w, b), buf in zip(head.layers, self.layer_out):
            dst = buf[: g * rows * w.shape[2]].view(g, rows, w.shape[2])
            if exact:
                if g == 1:
                    torch.mm(z[0], w[0], out=dst[0])
                else:
                    torch.bmm(z, w, out=dst)
                _bias_relu_(dst, b)
            else:
                if g == 1:
                    torch.addmm(b[0], z[0], w[0], out=dst[0])
                else:
                    torch.baddbmm(b, z, w, out=dst)
                _relu16_(dst)
            z = dst
        if g == 1 and exact:
            torch.addmm(head.out_b[0], z[0], head.out_w[0], out=dst_out[0])
        else:
            width = head.out_w.shape[2]
            tmp = self.sub_out[: g * rows * width].view(g, rows, width)
            if g == 1:
                torch.addmm(head.out_b[0], z[0], head.out_w[0], out=tmp[0])
            else:
                torch.baddbmm(head.out_b, z, head.out_w, out=tmp)
            dst_out.copy_(tmp)

    def pool(self, out: torch.Tensor, m: int) -> torch.Tensor:
        """Output layer (G, m*T, 4p) -> presence probabilities pooled over T, (m, 3, C)."""
        head = self.head
        g, t, p = head.groups, head.steps, head.per_group
        ns = len(STATES)
        rows = m * t
        if g == 1:
            lo, hi = torch.aminmax(out)
            if -_EXP_SAFE < float(lo) and float(hi) < _EXP_SAFE:
                return self._pool_unshifted(out[0], m)
        # (G, rows, 3, p) -> (m, T, 3, C) with category = group * p + index within the group.
        logits = out[:, :, : ns * p].view(g, rows, ns, p).permute(1, 2, 0, 3).reshape(m, t, ns, g * p)
        e = (logits - logits.amax(2, keepdim=True)).exp_()
        total = e.sum(2)  # (m, T, C): the per-step softmax denominators
        if head.attention:
            att = out[:, :, ns * p :].permute(1, 0, 2).reshape(m, t, g * p)
            w = att.softmax(1).div_(total)
        else:
            w = total.reciprocal_().mul_(1.0 / t)
        return (e * w.unsqueeze(2)).sum(1)

    def _pool_unshifted(self, out: torch.Tensor, m: int) -> torch.Tensor:
        """pool() for logits known to lie within +-_EXP_SAFE: no max-shift needed, so one
        exponential, in place over the contiguous output (the block's own buffer, consumed
        here), and a handful of in-place operations."""
        head = self.head
        t, c = head.steps, head.per_group
        ns = len(STATES)
        ex = out.exp_().view(m, t, (ns + 1) * c)
        total = ex[:, :, :c] + ex[:, :, c : 2 * c]
        total += ex[:, :, 2 * c : 3 * c]
        if head.attention:
            att = ex[:, :, ns * c :]
            w = torch.div(att, total, out=total)
            w /= att.sum(1, keepdim=True)
        else:
            w = total.reciprocal_().mul_(1.0 / t)
        states = ex[:, :, : ns * c].view(m, t, ns, c)
        states.mul_(w.unsqueeze(2))
        return states.sum(1)
