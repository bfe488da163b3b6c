"""Which model family a name belongs to, and which families bgem3 cannot run.

:data:`FAMILIES` maps a model's hub name (the part after the organisation, lower-cased) to the
profile that reproduces its reference (FlagEmbedding's ``AUTO_EMBEDDER_MAPPING`` for the BGE,
E5, GTE, SFR, Linq, BCE and Qwen3-Embedding names; the model cards for BGE v1, LLM-Embedder and
the plain sentence-transformers models). :func:`family_for_name` looks a name up (hub id, local
path, HF-cache folder name); :func:`check_runnable` refuses, with a message naming what is
missing, the folders bgem3 cannot compute as their reference does (T5 / Instructor encoders,
ONNX- or OpenVINO-only exports).

Example::

    >>> from bgem3.families import family_for_name
    >>> f = family_for_name("intfloat/e5-mistral-7b-instruct")
    >>> f.profile, f.reference
    ('llm-instruct', 'FlagLLMModel')
    >>> family_for_name("someone/unknown") is None
    True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Family:
    """One known model name.

    Attributes:
        name: the hub name without organisation, as published (``"bge-m3"``).
        org: the hub organisation (``"BAAI"``).
        profile: the :mod:`bgem3.profiles` profile that reproduces the reference.
        reference: the class the family's numbers were checked against
            (``FlagModel``, ``BGEM3FlagModel``, ``FlagLLMModel``, ``FlagICLModel``,
            ``SentenceTransformer``).
        trust_remote_code: the checkpoint ships its own modelling code (load it with
            ``trust_remote_code=True``).
    """

    name: str
    org: str
    profile: str
    reference: str
    trust_remote_code: bool = False

    @property
    def hub_id(self) -> str:
        return f"{self.org}/{self.name}"


def _f(org: str, profile: str, reference: str, *names: str, remote: bool = False) -> list[Family]:
    return [Family(n, org, profile, reference, remote) for n in names]


_ALL: list[Family] = [
    # --- BGE (FlagEmbedding BGE_MAPPING)
    *_f("BAAI", "llm-instruct", "FlagLLMModel", "bge-reasoner-embed-qwen3-8b-0923"),
    *_f("BAAI", "bge-llm", "FlagLLMModel", "bge-code-v1", remote=True),
    *_f("BAAI", "bge-en-icl", "FlagICLModel", "bge-en-icl"),
    *_f("BAAI", "bge-llm", "FlagLLMModel", "bge-multilingual-gemma2"),
    *_f("BAAI", "m3", "BGEM3FlagModel", "bge-m3"),
    *_f("BAAI", "bge", "FlagModel", "bge-large-en-v1.5", "bge-base-en-v1.5", "bge-small-en-v1.5",
        "bge-large-en", "bge-base-en", "bge-small-en"),
    *_f("BAAI", "bge-zh", "FlagModel", "bge-large-zh-v1.5", "bge-base-zh-v1.5", "bge-small-zh-v1.5",
        "bge-large-zh", "bge-base-zh", "bge-small-zh"),
    *_f("BAAI", "llm-embedder", "FlagModel", "llm-embedder"),
    # --- Qwen3-Embedding
    *_f("Qwen", "qwen3-embedding", "FlagLLMModel", "Qwen3-Embedding-0.6B", "Qwen3-Embedding-4B", "Qwen3-Embedding-8B"),
    # --- E5
    *_f("intfloat", "llm-instruct", "FlagLLMModel", "e5-mistral-7b-instruct"),
    *_f("intfloat", "e5", "FlagModel", "e5-large-v2", "e5-base-v2", "e5-small-v2", "multilingual-e5-large",
        "multilingual-e5-base", "multilingual-e5-small", "e5-large", "e5-base", "e5-small"),
    *_f("intfloat", "e5-instruct", "FlagModel", "multilingual-e5-large-instruct"),
    # --- GTE
    *_f("Alibaba-NLP", "llm-instruct", "FlagLLMModel", "gte-Qwen2-7B-instruct", "gte-Qwen2-1.5B-instruct",
        "gte-Qwen1.5-7B-instruct", remote=True),
    *_f("Alibaba-NLP", "cls", "FlagModel", "gte-multilingual-base", "gte-large-en-v1.5", "gte-base-en-v1.5",
        remote=True),
    *_f("thenlper", "mean", "FlagModel", "gte-large", "gte-base", "gte-small"),
    *_f("thenlper", "cls", "FlagModel", "gte-large-zh", "gte-base-zh", "gte-small-zh"),
    # --- SFR, Linq, BCE
    *_f("Salesforce", "llm-instruct", "FlagLLMModel", "SFR-Embedding-2_R", "SFR-Embedding-Mistral"),
    *_f("Linq-AI-Research", "llm-instruct", "FlagLLMModel", "Linq-Embed-Mistral"),
    *_f("maidalun1020", "cls", "FlagModel", "bce-embedding-base_v1"),
    # --- plain sentence-transformers models: pooling from the folder, no templates
    *_f("sentence-transformers", "st", "SentenceTransformer", "all-MiniLM-L6-v2", "all-MiniLM-L12-v2",
        "all-mpnet-base-v2", "paraphrase-multilingual-MiniLM-L12-v2", "paraphrase-multilingual-mpnet-base-v2",
        "multi-qa-MiniLM-L6-cos-v1", "multi-qa-mpnet-base-dot-v1"),
]

#: lower-cased hub name (no organisation) -> :class:`Family`.
FAMILIES: dict[str, Family] = {f.name.lower(): f for f in _ALL}

#: Reranker names (lower-cased hub name without organisation) -> (kind, FlagEmbedding class, remote code).
#: ``kind``: "encoder" (a ``*ForSequenceClassification`` cross-encoder, FlagReranker), "llm" (a causal LM
#: scored by its "Yes" logit, FlagLLMReranker), "layerwise" / "lightweight" (remote-code LLM rerankers).
#: FlagEmbedding 1.4.2's ``RERANKER_CLASS_MAPPING``; :class:`bgem3.Reranker` reads it.
RERANKERS: dict[str, tuple[str, str, bool]] = {
    "bge-reranker-base": ("encoder", "FlagReranker", False),
    "bge-reranker-large": ("encoder", "FlagReranker", False),
    "bge-reranker-v2-m3": ("encoder", "FlagReranker", False),
    "bce-reranker-base_v1": ("encoder", "FlagReranker", False),
    "jina-reranker-v2-base-multilingual": ("encoder", "FlagReranker", True),
    "jina-reranker-v1-turbo-en": ("encoder", "FlagReranker", True),
    "gte-multilingual-reranker-base": ("encoder", "FlagReranker", True),
    "bge-reranker-v2-gemma": ("llm", "FlagLLMReranker", False),
    "bge-reranker-v2-minicpm-layerwise": ("layerwise", "LayerWiseFlagLLMReranker", True),
    "bge-reranker-v2.5-gemma2-lightweight": ("lightweight", "LightWeightFlagLLMReranker", True),
}


def reranker_for_name(name: Optional[str]) -> Optional[tuple[str, str, bool]]:
    """``(kind, reference class, remote code)`` of a known reranker name (hub id, folder, HF-cache path).

    >>> reranker_for_name("BAAI/bge-reranker-v2-m3")
    ('encoder', 'FlagReranker', False)
    >>> reranker_for_name("BAAI/bge-m3") is None
    True
    """
    if not name:
        return None
    for key in _candidate_keys(os.fspath(name)):
        if key in RERANKERS:
            return RERANKERS[key]
    return None


def folder_architectures(folder: str) -> list[str]:
    """The ``architectures`` list of ``folder``'s config.json (``[]`` when absent or unreadable)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            archs = json.load(fh).get("architectures") or []
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
    return [str(a) for a in archs] if isinstance(archs, list) else []


def is_cross_encoder_folder(folder: str) -> bool:
    """Whether ``folder``'s config declares only ``*ForSequenceClassification`` architectures."""
    archs = folder_architectures(folder)
    return bool(archs) and all(a.endswith("ForSequenceClassification") for a in archs)


#: Names bgem3 recognises and refuses, with the reason (matched as substrings of the lower-cased name).
UNSUPPORTED_NAMES: dict[str, str] = {
    "instructor": "Instructor models (hkunlp/instructor-*) are T5 encoders with instruction-excluding "
                  "pooling, which bgem3 does not run; use sentence_transformers.SentenceTransformer for them",
    "sentence-t5": "sentence-T5 models are T5 encoders, which bgem3 does not run; use "
                   "sentence_transformers.SentenceTransformer for them",
    "gtr-t5": "GTR models are T5 encoders, which bgem3 does not run; use sentence_transformers.SentenceTransformer",
}

#: Architectures (config.json ``model_type``) bgem3 refuses, with the reason.
UNSUPPORTED_MODEL_TYPES: dict[str, str] = {
    t: "T5-family encoders (Instructor, sentence-T5, GTR) need an encoder-decoder model class that bgem3 "
       "does not load; use sentence_transformers.SentenceTransformer for this model"
    for t in ("t5", "mt5", "umt5", "longt5")
}


def _candidate_keys(name: str) -> list[str]:
    key = name.strip().rstrip("/").replace("\\", "/").lower()
    for part in reversed(key.split("/")):
        if part.startswith("models--"):  # HF cache layout: models--org--name/snapshots/<sha>
            return [part[len("models--"):].split("--", 1)[-1]]
    parts = [p for p in key.split("/") if p]
    return parts[-1:] if parts else []


def family_for_name(name: Optional[str]) -> Optional[Family]:
    """The family of a hub id, a local folder named like one, or an HF-cache snapshot path."""
    if not name:
        return None
    for key in _candidate_keys(os.fspath(name)):
        if key in FAMILIES:
            return FAMILIES[key]
    return None


def unsupported_reason(name: Optional[str]) -> Optional[str]:
    """Why a name belongs to a family bgem3 refuses, else ``None``."""
    if not name:
        return None
    keys = _candidate_keys(os.fspath(name))
    for key in keys:
        for pattern, why in UNSUPPORTED_NAMES.items():
            if pattern in key:
                return why
    return None


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_EXPORT_HINTS = {".onnx": "ONNX", ".xml": "OpenVINO", ".gguf": "GGUF"}


def check_runnable(folder: str, name_hint: Optional[str] = None, backend: str = "torch") -> None:
    """Raise ``ValueError`` naming what is missing when ``folder`` holds a model bgem3 cannot run.

    Refused: T5-family architectures (Instructor, sentence-T5, GTR) and, for ``backend="torch"``,
    folders with only ONNX / OpenVINO / GGUF exports and no PyTorch weights (``backend="onnx"`` /
    ``"openvino"`` run such a folder's graph).
    """
    for hint in (name_hint, folder):
        why = unsupported_reason(hint)
        if why:
            raise ValueError(f"{hint!r}: {why}")
    for hint in (name_hint, folder):
        if reranker_for_name(hint) is not None:
            raise ValueError(f"{hint!r} is a reranker (it scores query-passage pairs, it does not embed texts); "
                             "load it with bgem3.Reranker(...), not as an embedding model")
    if is_cross_encoder_folder(folder):
        raise ValueError(f"{folder!r} holds a cross-encoder ({', '.join(folder_architectures(folder))}): it scores "
                         "query-passage pairs and has no embeddings; load it with bgem3.Reranker(...), not as an "
                         "embedding model")
    cfg_path = os.path.join(folder, "config.json")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as fh:
                mtype = str(json.load(fh).get("model_type", ""))
        except (OSError, json.JSONDecodeError, AttributeError):
            mtype = ""
        if mtype in UNSUPPORTED_MODEL_TYPES:
            raise ValueError(f"{folder!r} holds a {mtype!r} model: {UNSUPPORTED_MODEL_TYPES[mtype]}")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    has_weights = any(n.endswith(_WEIGHT_SUFFIXES) and not n.endswith(("_linear.pt",)) for n in names)
    if has_weights or backend != "torch":
        return
    exports = set()
    for root in (folder, os.path.join(folder, "onnx"), os.path.join(folder, "openvino")):
        if os.path.isdir(root):
            for n in os.listdir(root):
                for suffix, kind in _EXPORT_HINTS.items():
                    if n.endswith(suffix):
                        exports.add(kind)
    if exports:
        raise ValueError(
            f"{folder!r} holds only {'/'.join(sorted(exports))} exports and no PyTorch weights "
            "(model.safetensors or pytorch_model.bin). backend='torch' runs PyTorch checkpoints: download the "
            "model's safetensors weights (the original hub repository has them) and pass that folder, or run "
            "the export with backend='onnx' / 'openvino'."
        )
