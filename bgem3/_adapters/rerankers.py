"""The adapters' reranker glue: the embedding-channel reranker's encoder, a cross-encoder reranker from what the
user passed (an object, a name, a URL), and the retrievers' rerank step over a store's hits."""

from __future__ import annotations

import inspect
import os
from typing import Any, Mapping, Optional, Sequence

from .._loading import load_encoder
from ..encoder import Encoder

def reranker_encoder(encoder: Any, model_name: str, model_kwargs: Optional[Mapping[str, Any]],
                     *, type_error: type[Exception] = TypeError) -> Encoder:
    """The encoder an adapter's reranker uses: ``encoder`` if given (it must be a
    :class:`bgem3.Encoder`, else ``type_error``; ``model_kwargs`` must then be empty, else
    ``ValueError``), or one loaded from ``model_name`` with ``model_kwargs``.

    ``type_error`` lets a pydantic ``model_validator`` raise ``ValueError`` (which pydantic turns
    into a ``ValidationError``) while a plain ``__init__`` raises ``TypeError``.
    """
    if encoder is None:
        return load_encoder(model_name, model_kwargs, owner="HybridReranker", reranking=True, require_encoder=True)
    if not isinstance(encoder, Encoder):
        raise type_error(f"encoder must be a bgem3.Encoder (or leave it out and pass model_name=...); "
                         f"got {type(encoder).__name__}")
    if model_kwargs:
        raise ValueError("model_kwargs are only used when the reranker loads the model by model_name; "
                         "an Encoder was given: configure it with Encoder(...) instead")
    return encoder


def reranker_aliases(data: Any, owner: str, fields: Any, *, type_error: type[Exception] = TypeError) -> Any:
    """Map the keywords a user of another framework reranker writes onto ours, or refuse them.

    ``model=`` (``CrossEncoderReranker`` / ``SentenceTransformerRerank``): a model name becomes
    ``model_name``, a :class:`bgem3.Encoder` becomes ``encoder``; ``top_k=`` is refused naming
    ``top_n=``; any other unknown keyword raises naming it (with the closest valid name).
    """
    from .arguments import unknown_options_error

    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "model" in data:
        model = data.pop("model")
        if isinstance(model, Encoder):
            if data.get("encoder") is not None and data["encoder"] is not model:
                raise ValueError("model= and encoder= are two different encoders; pass one")
            data["encoder"] = model
        elif isinstance(model, str):
            if data.get("model_name") not in (None, model):
                raise ValueError(f"model={model!r} and model_name={data['model_name']!r} disagree; set one")
            data["model_name"] = model
        else:
            cross = " A cross-encoder reranker goes to" if callable(getattr(model, "compute_score", None)) else " For a " \
                "cross-encoder use"
            raise type_error(f"{owner}: model= must be a model name or a bgem3.Encoder; got {type(model).__name__} "
                             f"({owner} re-scores with an embedding model's three BGE-M3 channels.{cross} "
                             "langchain_bgem3.BGECrossEncoderReranker / BGERerankerCrossEncoder or "
                             "llama_index_bgem3.BGERerank)")
    unknown = [k for k in data if k not in fields]
    if unknown:
        hints = {"top_k": "use top_n= for how many to keep", "k": "use top_n= for how many to keep",
                 "device": "use model_kwargs={'device': ...}", "use_fp16": "use model_kwargs={'dtype': 'fp16'}",
                 "normalize": "bgem3 reranker scores are raw fused scores; sort order is what top_n uses"}
        raise unknown_options_error(owner, unknown, fields, hints, exc=type_error)
    return data


#: Keyword arguments :class:`bgem3.Reranker` accepts besides the model name.
def reranker_options() -> frozenset:
    from ..crossencoder import Reranker

    return frozenset(n for n in inspect.signature(Reranker.__init__).parameters
                     if n not in ("self", "model_name_or_path", "kwargs"))


def load_reranker(owner: str, model: Any, model_kwargs: Optional[Mapping[str, Any]] = None) -> Any:
    """The reranker an adapter uses: ``model`` as is when it already is one (a :class:`bgem3.Reranker`, a
    ``RemoteReranker``, any object with ``compute_score`` and ``rerank``; ``model_kwargs`` must then be empty),
    else loaded from a name / folder / ``bgem3 serve`` URL with ``model_kwargs`` (each checked by name)."""
    from ..crossencoder import is_reranker, resolve_reranker

    opts = dict(model_kwargs or {})
    if is_reranker(model):
        if opts:
            raise ValueError(f"{owner}: model_kwargs {sorted(opts)} are only used when the reranker is loaded by name; "
                             "a reranker was given: configure it with bgem3.Reranker(...) instead")
        return model
    if isinstance(model, Encoder):
        raise TypeError(f"{owner}: a bgem3.Encoder is an embedding model, not a cross-encoder; pass a reranker "
                        "(e.g. 'BAAI/bge-reranker-v2-m3'), or use BGEM3Reranker to re-score with the encoder's channels")
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"{owner}: model must be a reranker model name / folder, a bgem3 serve URL or a bgem3.Reranker; "
                        f"got {type(model).__name__}")
    valid = reranker_options()
    unknown = [k for k in opts if k not in valid]
    if unknown:
        from .arguments import unknown_options_error

        raise unknown_options_error(f"{owner} model_kwargs", unknown, valid,
                                    {"use_fp16": "use dtype='fp16' (GPU)", "devices": "use device='cuda:0'",
                                     "top_k": "top_n is the reranker's own field"}, exc=ValueError)
    return resolve_reranker(model, **opts)


def reranker_name(reranker: Any) -> str:
    """The model name a reranker reports (for configs and reprs)."""
    return str(getattr(reranker, "model_name", None) or type(reranker).__name__)


def rerank_hits(reranker: Any, query: str, hits: Sequence[Any], top_n: Optional[int],
                text: Any = None) -> list[tuple[Any, float]]:
    """``(hit, rerank score)`` best first (ties keep the retrieval order), at most ``top_n``: the store's
    candidates scored by a cross-encoder. ``text(hit)`` gives the text scored (default ``hit.text``)."""
    hits = list(hits)
    if not hits:
        return []
    texts = [text(h) if text is not None else h.text for h in hits]
    ranked = reranker.rerank(query, texts, top_n=top_n)
    return [(hits[r.index], float(r.score)) for r in ranked]
