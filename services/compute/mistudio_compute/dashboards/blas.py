"""The BLAS single-precision matmul (``sgemm_``) that torch's CPU matmul calls, as an address a
compiled kernel can call without the GIL: the pass's scan computes each encode tile itself
instead of handing ~16,000 tiles a pass through Python (``fold_kernels.affine_entries``).

Found by name in torch's own library (MKL is linked into it) and used only when its products
equal ``torch.mm``'s bit for bit on a few shapes, so the scan's activations are always those of
``Sae.encode_features``; elsewhere (another BLAS, another platform) the pass takes its tiles from
torch as before.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from _ctypes import CFuncPtr

_LIBRARIES = ("libtorch_cpu.so", "libtorch_cpu.dylib")
_CHECKED_SHAPES = ((37, 70, 48), (64, 512, 300), (5, 3, 1))
"""Rows, columns, inner size of the products compared with torch.mm (300: MKL sums in parts)."""


@functools.cache
def sgemm_address() -> int | None:
    """The address of torch's ``sgemm_`` (Fortran: every argument by reference), or None when
    it is not found or does not compute ``torch.mm``'s bits."""
    sgemm = find_sgemm()
    if sgemm is None:
        return None
    for m, n, k in _CHECKED_SHAPES:
        g = torch.Generator().manual_seed(m * n * k)
        x, w = torch.randn(m, k, generator=g), torch.randn(k, 2 * n, generator=g)
        if not torch.equal(torch.from_numpy(row_major_product(sgemm, x, w, n)), x @ w[:, n:]):
            return None
    return ctypes.cast(sgemm, ctypes.c_void_p).value


def row_major_product(sgemm: CFuncPtr, x: torch.Tensor, w: torch.Tensor, start: int) -> np.ndarray:
    """x [M, K] @ w[:, start:] [K, N] by ``sgemm``, as the scan calls it: row-major operands
    are column-major transposes, so it computes (w^T x^T) with w's rows ``w.shape[1]`` apart."""
    (m, k), width = x.shape, w.shape[1] - start
    out = np.empty((m, width), np.float32)
    xs, ws = x.numpy(), w.numpy()
    dims = (ctypes.c_int * 6)(width, m, k, w.shape[1], k, width)
    scal = (ctypes.c_float * 2)(1.0, 0.0)
    trans = ctypes.c_char_p(b"N")
    ref = ctypes.byref
    sgemm(trans, trans, ref(dims, 0), ref(dims, 4), ref(dims, 8), ref(scal, 0),
          ctypes.c_void_p(ws.ctypes.data + 4 * start), ref(dims, 12),
          ctypes.c_void_p(xs.ctypes.data), ref(dims, 16), ref(scal, 4),
          ctypes.c_void_p(out.ctypes.data), ref(dims, 20))  # fmt: skip
    return out


def find_sgemm() -> CFuncPtr | None:
    """torch's ``sgemm_`` as a ctypes function, None where its library does not export one."""
    folder = Path(torch.__file__).parent / "lib"
    for name in _LIBRARIES:
        if (folder / name).exists():
            try:
                sgemm = ctypes.CDLL(str(folder / name)).sgemm_
            except (OSError, AttributeError):
                return None
            sgemm.restype = None
            return sgemm
    return None
