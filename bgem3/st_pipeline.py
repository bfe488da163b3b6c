"""Read a sentence-transformers folder's module pipeline, and refuse what bgem3 cannot reproduce.

A sentence-transformers folder declares how its vectors are made: ``modules.json`` lists the
modules (``Transformer`` -> ``Pooling`` -> optional ``Dense`` layers -> optional ``Normalize``),
``1_Pooling/config.json`` the pooling (legacy ``pooling_mode_*_token`` flags, or the
sentence-transformers 6.x ``{"pooling_mode": "mean"}``) and whether prompt tokens are pooled
(``include_prompt``), ``sentence_bert_config.json`` the truncation length (``max_seq_length``), and
``config_sentence_transformers.json`` the query / document prompts. :func:`read_st_pipeline`
reads all of it into an :class:`STPipeline`; :func:`load_dense_layers` loads the ``Dense`` modules
(weights read as tensors only). Anything else (other module types, concatenated pooling modes,
custom activations, ``do_lower_case``) raises a ``ValueError`` naming the file and the setting.

Example::

    >>> from bgem3.st_pipeline import read_st_pipeline
    >>> from bgem3.testing import minilm_path
    >>> p = read_st_pipeline(minilm_path())
    >>> p.pooling, p.normalize, p.max_seq_length
    ('mean', True, 256)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

#: Pooling modes bgem3 computes (sentence-transformers names, legacy flags mapped onto them).
SUPPORTED_POOLING = ("cls", "mean", "lasttoken", "max", "mean_sqrt_len_tokens")

_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

#: Dense activations bgem3 reproduces (sentence-transformers stores the class path).
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}


@dataclass(frozen=True)
class DenseSpec:
    """One ``Dense`` module: ``activation(x @ W.T + b)`` (``+ x`` / ``+ R x`` with ``use_residual``)."""

    path: str
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "tanh"
    use_residual: bool = False


@dataclass(frozen=True)
class STPipeline:
    """What a sentence-transformers folder declares.

    Attributes:
        transformer_path: subfolder of the Transformer module (``""`` = the folder itself).
        pooling: one of :data:`SUPPORTED_POOLING`, or ``None`` when the folder has no Pooling module.
        include_prompt: pool the prompt's tokens too (``False``: they are masked out of pooling).
        dense: the ``Dense`` modules after pooling, in order.
        normalize: a ``Normalize`` module ends the pipeline.
        max_seq_length: the Transformer's truncation length, if the folder sets one.
        query_prompt / document_prompt: the ``query`` / ``document`` (or ``passage``, ``corpus``)
            prompts, ``None`` when absent or empty.
    """

    transformer_path: str = ""
    pooling: Optional[str] = None
    include_prompt: bool = True
    dense: tuple = field(default_factory=tuple)
    normalize: bool = False
    max_seq_length: Optional[int] = None
    query_prompt: Optional[str] = None
    document_prompt: Optional[str] = None


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path} ({exc}); fix or remove the file") from None
    return data


def read_pooling_config(cfg_path: str) -> tuple[str, bool]:
    """``(pooling mode, include_prompt)`` from a Pooling module's ``config.json`` (any format)."""
    cfg = _read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        if isinstance(mode, (list, tuple)):
            mode = mode[0] if len(mode) == 1 else list(mode)
    else:
        active = [m for k, m in _LEGACY_POOLING_KEYS.items() if cfg.get(k)]
        mode = active[0] if len(active) == 1 else (active or "mean")  # ST's default when none is set
    if isinstance(mode, list):
        raise ValueError(
            f"{cfg_path} concatenates the pooling modes {mode}, which bgem3 does not compute; "
            f"supported: one of {', '.join(SUPPORTED_POOLING)}. Use sentence_transformers.SentenceTransformer "
            "for this model."
        )
    if mode not in SUPPORTED_POOLING:
        raise ValueError(
            f"{cfg_path} asks for pooling {mode!r}, which bgem3 does not compute; supported: "
            f"{', '.join(SUPPORTED_POOLING)}. Use sentence_transformers.SentenceTransformer for this model."
        )
    include_prompt = cfg.get("include_prompt", True)
    if not isinstance(include_prompt, bool):
        raise ValueError(f"{cfg_path}: include_prompt must be true or false, got {include_prompt!r}")
    return str(mode), include_prompt


def _read_dense(folder: str, sub: str) -> DenseSpec:
    cfg_path = os.path.join(folder, sub, "config.json")
    cfg = _read_json(cfg_path)
    act_name = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act_name not in ACTIVATIONS:
        raise ValueError(
            f"{cfg_path} uses the activation {act_name!r}, which bgem3 does not reproduce; supported: "
            f"{', '.join(ACTIVATIONS)}"
        )
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, "sentence_embedding") not in ("sentence_embedding", None):
            raise ValueError(f"{cfg_path}: {key}={cfg[key]!r} is not supported (only 'sentence_embedding')")
    try:
        return DenseSpec(path=sub, in_features=int(cfg["in_features"]), out_features=int(cfg["out_features"]),
                         bias=bool(cfg.get("bias", True)), activation=ACTIVATIONS[act_name],
                         use_residual=bool(cfg.get("use_residual", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{cfg_path} lacks a valid in_features / out_features ({exc})") from None


def _read_prompts(folder: str) -> tuple[Optional[str], Optional[str]]:
    path = os.path.join(folder, "config_sentence_transformers.json")
    if not os.path.isfile(path):
        return None, None
    cfg = _read_json(path)
    model_type = cfg.get("model_type", "SentenceTransformer")
    if model_type not in ("SentenceTransformer", None):
        raise ValueError(
            f"{path} says this is a sentence-transformers {model_type!r}, not an embedding model; "
            "bgem3's Encoder computes dense embeddings (SentenceTransformer models) only"
        )
    prompts = cfg.get("prompts") or {}
    if not isinstance(prompts, dict):
        return None, None
    query = prompts.get("query") or None
    doc = next((prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k)), None)
    return query, doc


def _module_kind(entry: dict, modules_path: str) -> str:
    kind = str(entry.get("type", ""))
    return kind.rsplit(".", 1)[-1]


def read_st_pipeline(folder: str) -> Optional[STPipeline]:
    """The :class:`STPipeline` a sentence-transformers folder declares, or ``None`` if it is not one."""
    modules_path = os.path.join(folder, "modules.json")
    query_prompt, doc_prompt = _read_prompts(folder)
    if not os.path.isfile(modules_path):
        legacy = os.path.join(folder, "1_Pooling", "config.json")
        if not os.path.isfile(legacy):
            return None
        pooling, include_prompt = read_pooling_config(legacy)
        return STPipeline(pooling=pooling, include_prompt=include_prompt, max_seq_length=_max_seq_length(folder, ""),
                          query_prompt=query_prompt, document_prompt=doc_prompt)
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not modules:
        raise ValueError(f"{modules_path} must list the model's modules")
    kinds = [(_module_kind(m, modules_path), str(m.get("path", "") or "")) for m in modules]
    if kinds[0][0] != "Transformer":
        raise ValueError(
            f"{modules_path}: the first module is {kinds[0][0]!r}; bgem3 runs pipelines that start with a "
            "Transformer module (use sentence_transformers.SentenceTransformer for this model)"
        )
    transformer_path = kinds[0][1]
    pooling, include_prompt = None, True
    dense: list[DenseSpec] = []
    normalize = False
    for i, (kind, sub) in enumerate(kinds[1:], start=1):
        if kind == "Pooling" and pooling is None and not dense and not normalize:
            pooling, include_prompt = read_pooling_config(os.path.join(folder, sub, "config.json"))
        elif kind == "Dense" and pooling is not None and not normalize:
            dense.append(_read_dense(folder, sub))
        elif kind == "Normalize" and pooling is not None and i == len(kinds) - 1:
            normalize = True
        elif kind == "Dropout":  # a no-op at inference
            continue
        else:
            order = " -> ".join(k for k, _ in kinds)
            raise ValueError(
                f"{modules_path}: bgem3 cannot reproduce the module {kind!r} at position {i} of the pipeline "
                f"{order}; supported: Transformer -> Pooling -> Dense* -> Normalize. Use "
                "sentence_transformers.SentenceTransformer for this model."
            )
    if pooling is None:
        raise ValueError(f"{modules_path} has no Pooling module; bgem3 cannot tell how to pool this model")
    prev = None
    for d in dense:
        if prev is not None and d.in_features != prev:
            raise ValueError(f"{os.path.join(folder, d.path)}: in_features {d.in_features} != previous out {prev}")
        prev = d.out_features
    return STPipeline(transformer_path=transformer_path, pooling=pooling, include_prompt=include_prompt,
                      dense=tuple(dense), normalize=normalize,
                      max_seq_length=_max_seq_length(folder, transformer_path),
                      query_prompt=query_prompt, document_prompt=doc_prompt)


def _max_seq_length(folder: str, transformer_path: str) -> Optional[int]:
    path = os.path.join(folder, transformer_path, "sentence_bert_config.json")
    if not os.path.isfile(path):
        return None
    cfg = _read_json(path)
    if cfg.get("do_lower_case"):
        raise ValueError(
            f"{path} sets do_lower_case=true (sentence-transformers lower-cases every input), which bgem3 "
            "does not reproduce; lower-case your texts and remove the flag, or use SentenceTransformer"
        )
    task = cfg.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise ValueError(f"{path}: transformer_task {task!r} is not supported (only 'feature-extraction')")
    value = cfg.get("max_seq_length")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{path}: max_seq_length must be a positive integer, got {value!r}")
    return int(value)


def load_dense_layers(folder: str, pipeline: STPipeline):
    """The pipeline's ``Dense`` modules as ``torch`` callables (fp32, eval, weights read as tensors only)."""
    import torch

    acts = {"identity": torch.nn.Identity, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
            "gelu": torch.nn.GELU, "sigmoid": torch.nn.Sigmoid}
    layers = []
    for spec in pipeline.dense:
        sub = os.path.join(folder, spec.path)
        st_file, bin_file = os.path.join(sub, "model.safetensors"), os.path.join(sub, "pytorch_model.bin")
        if os.path.isfile(st_file):
            from safetensors.torch import load_file

            state = load_file(st_file)
        elif os.path.isfile(bin_file):
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"the Dense module in {sub!r} has no weights (model.safetensors or pytorch_model.bin)")
        layers.append(_DenseLayer(spec, state, acts[spec.activation](), sub))
    return layers


class _DenseLayer:
    """``activation(linear(x))`` (+ residual), as sentence-transformers' ``Dense`` computes it."""

    def __init__(self, spec: DenseSpec, state: dict, activation, where: str) -> None:
        import torch

        self.spec = spec
        self.linear = torch.nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
        self.residual = None
        want = {"linear.weight": (spec.out_features, spec.in_features)}
        if spec.bias:
            want["linear.bias"] = (spec.out_features,)
        if spec.use_residual and spec.in_features != spec.out_features:
            want["residual.weight"] = (spec.out_features, spec.in_features)
            self.residual = torch.nn.Linear(spec.in_features, spec.out_features, bias=False)
        for key, shape in want.items():
            if key not in state or tuple(state[key].shape) != shape:
                got = tuple(state[key].shape) if key in state else "missing"
                raise ValueError(f"the Dense weights in {where!r}: {key} should have shape {shape}, got {got}")
        with torch.no_grad():
            self.linear.weight.copy_(state["linear.weight"])
            if spec.bias:
                self.linear.bias.copy_(state["linear.bias"])
            if self.residual is not None:
                self.residual.weight.copy_(state["residual.weight"])
        self.activation = activation

    def to(self, device):
        self.linear.to(device=device, dtype=self.linear.weight.dtype).eval().requires_grad_(False)
        if self.residual is not None:
            self.residual.to(device).eval().requires_grad_(False)
        return self

    def __call__(self, x):
        out = self.activation(self.linear(x))
        if self.spec.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out
