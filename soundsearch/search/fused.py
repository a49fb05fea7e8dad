"""The pair layer's first step fused into one pass, compiled with numba.

    z1 = ReLU(PA_q + PB_i) + ReLU(PA_i + PB_q)

In torch it is three passes (add, ReLU, sum of the two orders) over a buffer twice z's size;
here each database value is read once and each z value written once. The products after it
stay in torch (oneDNN). Measured on 2,560 item-steps of the default model's width read from
a cache's rows, one core: bfloat16 0.31 ms against torch's 0.47-0.67, float32 0.46 against
0.51; a whole exact scan of 100k items from a bfloat16 cache 523 ms against 668 (2 threads).

bfloat16 values travel as their uint16 bits (numpy has no bfloat16): widened to float32 by a
shift, the sum rounded back to nearest even, as torch rounds. The sums run in float32, so a
bfloat16 z is rounded once, where torch's bfloat16 add rounded each order's sum first.

numba is optional (librosa, which the dev extra installs, brings it; a plain install does
not: llvmlite is 170 MB): `available()` says whether it imports, and kernel.py keeps torch's
passes for where it does not; tests hold the two equal. kernel.py imports this module on its
first scan, so a process that never scans does not pay numba's import (~0.4 s).
"""

from __future__ import annotations

import numpy as np

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic, overload
except ImportError:  # optional: kernel.py keeps torch's passes
    njit = None

if njit is not None:

    @intrinsic
    def _as_f32(typingctx, x):
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    @intrinsic
    def _as_u32(typingctx, x):
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.uint32(types.float32), codegen

    _ZERO = np.float32(0)
    _SIXTEEN = np.uint32(16)
    _HALF = np.uint32(0x7FFF)
    _ONE = np.uint32(1)

    def _widen(x):
        """A stored value as float32 (bfloat16 bits: shifted into place)."""

    @overload(_widen, inline="always")
    def _widen_impl(x):
        if isinstance(x, types.Integer):
            return lambda x: _as_f32(np.uint32(x) << _SIXTEEN)
        return lambda x: x

    def _narrow(s, out):
        """A float32 as `out`'s values are stored (bfloat16 bits: rounded to nearest even)."""

    @overload(_narrow, inline="always")
    def _narrow_impl(s, out):
        if isinstance(out.dtype, types.Integer):

            def bits(s, out):
                u = _as_u32(s)
                return np.uint16((u + _HALF + ((u >> _SIXTEEN) & _ONE)) >> _SIXTEEN)

            return bits
        return lambda s, out: s

    def _jit(fn):
        """numba's compiled function with its on-disk cache (~0.5 s to load in a new process,
        against ~1.5 s to compile), or without one where numba finds no writable place for it
        (a read-only install and no writable home directory), where asking for it raises."""
        try:
            return njit(nogil=True, fastmath=True, cache=True, boundscheck=False)(fn)
        except RuntimeError:
            return njit(nogil=True, fastmath=True, boundscheck=False)(fn)

    # Arguments: h, the database halves (PB_i, PA_i) of item i at h[i * stride :][: 2 * T * G*K1]
    # as (2, T, G*K1), flat so that numba knows the values within a row are contiguous (a
    # strided (m, 2, T, G*K1) view of the cache's rows compiles to 4x slower scalar code); q
    # (2, T, G*K1) float32 query halves (PA_q, PB_q); z (G, m, T, K1) out, the layout the
    # grouped products read. Compiled once per (h, z) dtype pair.
    @_jit
    def _pair(h, stride, q, z):
        groups, m, steps, k1 = z.shape
        width = groups * k1
        for g in range(groups):
            lo = g * k1
            for i in range(m):
                for t in range(steps):
                    pa = i * stride + t * width + lo
                    pb = pa + steps * width
                    a = h[pa : pa + k1]
                    b = h[pb : pb + k1]
                    qa = q[0, t, lo : lo + k1]
                    qb = q[1, t, lo : lo + k1]
                    o = z[g, i, t]
                    for k in range(k1):
                        x = max(_widen(a[k]) + qa[k], _ZERO)
                        y = max(_widen(b[k]) + qb[k], _ZERO)
                        o[k] = _narrow(x + y, o)


def available() -> bool:
    """Whether numba is installed (the fused kernels can run)."""
    return njit is not None


def pair_layer(halves, qpair, z) -> None:
    """z = ReLU(PA_q + PB_i) + ReLU(PA_i + PB_q) in one pass (numpy arrays).

    halves (m, 2, T, G*K1): float32, or bfloat16 bits as uint16, contiguous within each item
    (the rows of a cache: any stride between items); qpair (2, T, G*K1) float32; z (G, m, T, K1)
    C-contiguous, float32 or bfloat16 bits (a float32 cache's bfloat16 scan), written.
    Raises RuntimeError without numba."""
    if njit is None:
        raise RuntimeError("numba is not installed")
    m = halves.shape[0]
    size = halves[0].size
    item = halves.itemsize
    if not halves[0].flags.c_contiguous or halves.strides[0] % item:
        raise ValueError("each item's halves must be contiguous")
    stride = halves.strides[0] // item if m > 1 else size
    flat = np.lib.stride_tricks.as_strided(halves, shape=((m - 1) * stride + size,), strides=(item,))
    _pair(flat, stride, np.ascontiguousarray(qpair, np.float32), z)
