"""Attention over packed rows: how the texts of one batch meet in ``scaled_dot_product_attention``.

The unpadded path (:meth:`bgem3.Encoder._forward_packed`, :meth:`bgem3.Reranker._forward_packed`) keeps
every text's rows packed one after the other, ``[sum(T_i), H]``; only attention needs to know where a
text starts and ends. :func:`packed_layout` decides once per batch how, and :func:`attend` runs it:

- **per text** (CPU, texts of different lengths): one attention call per text on strided views of the
  packed rows, without padding, mask or copies. PyTorch's CPU flash kernel is much slower with a mask
  than without, and a padded batch also pays the scatter into and gather out of the padded layout;
  measured on 32-wide heads (AMD Zen 4, avx512): 10 texts of ~400 tokens 23.8 -> 16.1 ms (2 threads) and
  45.3 -> 28.0 ms (1 thread); 256 short texts 25-31 -> 14 ms (docs/benchmarks_encode.md);
- **padded** (other devices, where one launch beats many): the rows scattered into ``[B, W]`` slots with a
  key mask, as before;
- **one block** (one text, or texts of one length): a plain reshape, no mask.

Every way computes each text's attention over its own tokens only, so the results agree to float
rounding (~1e-7) and match the Hugging Face forward.

Example::

    >>> import numpy as np, torch
    >>> layout = packed_layout(np.array([3, 2]), torch.device("cpu"))
    >>> layout.spans
    [(0, 3), (3, 2)]
    >>> q = k = v = torch.randn(5, 8)
    >>> attend(layout, q, k, v, heads=2, scale=None).shape
    torch.Size([5, 8])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

__all__ = ["AttentionLayout", "packed_layout", "attend"]

_sdpa = torch.nn.functional.scaled_dot_product_attention


@dataclass
class AttentionLayout:
    """Where each text of a packed batch lies. ``spans``: ``(start, length)`` per text when attention runs per
    text; ``slot`` / ``mask``: the padded layout's row slots and ``[B, 1, 1, W]`` key mask (``None`` when every
    text has the same length)."""

    b: int
    width: int
    spans: Optional[list] = None
    slot: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None


def packed_layout(lens: np.ndarray, device: torch.device, *, local: Optional[torch.Tensor] = None,
                  seg: Optional[torch.Tensor] = None) -> AttentionLayout:
    """The layout of texts of ``lens`` tokens packed in order. ``local`` (each row's position in its text) and
    ``seg`` (each row's text) are only read for the padded layout; they are computed when not given."""
    b = int(lens.shape[0])
    width = int(lens.max()) if b else 0
    total = int(lens.sum())
    if b <= 1 or width * b == total:
        return AttentionLayout(b, width)
    if device.type == "cpu":
        starts = np.cumsum(lens) - lens
        return AttentionLayout(b, width, spans=list(zip(starts.tolist(), lens.tolist())))
    lens_t = torch.as_tensor(lens, dtype=torch.int64, device=device)
    if seg is None:
        seg = torch.repeat_interleave(torch.arange(b, device=device), lens_t, output_size=total)
    if local is None:
        starts_t = torch.cumsum(lens_t, 0) - lens_t
        local = torch.arange(total, device=device) - starts_t[seg]
    mask = torch.arange(width, device=device).unsqueeze(0) < lens_t.unsqueeze(1)
    return AttentionLayout(b, width, slot=seg * width + local, mask=mask[:, None, None, :])


def attend(layout: AttentionLayout, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, heads: int,
           scale: Optional[float], cls_only: bool = False) -> torch.Tensor:
    """Scaled dot-product attention of packed rows ``q`` / ``k`` / ``v`` (``[rows, H]``, ``heads`` heads), each
    text attending to its own tokens; the context rows ``[rows, H]`` in the same order. ``cls_only``: ``q``
    holds only each text's first row (``[B, H]``) and so does the result."""
    b, width = layout.b, layout.width
    h = k.shape[-1]
    hd = h // heads
    if layout.spans is not None:
        out = []
        for i, (o, n) in enumerate(layout.spans):
            qi = q[i:i + 1] if cls_only else q[o:o + n]
            ctx = _sdpa(qi.view(1, -1, heads, hd).transpose(1, 2), k[o:o + n].view(1, n, heads, hd).transpose(1, 2),
                        v[o:o + n].view(1, n, heads, hd).transpose(1, 2), scale=scale)
            out.append(ctx.transpose(1, 2).reshape(-1, h))
        return torch.cat(out)
    slot = layout.slot
    if slot is None:  # one text, or texts of one length: a plain reshape
        kk = k.view(b, width, heads, hd).transpose(1, 2)
        vv = v.view(b, width, heads, hd).transpose(1, 2)
    else:
        kk = k.new_zeros(b * width, h).index_copy_(0, slot, k).view(b, width, heads, hd).transpose(1, 2)
        vv = v.new_zeros(b * width, h).index_copy_(0, slot, v).view(b, width, heads, hd).transpose(1, 2)
    if cls_only:
        qq = q.view(b, 1, heads, hd).transpose(1, 2)
    elif slot is None:
        qq = q.view(b, width, heads, hd).transpose(1, 2)
    else:
        qq = q.new_zeros(b * width, h).index_copy_(0, slot, q).view(b, width, heads, hd).transpose(1, 2)
    ctx = _sdpa(qq, kk, vv, attn_mask=layout.mask, scale=scale).transpose(1, 2).reshape(-1, h)
    return ctx[slot] if (slot is not None and not cls_only) else ctx
