"""Where the search engine's arithmetic runs: numpy or torch, behind one small interface.

The engine (engine.py, database.py) keeps every array it owns in numpy and asks a backend only
for the model's parts: the item side (`sides`: tower and folded first pair layer) and the pair
kernel (`probs` over a chunk of cached rows), both on the one folded form of the model
(model.inference). Two backends:

    numpy   model.inference.Tower and kernel_numpy.NumpyBlock. Needs no torch, so a query
            whose features are known (an indexed file, "more like this") loads no torch at all
            (~1.1 s of a cold `soundsearch query`). The only backend of a model loaded as
            arrays (model.arrays.load_arrays, what `soundsearch query` loads).
    torch   the network itself (PresenceNet.embed, .project) and kernel._Block: the backend of
            a model loaded with its network (checkpoint.load_model: training, evaluation,
            `serve`, the benchmarks).

tests/test_backends.py holds them equal within float tolerance for every variant (scores
allclose, top-K identical).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from soundsearch.errors import SearchError

if TYPE_CHECKING:
    from soundsearch.model.arrays import ModelBase
    from soundsearch.model.inference import InferenceForm, InferenceHead

BACKENDS = ("numpy", "torch")


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 values stored as uint16 -> float32 (exact)."""
    return (np.asarray(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits as uint16, rounded to nearest even as torch rounds; NaN stays
    a NaN (0x7FC0)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    out = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    out[np.isnan(x)] = 0x7FC0
    return out


def as_float32(raw: np.ndarray, dtype: str = "bfloat16") -> np.ndarray:
    """Cached values (float32, or 16-bit values of `dtype` as uint16) as float32."""
    if raw.dtype != np.uint16:
        return np.asarray(raw, dtype=np.float32)
    return bf16_to_f32(raw) if dtype == "bfloat16" else raw.view(np.float16).astype(np.float32)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)



def map_threads(fn: Callable[[int], None], starts: Iterable[int], workers: int) -> None:
    """fn over chunk starts: here when one worker or one chunk, else on up to `workers` threads
    (both backends' products release the GIL); the first error is raised."""
    starts = list(starts)
    if workers <= 1 or len(starts) <= 1:
        for start in starts:
            fn(start)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(starts))) as pool:
        for _ in pool.map(fn, starts):
            pass

class NumpyBackend:
    """The engine's arithmetic in numpy (see the module docstring)."""

    name = "numpy"

    def __init__(self, form: "InferenceForm"):
        self.form = form
        self.head: InferenceHead = form.head

    def default_workers(self) -> int:
        return _cpu_count()

    def sides(self, feats_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # A query's few rows are tiny products, where BLAS's threads only wait for each other:
        # on a busy 2-core machine a one-item query's sides took 0.24 s with them, 1 ms without.
        with self.single():
            return self.form.sides(feats_raw)

    def pair(self, qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
        """(Q, 2, T, G*K1) query halves (PA, PB)."""
        return np.ascontiguousarray(np.stack([qa, qb], axis=1), dtype=np.float32)

    def halves(self, part: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """(m, 2, T, G*K1) database halves (PB, PA) from cached rows' halves part (m, 2 T G*K1):
        float32, or the 16-bit values of a compact cache of `dtype` as uint16."""
        t, k = self.head.steps, self.head.width
        return as_float32(part, dtype).reshape(part.shape[0], 2, t, k)

    def scan_dtype(self, cache_dtype: str, fast: bool = False) -> str:
        """The dtype a cache's scan computes in: float32 here."""
        return "float32"

    def block(self, sub_items: int, chunk_items: int, dtype: str = "float32") -> Any:
        from soundsearch.search.kernel_numpy import NumpyBlock

        return NumpyBlock(self.head, sub_items, chunk_items)

    def probs(self, block: Any, halves: np.ndarray, qpair: np.ndarray, m: int) -> np.ndarray:
        return block.probs(halves, qpair, m)

    def run_chunks(self, fn: Callable[[int], None], starts: Iterable[int], workers: int) -> None:
        """fn over chunk starts on `workers` threads (numpy releases the GIL in its loops),
        each running its matrix products single-threaded, as the torch backend does: BLAS's
        own threads on these small products, on a busy 2-core machine, measured up to 6x slower
        and 10x more variable (20k items: 1.7-4.0 s against 0.28 s)."""
        with self.single():
            map_threads(fn, starts, workers)

    @contextmanager
    def single(self) -> Iterator[None]:
        """numpy's BLAS single-threaded inside (threadpoolctl; as it is without it)."""
        controller = _blas_controller()
        if controller is None:  # a dependency; without it products keep BLAS's own threads
            yield
            return
        with controller.limit(limits=1, user_api="blas"):
            yield


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, made once: threadpool_limits() finds
    them again on every call, 0.3-1.6 ms each (it walks every loaded library), and a
    prefiltered search of a large store enters single() a dozen times (~20 ms at 1M items)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


class TorchBackend:
    """The engine's arithmetic in torch, with the model's own network for the item side."""

    name = "torch"

    def __init__(self, form: "InferenceForm"):
        import torch

        net = getattr(form.model, "net", None)
        if net is None:
            raise SearchError(
                "the torch search backend needs the model loaded with its network "
                "(model.checkpoint.load_model), not as arrays"
            )
        self._torch = torch
        self.form = form
        self.net = net
        h = form.head
        t = torch.from_numpy
        self.head: InferenceHead = replace(
            h,
            pair_scale=t(h.pair_scale),
            pair_shift=t(h.pair_shift),
            layers=[(t(w), t(b)) for w, b in h.layers],
            out_w=t(h.out_w),
            out_b=t(h.out_b),
        )
        self._heads = {"float32": self.head}  # the head per compute dtype (block)

    def default_workers(self) -> int:
        return max(1, int(self._torch.get_num_threads()))

    def sides(self, feats_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Callers split big inputs into chunks across threads; a query's few rows are tiny
        # work, where intra-op threads only add barriers (milliseconds each on a busy machine).
        torch = self._torch
        with self.single(), torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(self.form.model.normalise(feats_raw)))
            net = self.net
            net.eval()
            h = net.embed(x)
            pa, pb = net.project(h)
            pa = pa * self.head.pair_scale
            pb = torch.addcmul(self.head.pair_shift, pb, self.head.pair_scale)
            pooled = h.mean(1)
            pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
            return pa.contiguous().numpy(), pb.contiguous().numpy(), pooled.contiguous().numpy()

    def pair(self, qa: np.ndarray, qb: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(np.stack([qa, qb], axis=1), dtype=np.float32))

    def halves(self, part: np.ndarray, dtype: str = "float32"):
        """(m, 2, T, G*K1) database halves from cached rows' halves part, as a view: float32,
        or a compact cache's 16-bit values (torch's bfloat16 or float16)."""
        torch = self._torch
        t, k = self.head.steps, self.head.width
        if part.strides[1] != part.itemsize:
            part = np.ascontiguousarray(part)
        if part.dtype == np.uint16:
            db = torch.from_numpy(part.view(np.int16)).view(getattr(torch, dtype))
        else:
            db = torch.from_numpy(part)
        return db.view(part.shape[0], 2, t, k)

    def scan_dtype(self, cache_dtype: str, fast: bool = False) -> str:
        """The dtype a cache's scan computes in: bfloat16 for a bfloat16 cache where the CPU
        multiplies bfloat16 natively (kernel.fast_bfloat16), float32 otherwise. With `fast`, a
        float32 cache's too where numba's fused first step (search.fused) writes its bfloat16
        input from the float32 halves in the same pass: 1.5x the float32 scan's speed
        (converting the halves first instead made it slower than float32)."""
        from soundsearch.search import fused
        from soundsearch.search.kernel import fast_bfloat16

        if not fast_bfloat16():
            return "float32"
        if cache_dtype == "bfloat16" or (fast and cache_dtype == "float32" and fused.available()):
            return "bfloat16"
        return "float32"

    def block(self, sub_items: int, chunk_items: int, dtype: str = "float32") -> Any:
        from soundsearch.search.kernel import _Block, head_in

        head = self._heads.get(dtype)
        if head is None:
            head = self._heads[dtype] = head_in(self.head, getattr(self._torch, dtype))
        return _Block(head, sub_items, chunk_items)

    def probs(self, block: Any, halves, qpair, m: int) -> np.ndarray:
        with self._torch.no_grad():
            return block.pool(block.logits(halves, qpair), m).numpy()

    def run_chunks(self, fn: Callable[[int], None], starts: Iterable[int], workers: int) -> None:
        from soundsearch.search.kernel import _run_chunks

        _run_chunks(fn, starts, workers)

    @contextmanager
    def single(self) -> Iterator[None]:
        from soundsearch.search.kernel import _torch_threads

        with _torch_threads(1):
            yield


def make_backend(model: "ModelBase", form: "InferenceForm", backend: str | None = None):
    """The backend `backend` names, or by default the model's own: torch for a model loaded
    with its network, numpy for one loaded as arrays."""
    if backend is None:
        backend = "torch" if getattr(model, "net", None) is not None else "numpy"
    if backend == "numpy":
        return NumpyBackend(form)
    if backend == "torch":
        return TorchBackend(form)
    raise SearchError(f"search backend must be one of {', '.join(BACKENDS)}, not {backend!r}")

