"""fp32 linear layers of the exact CPU path through oneDNN where PyTorch's BLAS call is the slow one.

PyTorch runs an fp32 ``nn.Linear`` on CPU as an MKL ``sgemm``. MKL picks its AVX2 kernels on
non-Intel CPUs, so on an AMD Zen 4 with AVX-512 it reached ~100 GFLOP/s per core where oneDNN (also
inside every PyTorch CPU build) reached ~200-245 on the same [rows, 384] x [384, 1536] products
(one thread; 2.0-2.4x on the transformer's shapes, docs/benchmarks_encode.md). That was most of why
the exact path was 1.8x slower than ONNX Runtime (MLAS, AVX-512) on a single query.

Same op, same fp32 arithmetic (no bf16 / TF32 shortcut: used only while PyTorch's fp32 matmul
precision is the default "highest"), another summation order: outputs move at float rounding
(~1e-7 on normalised vectors), as ONNX Runtime's do. The exact GELU of the FFN is fused as
oneDNN's ``gelu_erf`` post-op.

Policy (:data:`ONEDNN`): ``None`` (auto) uses oneDNN on x86 CPUs whose vendor is not Intel (where
MKL takes its AVX2 path; measured here) and keeps MKL on Intel CPUs (MKL's home, not measured here);
``True`` / ``False`` force it (benchmarks time both). Anything else (bf16 / int8 layers, GPUs, a
PyTorch without the oneDNN op, fewer than :data:`MIN_ROWS` rows, a module with forward hooks, as
bgem3.quant's calibration sets) runs the module as it is.

Example::

    >>> import torch
    >>> from bgem3._cpu_linear import linear
    >>> lin = torch.nn.Linear(8, 4)
    >>> x = torch.randn(16, 8)
    >>> bool(torch.allclose(linear(lin, x), lin(x), atol=1e-5))
    True
"""

from __future__ import annotations

import functools
import platform
from typing import Optional

import torch

#: None: auto (oneDNN on non-Intel x86 CPUs); True / False: force (benchmarks, tests)
ONEDNN: Optional[bool] = None
#: fewer rows than this run on MKL (oneDNN's per-call setup costs more than it saves on 1-7 rows)
MIN_ROWS = 8


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=None)
def _onednn_works() -> bool:
    """The private oneDNN op exists in this PyTorch and matches ``F.linear`` on a small problem."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=g) for s in ((16, 64), (48, 64), (48,)))
        got = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
        want = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b))
        return bool(torch.allclose(got, want, rtol=1e-5, atol=1e-5))
    except Exception:  # an op that changed its signature: MKL, as PyTorch does it
        return False


@functools.lru_cache(maxsize=None)
def _auto() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and _cpu_vendor() not in ("", "GenuineIntel") \
        and _onednn_works()


def onednn_active() -> bool:
    """Whether fp32 linear layers of the exact CPU path run on oneDNN now (see :data:`ONEDNN`)."""
    if torch.backends.mkldnn.matmul.fp32_precision not in ("none", "ieee"):
        return False  # the user allowed bf16/TF32 inside fp32 matmuls: leave it to PyTorch
    return _auto() if ONEDNN is None else bool(ONEDNN) and _onednn_works()


def _hooked(mod: torch.nn.Module) -> bool:
    """Whether calling ``mod`` runs hooks (bgem3.quant's calibration records inputs so): then it is called."""
    from torch.nn.modules import module as m

    return bool(mod._forward_hooks or mod._forward_pre_hooks or m._global_forward_hooks
                or m._global_forward_pre_hooks)


def linear(mod: torch.nn.Module, x: torch.Tensor, *, gelu: bool = False,
           active: Optional[bool] = None) -> torch.Tensor:
    """``mod(x)`` (then exact GELU when ``gelu``), on oneDNN when that is the faster fp32 path here.

    ``active``: :func:`onednn_active`'s answer when the caller already has it (saves the lookup per layer).
    """
    if active is None:
        active = onednn_active()
    if active and type(mod) is torch.nn.Linear and x.dtype == torch.float32 and mod.weight.dtype == torch.float32 \
            and x.device.type == "cpu" and x.dim() == 2 and x.shape[0] >= MIN_ROWS and x.is_contiguous() \
            and not _hooked(mod):
        return torch.ops.mkldnn._linear_pointwise(x, mod.weight, mod.bias, "gelu" if gelu else "none", [],
                                                  "none" if gelu else "")
    y = mod(x)
    return torch.ops.aten.gelu_(y) if gelu else y
