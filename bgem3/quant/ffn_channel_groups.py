"""Feed-forward blocks regrouped by activation range, so the int8 OpenVINO graph can put most of the
down-projection in int8 and keep the gates (used by :mod:`bgem3.quant.openvino_int8`).

The down-projection's input (the GELU output) has a few channels with large values; static
per-tensor int8 cannot hold them, so the first int8 recipe kept every down-projection in bf16 (a
quarter of the linear FLOPs, 30 % of the int8 graph's time on the 6-layer benchmark model). Here each
BERT / XLM-RoBERTa feed-forward block is rewritten, exactly, as groups of its intermediate channels
ranked by their largest value over the calibration texts: the :data:`OUTLIER_SHARE` most extreme
channels in one small group that stays out of int8, the rest in :data:`GROUPS` groups of similar
range, each with its own up-projection rows and down-projection columns:

    ``down(gelu(up(x))) = sum_g down[:, g](gelu(up[g](x)))``

The same sum in fp32 (the parity test holds it to float rounding); only the order of the additions
changes. On real all-MiniLM-L6-v2 (300 real passages vs the exact path) the graph is at dense cosine
median 0.99912 / min 0.99730, top-10 0.982 (the down-projection whole in bf16: 0.99919 / 0.99768,
0.976), and 9-11 % faster on bulk (docs/benchmarks_encode.md).

Example::

    >>> import torch
    >>> from bgem3.quant.ffn_channel_groups import group_channels
    >>> [len(g) for g in group_channels(torch.arange(48.0), outlier_share=1 / 24, groups=4)]
    [2, 12, 12, 11, 11]
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import nn

__all__ = ["OUTLIER_SHARE", "GROUPS", "OUTLIER_MODULE", "ffn_blocks", "activation_ranges", "group_channels",
           "GroupedUp", "GroupedDown", "RegroupMismatch", "regroup_ffns"]

#: the share of each block's intermediate channels (the largest activations) kept out of int8: 64 of 1536
OUTLIER_SHARE = 1 / 24
#: the groups of similar range the other channels are cut into, each quantised on its own
GROUPS = 4
#: the attribute holding the down-projection's kept columns; its MatMul's name in the exported graph
#: carries ``.<OUTLIER_MODULE>/``, which is how :func:`bgem3.quant.openvino_int8.kept_out_of_int8` finds it
OUTLIER_MODULE = "outliers"
#: below this many intermediate channels a block is left whole (nothing to gain, groups too small)
MIN_CHANNELS = 16


def ffn_blocks(model: nn.Module) -> Optional[list[nn.Module]]:
    """The layers of a BERT / XLM-RoBERTa-style encoder (``intermediate.dense`` + ``intermediate_act_fn``,
    ``output.dense``, both with a bias), or ``None`` when the model is not shaped so."""
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or len(layers) == 0:
        return None
    for layer in layers:
        inter, out = getattr(layer, "intermediate", None), getattr(layer, "output", None)
        up, down = getattr(inter, "dense", None), getattr(out, "dense", None)
        if not (isinstance(up, nn.Linear) and isinstance(down, nn.Linear) and callable(getattr(inter, "intermediate_act_fn", None))
                and up.out_features == down.in_features and up.bias is not None and down.bias is not None):
            return None
    return list(layers)


def activation_ranges(model: nn.Module, blocks: Sequence[nn.Module], batches: Iterable[dict]) -> list[torch.Tensor]:
    """Each block's largest ``|activation|`` per intermediate channel over ``batches`` (model inputs)."""
    ranges = [torch.zeros(layer.intermediate.dense.out_features) for layer in blocks]

    def hook(i):
        def record(_mod, _inp, out):
            ranges[i] = torch.maximum(ranges[i], out.detach().abs().float().amax(dim=tuple(range(out.dim() - 1))))
        return record

    handles = [layer.intermediate.register_forward_hook(hook(i)) for i, layer in enumerate(blocks)]
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return ranges


def group_channels(ranges: torch.Tensor, *, outlier_share: float = OUTLIER_SHARE, groups: int = GROUPS) -> list[torch.Tensor]:
    """Channel indices, sorted within each group: first the ``outlier_share`` largest ``ranges`` (at
    least one), then the rest in ``groups`` groups of similar range, largest first."""
    rank = torch.argsort(ranges, descending=True, stable=True)
    k = max(1, round(len(ranges) * outlier_share))
    return [torch.sort(rank[:k]).values] + [torch.sort(g).values for g in torch.tensor_split(rank[k:], groups)]


class GroupedUp(nn.Module):
    """An up-projection + activation cut by channel groups: ``x -> (act(up[g](x)) for g)``."""

    def __init__(self, inter: nn.Module, groups: Sequence[torch.Tensor]):
        super().__init__()
        weight, bias = inter.dense.weight.data, inter.dense.bias.data
        self.ups = nn.ModuleList()
        for idx in groups:
            lin = nn.Linear(weight.shape[1], len(idx), dtype=weight.dtype)
            lin.weight.data, lin.bias.data = weight[idx].clone(), bias[idx].clone()
            self.ups.append(lin)
        self.act = inter.intermediate_act_fn

    def forward(self, x: torch.Tensor) -> tuple:
        return tuple(self.act(up(x)) for up in self.ups)


class GroupedDown(nn.Module):
    """The matching down-projection: the sum of each group's columns applied to its activations; the
    first group's (the outliers) under :data:`OUTLIER_MODULE`, the bias on the first of the rest."""

    def __init__(self, dense: nn.Linear, groups: Sequence[torch.Tensor]):
        super().__init__()
        weight = dense.weight.data
        kept = nn.Linear(len(groups[0]), weight.shape[0], bias=False, dtype=weight.dtype)
        kept.weight.data = weight[:, groups[0]].clone()
        setattr(self, OUTLIER_MODULE, kept)
        self.rest = nn.ModuleList()
        for j, idx in enumerate(groups[1:]):
            lin = nn.Linear(len(idx), weight.shape[0], bias=j == 0, dtype=weight.dtype)
            lin.weight.data = weight[:, idx].clone()
            if j == 0:
                lin.bias.data = dense.bias.data.clone()
            self.rest.append(lin)

    def forward(self, parts: tuple) -> torch.Tensor:
        y = self.rest[0](parts[1])
        for lin, h in zip(self.rest[1:], parts[2:]):
            y = y + lin(h)
        return y + getattr(self, OUTLIER_MODULE)(parts[0])


def _block_outputs(model: nn.Module, blocks: Sequence[nn.Module], batch: dict,
                   inputs: Optional[list] = None) -> tuple[list, list]:
    """Each block's input and output hidden states for ``batch``; with ``inputs``, each block is fed its
    given input instead of the previous block's output."""
    seen_in: list = [None] * len(blocks)
    seen_out: list = [None] * len(blocks)

    def pre(i):
        def hook(_mod, args, kwargs):
            if inputs is None:
                seen_in[i] = args[0] if args else kwargs.get("hidden_states")
                return None
            if args:
                return (inputs[i],) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": inputs[i]}
        return hook

    def post(i):
        def hook(_mod, _args, _kwargs, out):
            seen_out[i] = out[0] if isinstance(out, (tuple, list)) else out
        return hook

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(post(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return seen_in, seen_out


class RegroupMismatch(ValueError):
    """The regrouped model did not compute what the original did (a model whose layers do not call
    ``output(intermediate(x), x)`` as BERT's do); the model was put back as it was."""


def regroup_ffns(model: nn.Module, batches: Iterable[dict], *, outlier_share: float = OUTLIER_SHARE,
                 groups: int = GROUPS) -> int:
    """Rewrite ``model``'s feed-forward blocks in place as channel groups ranked on ``batches`` (the
    calibration texts as model inputs); the number of blocks rewritten (0: not a BERT / XLM-R-style
    encoder, or blocks too narrow, and the model is untouched).

    The rewrite is checked block by block: each block, fed the input it had in the original model on
    the first batch, must give the same output (to fp32 rounding: 1e-4 of the largest value; blocks are
    compared one by one because random-weight deep stacks amplify rounding from block to block);
    otherwise the original modules are put back and :class:`RegroupMismatch` is raised.
    """
    blocks = ffn_blocks(model)
    if not blocks or blocks[0].intermediate.dense.out_features < max(MIN_CHANNELS, groups + 1):
        return 0
    batches = list(batches)
    if not batches:
        raise ValueError("regrouping the feed-forward blocks needs calibration inputs; got none")
    ranges = activation_ranges(model, blocks, batches)
    if not all(torch.isfinite(rng).all() for rng in ranges):
        raise ValueError("the calibration pass gave non-finite feed-forward activations; the model's weights "
                         "are damaged or not fp32")
    inputs, before = _block_outputs(model, blocks, batches[0])
    originals = [(layer, layer.intermediate, layer.output.dense) for layer in blocks]
    for layer, rng in zip(blocks, ranges):
        parts = group_channels(rng, outlier_share=outlier_share, groups=groups)
        # the layer calls ``self.output(self.intermediate(x), x)``: the tuple of groups passes through
        # ``output.dense`` (now the grouped sum), then the output's dropout, residual and LayerNorm as before
        layer.output.dense = GroupedDown(layer.output.dense, parts)
        layer.intermediate = GroupedUp(layer.intermediate, parts)
    try:
        _, after = _block_outputs(model, blocks, batches[0], inputs)
        worst, scale = 0.0, 1.0
        for a, b in zip(after, before):
            if a is None or a.shape != b.shape:
                worst = float("inf")
                break
            worst = max(worst, float((a - b).abs().max()))
            scale = max(scale, float(b.abs().max()))
    except Exception as exc:  # a layer that does not take the groups' tuple
        worst, scale = float("inf"), 1.0
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
    else:
        reason = f"a block's output moved by up to {worst:.3g} on values up to {scale:.3g}"
    if not worst <= 1e-4 * scale:
        for layer, inter, dense in originals:
            layer.intermediate, layer.output.dense = inter, dense
        raise RegroupMismatch(f"the regrouped feed-forward blocks do not compute the original model ({reason})")
    return len(blocks)
