"""``Int8Linear``: an ``nn.Linear`` replacement with int8 weights and int8 activations.

What it computes, for fp32 input ``x [.., in]``:

1. **smoothing** (SmoothQuant): ``x / s`` with a per-input-channel vector ``s`` computed once
   from calibration ranges, and the weight columns multiplied by ``s`` so that ``(x / s) (W s)^T
   = x W^T`` exactly; it moves activation outliers (a few channels with values 10-100x the
   rest) into the weights, which quantise them per row without trouble;
2. **per-token asymmetric activation scales**: each row (token) is mapped onto ``[0, 1]`` by its
   own min and max before the u8 x int8 matmul and mapped back after it (the row's range times
   the result, plus the row's min times the weight's row sums), so one long or extreme text in a
   batch does not coarsen every other token's grid, and one-sided rows (GELU outputs) use the
   whole grid; rows go through in cache-sized chunks;
3. **per-output-channel weight scales**: symmetric int8, one scale per weight row (a 7-bit grid
   on CPUs without VNNI, see :meth:`Int8Linear.from_linear`);
4. the int8 x int8 -> int32 matmul and the rescale to fp32 run in FBGEMM
   (``torch.ops.quantized.linear_dynamic``), the bias is added in fp32.

Everything outside the linear layers (embeddings, LayerNorm, softmax / attention, GELU, the
pooling and the M3 heads) stays fp32.

Example::

    >>> import torch
    >>> from bgem3.quant.linear import Int8Linear
    >>> torch.manual_seed(0) and None
    >>> lin = torch.nn.Linear(64, 32)
    >>> q = Int8Linear.from_linear(lin)
    >>> x = torch.randn(5, 64)
    >>> bool(torch.nn.functional.cosine_similarity(q(x), lin(x), dim=-1).min() > 0.999)
    True
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch


def smoothing_scales(input_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's ``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)`` (clamped, fp32 ``[in]``).

    ``alpha = 0`` leaves activations alone; larger values move more of their range into the weights.
    """
    a = input_absmax.float().clamp(min=1e-5)
    w = weight.detach().float().abs().amax(dim=0).clamp(min=1e-5)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    return s.clamp(min=1e-4, max=1e4)


#: rows (tokens) per FBGEMM call. Each chunk costs ~8 parallel regions (min, max, scaling, FBGEMM's
#: own passes, rescale); with 2 threads on a busy machine each region can wait ~ms for the other
#: thread, which at 1024 rows made int8 2.5x slower than fp32 (bulk run, load 3.5). 4096 rows keep
#: the passes within the heap's reuse size and cut those waits 4x.
ROW_CHUNK = 4096


class Int8Linear(torch.nn.Module):
    """int8 weights (per output channel) x int8 activations (per token), fp32 in and out.

    Build it with :meth:`from_linear`; it is inference-only (no gradients, no state_dict
    round trip: quantise again from the fp32 checkpoint).
    """

    def __init__(self, packed, bias: Optional[torch.Tensor], inv_smooth: Optional[torch.Tensor],
                 in_features: int, out_features: int, weight_qmax: int = 127, reduce_range: bool = False) -> None:
        super().__init__()
        self._packed = packed
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("inv_smooth", inv_smooth, persistent=False)
        # [1, out] sums over inputs of the dequantised (smoothed) weight: the offset term of the
        # asymmetric per-token inputs
        wsum = torch.ops.quantized.linear_unpack(packed)[0].dequantize().float().sum(dim=1, keepdim=True).t()
        self.register_buffer("weight_sum", wsum.contiguous(), persistent=False)
        self.in_features, self.out_features = in_features, out_features
        self.weight_qmax = weight_qmax
        self.reduce_range = reduce_range

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, input_absmax: Optional[torch.Tensor] = None,
                    alpha: float = 0.0, weight_qmax: int = 127,
                    reduce_range: Optional[bool] = None) -> "Int8Linear":
        """Quantise ``linear``; ``input_absmax`` (per input channel, from calibration) + ``alpha``
        turn SmoothQuant smoothing on (``alpha=0`` or no ranges: none).

        ``weight_qmax``: the weight grid is ``[-weight_qmax, weight_qmax]`` (default 127).
        ``reduce_range``: 7-bit activations. Default: on where the CPU has no VNNI/AMX, whose
        ``vpmaddubsw`` adds two u8 x s8 products in int16 and saturates with 8-bit activations
        (255 * 127 * 2 > 32767; measured 1.4-6.9% error on a layer); with 7 bits it cannot
        (127 * 127 * 2 < 32767), so the int8 arithmetic stays exact. (Measured alternative:
        ``weight_qmax=63`` with 8-bit activations, slightly worse on the real MiniLM.)
        """
        if reduce_range is None:  # 7-bit activations where 8 would saturate (no VNNI)
            from .engine import has_vnni

            reduce_range = not has_vnni()
        if not 1 <= int(weight_qmax) <= 127:
            raise ValueError(f"weight_qmax must be within 1..127; got {weight_qmax!r}")
        weight = linear.weight.detach().float()
        inv = None
        if input_absmax is not None and alpha > 0:
            s = smoothing_scales(input_absmax, weight, alpha)
            weight = weight * s
            inv = (1.0 / s).contiguous()
        scale = (weight.abs().amax(dim=1).clamp(min=1e-8) / float(weight_qmax)).double()
        with warnings.catch_warnings():  # torch >= 2.10 flags quantized-tensor creation as deprecated
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
            qw = torch.quantize_per_channel(weight, scale, torch.zeros(weight.shape[0], dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        return cls(packed, bias, inv, linear.in_features, linear.out_features, int(weight_qmax), bool(reduce_range))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()
        out = torch.empty(x.shape[0], self.out_features, dtype=torch.float32, device=x.device)
        # row chunks: a whole 16k-token batch is ~100 MB per pass (fresh, page-faulted allocations)
        for a in range(0, x.shape[0], ROW_CHUNK):
            xc = x[a:a + ROW_CHUNK]
            if self.inv_smooth is not None:
                xc = xc * self.inv_smooth
            # per-token asymmetric scales: each row is mapped onto [0, 1] (its min -> 0, its max -> 1)
            # before FBGEMM picks its per-tensor u8 grid, so every token gets the whole grid
            lo, hi = xc.amin(dim=1, keepdim=True), xc.amax(dim=1, keepdim=True)  # (13x faster than aminmax here)
            r = (hi - lo).clamp_(min=1e-12)
            inv = r.reciprocal()
            x01 = torch.addcmul(-lo * inv, xc, inv)
            y = torch.ops.quantized.linear_dynamic(x01, self._packed, self.reduce_range)
            # x = lo + r * x01  =>  x W^T + b = r * (x01 W^T) + lo * rowsum(W) + b
            o = out[a:a + ROW_CHUNK]
            if self.bias is not None:
                torch.addcmul(self.bias, lo, self.weight_sum, out=o)
            else:
                torch.mul(lo, self.weight_sum, out=o)
            o.addcmul_(y, r)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 weights per channel, "
                f"int8 activations per token, weight grid +-{self.weight_qmax}, smoothing={'on' if self.inv_smooth is not None else 'off'}")
