"""The unpadded BERT / XLM-RoBERTa forward on packed rows: the torch backend's exact path, shared by
:class:`bgem3.Encoder` and :class:`bgem3.Reranker`.

Every text's tokens sit end to end as rows ``[sum(T_i), H]``; each linear layer, LayerNorm, GELU and
residual runs on the real rows only, attention per text (:mod:`bgem3._attention`). The same modules,
weights and op order as the Hugging Face forward, so outputs match the padded model to float rounding.

- :func:`packed_kind`: which models qualify ("roberta", "bert" or None);
- :func:`packed_position_ids`: position ids of packed texts, as the padded model gives them;
- :func:`packed_layer` (+ :func:`layer_rows`, its row-wise half in cache-sized chunks): one layer;
- :func:`one_text_plan` / :func:`layer_one`: the lean path of one text (a single query) on pre-packed
  oneDNN weights (:mod:`bgem3._cpu_linear`), bit for bit the general path's result.

Example::

    >>> import types
    >>> packed_kind(types.SimpleNamespace(config=types.SimpleNamespace(model_type="llama")))  # None: padded path
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ._attention import AttentionLayout, attend
from ._cpu_linear import fused_product, linear, onednn_active

__all__ = ["ROW_CHUNK_ELEMENTS", "ROW_CHUNK", "packed_kind", "packed_position_ids", "packed_layer", "layer_rows",
           "one_text_plan", "layer_one", "is_exact_gelu"]


#: FFN-intermediate elements per chunk of the row-wise part of a layer on CPU (3M floats = 12 MB:
#: 2048 rows of a 1536-wide FFN, 768 rows of BGE-M3's 4096-wide one). Small enough to be reused from
#: the heap (no fresh, page-faulted allocation per layer), large enough that each chunk's ops are
#: long next to waking the other threads (2 threads on a busy machine pay ~ms per parallel region).
ROW_CHUNK_ELEMENTS = 3 * 1024 * 1024
#: or a fixed number of rows per chunk (tests set it to exercise chunk edges); None: from the elements
ROW_CHUNK: Optional[int] = None


_ROBERTA_TYPES = ("xlm-roberta", "roberta", "camembert")
_BERT_TYPES = ("bert",)


def packed_kind(model: torch.nn.Module) -> Optional[str]:
    """Which unpadded path fits ``model``: "roberta", "bert", or None (use the padded path).

    Only encoder-only BERT / (XLM-)RoBERTa models with absolute position embeddings and the
    standard Hugging Face module layout qualify; anything else keeps the reference path.
    """
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", "")
    if mtype not in _ROBERTA_TYPES + _BERT_TYPES:
        return None
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return None
    if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
        return None
    try:
        layer = model.encoder.layer[0]
        sa = layer.attention.self
        _ = (model.embeddings.position_embeddings, sa.query, sa.key, sa.value, sa.num_attention_heads,
             sa.attention_head_size, sa.scaling, layer.attention.output.dense, layer.attention.output.LayerNorm,
             layer.intermediate.dense, layer.intermediate.intermediate_act_fn, layer.output.dense, layer.output.LayerNorm)
        if getattr(layer, "chunk_size_feed_forward", 0):
            return None
    except (AttributeError, IndexError, TypeError):
        return None
    return "roberta" if mtype in _ROBERTA_TYPES else "bert"


def packed_position_ids(kind: str, embeddings: Any, ids: torch.Tensor, local: torch.Tensor, starts: torch.Tensor,
                        lens: torch.Tensor) -> torch.Tensor:
    """Position ids of packed texts (``ids``: all texts' tokens end to end, text ``i`` at ``starts[i]`` for
    ``lens[i]`` tokens; ``local``: each token's index inside its text), as the padded Hugging Face model gives
    them: BERT counts from 0 (``local``); XLM-R / RoBERTa (``kind == "roberta"``) count non-pad tokens from
    ``padding_idx + 1`` and give pad tokens ``padding_idx`` (``create_position_ids_from_input_ids``)."""
    if kind != "roberta":
        return local
    pad_idx = embeddings.padding_idx
    nonpad = ids.ne(pad_idx).to(torch.int64)
    c = torch.cumsum(nonpad, 0)
    first = (c[starts] - nonpad[starts]).repeat_interleave(lens)
    return (c - first) * nonpad + pad_idx


def packed_layer(layer, hidden, layout: AttentionLayout, query_rows, fast: Optional[bool] = None):
    """One BERT/XLM-R encoder layer on packed rows laid out as ``layout`` (:func:`~bgem3._attention.packed_layout`).
    ``query_rows``: keep only those rows (the CLS rows of the last layer when nothing else is needed).
    ``fast``: :func:`onednn_active`'s answer when the caller has it."""
    sa = layer.attention.self
    q_in = hidden if query_rows is None else hidden[query_rows]
    if fast is None:
        fast = onednn_active()
    qkv = fused_product(sa.query, hidden, fast)  # pre-packed as one [3H, H] weight (exact CPU fp32 path)
    if qkv is not None:
        q, k, v = qkv
        if query_rows is not None:
            q = q[query_rows]
    else:
        q = linear(sa.query, q_in, active=fast)
        k = linear(sa.key, hidden, active=fast)
        v = linear(sa.value, hidden, active=fast)
    ctx = attend(layout, q, k, v, heads=sa.num_attention_heads, scale=sa.scaling, cls_only=query_rows is not None)
    return layer_rows(layer, ctx, q_in, fast)


def layer_rows(layer, ctx: torch.Tensor, residual: torch.Tensor, fast: Optional[bool] = None) -> torch.Tensor:
    """The row-wise rest of a BERT/XLM-R layer (attention output projection + LayerNorm, FFN,
    GELU, output projection + LayerNorm) over row chunks (:data:`ROW_CHUNK_ELEMENTS`).

    Same modules and op order as Hugging Face's ``BertSelfOutput`` / ``BertIntermediate`` /
    ``BertOutput`` (dropout is the identity in eval mode), so each row's result is the same;
    chunking keeps the FFN's ``[rows, 4H]`` intermediate in cache instead of a fresh
    ``[tokens, 4H]`` allocation per layer (on CPU, large fresh allocations are page-faulted
    in at every layer, which cost ~15% of the fp32 bulk time before this).
    """
    att_out, inter, out = layer.attention.output, layer.intermediate, layer.output
    act = inter.intermediate_act_fn
    inplace_gelu = is_exact_gelu(act)
    n = ctx.shape[0]
    if ctx.device.type != "cpu":
        step = n
    else:
        width = int(getattr(inter.dense, "out_features", 0) or 4 * ctx.shape[1])
        step = ROW_CHUNK or max(256, ROW_CHUNK_ELEMENTS // max(width, 1))
    result = None
    if fast is None:
        fast = onednn_active()
    for a in range(0, n, step):
        c, r = ctx[a:a + step], residual[a:a + step]
        x = linear(att_out.dense, c, active=fast)
        x = att_out.LayerNorm(x.add_(r))
        if inplace_gelu:  # exact (erf) GELU: in place, or fused into the GEMM on oneDNN
            y = linear(inter.dense, x, gelu=True, active=fast)
        else:
            y = act(linear(inter.dense, x, active=fast))
        y = linear(out.dense, y, active=fast)
        y = out.LayerNorm(y.add_(x))
        if step >= n:
            return y
        if result is None:
            result = y.new_empty((n, y.shape[1]))
        result[a:a + step] = y
    return result


def one_text_plan(layers: list) -> Optional[list]:
    """Per layer, the modules :func:`layer_one` reads (the caller caches it per model), or None when a
    layer does not have that shape (another attention class, a non-erf activation) or a global
    module hook is set (calibration records inputs so: the modules are then called)."""
    from torch.nn.modules import module as m

    if m._global_forward_hooks or m._global_forward_pre_hooks:
        return None
    plan: Optional[list] = []
    for layer in layers:
        try:
            sa, inter = layer.attention.self, layer.intermediate
            entry = (sa.query, sa.key, sa.value, int(sa.num_attention_heads), int(sa.attention_head_size),
                     float(sa.scaling), layer.attention.output.dense, layer.attention.output.LayerNorm,
                     inter.dense, layer.output.dense, layer.output.LayerNorm)
        except AttributeError:
            plan = None
            break
        if not is_exact_gelu(inter.intermediate_act_fn) \
                or not all(isinstance(x, torch.nn.LayerNorm) for x in (entry[7], entry[10])):
            plan = None
            break
        plan.append(entry)
    return plan


def layer_one(entry: tuple, hidden: torch.Tensor, n: int) -> Optional[torch.Tensor]:
    """One BERT/XLM-R layer for ONE text of ``n`` rows whose linear layers are pre-packed (the exact CPU fp32
    path of a single query): the same products, attention, residuals and LayerNorms as
    :func:`packed_layer`, bit for bit, with the per-layer Python of the general path (row
    chunks, per-call policy checks) left out. None (nothing computed) where a layer is not packed so or
    has hooks: the caller then runs the general path."""
    q_mod, k_mod, v_mod, nh, hd, scale, ao, ln1, inter, out, ln2 = entry
    group = q_mod.__dict__.get("_fused")
    w_ao, w_in, w_out = ao.__dict__.get("_packed"), inter.__dict__.get("_packed"), out.__dict__.get("_packed")
    if group is None or w_ao is None or w_in is None or w_out is None or group.mods != (q_mod, k_mod, v_mod) \
            or hidden.dtype != torch.float32 or not hidden.is_contiguous():
        return None
    for mod in (q_mod, k_mod, v_mod, ao, ln1, inter, out, ln2):
        if mod._forward_hooks or mod._forward_pre_hooks:
            return None
    lp = torch.ops.mkldnn._linear_pointwise
    q, k, v = lp(hidden, group.packed, group.bias(), "none", [], "").split(group.sizes, dim=-1)
    h = q.shape[-1]
    ctx = torch.nn.functional.scaled_dot_product_attention(
        q.view(1, n, nh, hd).transpose(1, 2), k.view(1, n, nh, hd).transpose(1, 2),
        v.view(1, n, nh, hd).transpose(1, 2), scale=scale).transpose(1, 2).reshape(-1, h)
    x = lp(ctx, w_ao, ao._parameters["bias"], "none", [], "")
    x = torch.nn.functional.layer_norm(x.add_(hidden), ln1.normalized_shape, ln1._parameters["weight"],
                                       ln1._parameters["bias"], ln1.eps)
    y = lp(x, w_in, inter._parameters["bias"], "gelu", [], "none")
    y = lp(y, w_out, out._parameters["bias"], "none", [], "")
    return torch.nn.functional.layer_norm(y.add_(x), ln2.normalized_shape, ln2._parameters["weight"],
                                          ln2._parameters["bias"], ln2.eps)


def is_exact_gelu(act: Any) -> bool:
    """Whether ``act`` is transformers' exact (erf) GELU, which may then run in place."""
    try:
        from transformers.activations import GELUActivation
    except ImportError:  # pragma: no cover
        return False
    return isinstance(act, GELUActivation) and getattr(act, "act", None) is torch.nn.functional.gelu
