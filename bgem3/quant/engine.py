"""Which int8 engine this CPU gets, and what it is worth here.

The int8 linear layers run on PyTorch's own quantized kernels (FBGEMM, the ``x86`` / ``fbgemm``
quantized engine): no extra dependency. FBGEMM uses VNNI (``avx512_vnni`` / ``avx_vnni``) or AMX
(``amx_int8``) when the CPU has them and falls back to AVX2 ``vpmaddubsw`` otherwise, which is
only about 2x the fp32 matmul rate instead of ~4x, and whose int16 pair sums saturate with
8-bit activations: there the activations are quantised to 7 bits (``reduce_range``), which keeps
the arithmetic exact. ONNX Runtime (MLAS) and
OpenVINO were measured as alternatives (see docs/benchmarks_encode.md).

Example::

    >>> from bgem3.quant.engine import int8_cpu_features
    >>> from bgem3.quant.engine import select_engine
    >>> select_engine() in ("fbgemm", "x86")
    True
    >>> isinstance(int8_cpu_features(), frozenset)
    True
"""

from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)

#: CPU flags that give int8 dot products their full rate.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def int8_cpu_features() -> frozenset[str]:
    """The int8-relevant flags of this CPU (``avx2``, ``avx512_vnni``, ``avx_vnni``, ``amx_int8``)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        cap = str(getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "")()).upper()
        if "AVX512" in cap:
            flags |= {"avx2", "avx512f"}
        elif "AVX2" in cap:
            flags.add("avx2")
        if "VNNI" in cap:
            flags.add("avx512_vnni")
        if "AMX" in cap:
            flags.add("amx_int8")
    return frozenset(flags & {"avx2", "avx512f", *VNNI_FLAGS})


def has_vnni() -> bool:
    """Whether int8 dot products run at full rate here (VNNI or AMX)."""
    return bool(int8_cpu_features() & set(VNNI_FLAGS))


def _native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or AMX): :func:`bgem3.encoder.cpu_has_fast_bf16`,
    which :func:`fast_path` takes as ``native_bf16`` (passed in, so this module never imports the encoder)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return "AMX" in str(getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "")()).upper()


def select_engine(engines: "list[str] | None" = None) -> str:
    """Pick and activate PyTorch's quantized engine for the int8 layers; the engine's name.

    Raises:
        RuntimeError: this PyTorch build has no x86 int8 engine (``fbgemm`` / ``x86``), e.g. on
            ARM; the message says to use ``dtype='fp32'`` or ``'bf16'``.
    """
    engines = list(torch.backends.quantized.supported_engines if engines is None else engines)
    for name in ("fbgemm", "x86"):
        if name in engines:
            if torch.backends.quantized.engine != name:
                torch.backends.quantized.engine = name
            return name
    raise RuntimeError(
        "dtype='int8' needs PyTorch's x86 int8 kernels (FBGEMM), which this build does not have "
        f"(quantized engines: {engines}); use dtype='fp32' (exact) or dtype='bf16' instead"
    )


def warn_if_slow() -> None:
    """Log once that int8 runs without VNNI/AMX here: correct, but no faster than fp32 to speak of."""
    if not has_vnni():
        _warn_once()


@functools.lru_cache(maxsize=1)
def _warn_once() -> None:
    logger.warning(
        "dtype='int8' on a CPU without VNNI/AMX (%s): the results keep their accuracy (7-bit activations), but "
        "do not expect a speed-up. On AVX2 the int8 matmuls run at only ~1.8x the fp32 rate and speed up only the "
        "linear layers, so the ceiling is ~1.4x dtype='fp32'; measured ~1.1x with one thread, and slower than fp32 "
        "with 2 threads on a busy machine (docs/encoder.md). Use dtype='fp32' (exact) here; int8's gains "
        "(the ~3.5x bulk target) need a CPU with AVX512_VNNI / AVX_VNNI or AMX", ", ".join(sorted(int8_cpu_features())) or "no AVX2")


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (NNCF's import is slow)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def fast_path(dtype_name: str, *, native_bf16: "bool | None" = None) -> tuple[str, str]:
    """Which engine runs ``dtype="bf16"`` / ``"int8"`` on this CPU when no ``backend=`` is given:
    ``(backend, why)``, by the measurements in docs/benchmarks_encode.md (fastest path that keeps the
    fidelity gates on the real MiniLM: dense cosine median >= 0.999, min >= 0.995, top-10 >= 0.95).

    * ``bf16`` on a CPU with AVX512_BF16 / AMX, with OpenVINO installed: ``"openvino"`` (OpenVINO bf16,
      measured ~1.7x PyTorch bf16 and closer to fp32); else ``"torch"`` (PyTorch bf16).
    * ``int8`` on a CPU with VNNI / AMX, with OpenVINO and NNCF installed: ``"openvino"`` (NNCF's
      static int8 graph, :mod:`bgem3.quant.openvino_int8`, made once into the export cache); else
      ``"torch"`` (SmoothQuant + FBGEMM, bgem3.quant). ONNX Runtime's dynamic int8 fails the gates
      (dense cosine min 0.985, top-10 0.92), so it is only used when asked for by
      ``model_kwargs={"file_name": "onnx/model_qint8.onnx"}``.

    Example::

        >>> from bgem3.quant.engine import fast_path
        >>> fast_path("int8")[0] in ("torch", "openvino")
        True
    """
    if dtype_name == "bf16":
        if native_bf16 is None:  # the caller did not say (bgem3.encoder passes cpu_has_fast_bf16())
            native_bf16 = _native_bf16()
        if not native_bf16:
            return "torch", "no avx512_bf16/AMX here: OpenVINO would not run bf16 natively either"
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "torch", "OpenVINO is not installed (pip install 'bgem3[openvino]' for the faster bf16 path)"
        return "openvino", "OpenVINO bf16 is the fastest path that keeps the fidelity gates on this CPU (avx512_bf16/AMX)"
    if dtype_name == "int8":
        if not has_vnni():
            return "torch", "no VNNI/AMX here: PyTorch int8 (SmoothQuant + FBGEMM, 7-bit activations) keeps the gates"
        if not (_installed("openvino") and _installed("nncf")):
            return "torch", ("OpenVINO/NNCF are not installed (pip install 'bgem3[openvino]' for the faster int8 "
                             "graph); PyTorch int8 (SmoothQuant + FBGEMM)")
        return "openvino", ("OpenVINO int8 (NNCF static quantisation, 1/3 of the linear FLOPs kept bf16/fp32) is "
                            "the fastest int8 that keeps the fidelity gates on this CPU (VNNI)")
    return "torch", "exact"
