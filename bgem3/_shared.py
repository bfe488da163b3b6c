"""Framework-free plumbing shared by the LangChain and LlamaIndex adapters.

Two things live here because both adapter packages need them (adapters hold no logic of
their own):

* :func:`shared_encoder` -- a process-wide cache of loaded :class:`~bgem3.Encoder` objects,
  keyed by what changes the weights in memory (model folder, device, dtype, loading options).
  A dense facade and a sparse facade built for the same model get the *same* ``Encoder``,
  so BGE-M3's weights are in memory once. Entries are weak: when no facade holds an
  encoder any more, its memory is freed.
* :class:`TextEncoder` -- a view of one ``Encoder`` with its own query / document prefixes
  (so two facades with different instructions still share one copy of the weights), whose
  methods return exactly what the frameworks want: dense rows, sparse dicts, or Qdrant's
  ``(indices, values)`` lists.

Example::

    >>> import tempfile
    >>> from bgem3.testing import make_m3_checkpoint
    >>> from bgem3._shared import shared_encoder, TextEncoder
    >>> path = make_m3_checkpoint(tempfile.mkdtemp())
    >>> enc = shared_encoder(path, device="cpu")
    >>> enc is shared_encoder(path, device="cpu")        # loaded once
    True
    >>> te = TextEncoder(enc, query_instruction="query: ")
    >>> te.dense_queries(["hello"]).shape
    (1, 32)
    >>> idx, val = te.sparse_lists_documents(["hello world"])
    >>> len(idx[0]) == len(val[0]) > 0
    True
"""

from __future__ import annotations

import inspect
import os
import threading
import weakref
from dataclasses import replace
from typing import Any, Hashable, Optional, Sequence, Union

import numpy as np

from .encoder import Encoder, resolve_device, resolve_dtype, resolve_model_path
from .encoder import _check_texts as _texts
from .profiles import Profile, _escape, detect_profile, get_profile

__all__ = [
    "ENCODER_OPTIONS",
    "TextEncoder",
    "check_encoder_options",
    "clear_encoder_cache",
    "dtype_name",
    "e5_encoder_profile",
    "e5_templates",
    "encoder_cache_info",
    "missing_framework",
    "shared_encoder",
    "sparse_to_lists",
]

#: Keyword arguments :class:`~bgem3.Encoder` accepts besides the model name.
ENCODER_OPTIONS: frozenset = frozenset(
    name for name in inspect.signature(Encoder.__init__).parameters if name not in ("self", "model_name_or_path")
)

_CACHE: "weakref.WeakValueDictionary[Hashable, Encoder]" = weakref.WeakValueDictionary()
_LOCK = threading.RLock()
_LOADS = 0


def missing_framework(adapter: str, requirement: str, framework: str, extra: str) -> ImportError:
    """The ``ImportError`` an adapter package raises when its framework is not installed.

    >>> str(missing_framework("langchain_bgem3", "langchain-core", "LangChain", "langchain"))
    "langchain_bgem3 needs langchain-core, which is not installed. Install the LangChain extra: pip install 'bgem3[langchain]'"
    """
    return ImportError(
        f"{adapter} needs {requirement}, which is not installed. "
        f"Install the {framework} extra: pip install 'bgem3[{extra}]'"
    )


def check_encoder_options(options: dict, where: str = "model_kwargs") -> dict:
    """Raise a ``ValueError`` naming any key that :class:`~bgem3.Encoder` does not accept."""
    if not isinstance(options, dict):
        raise TypeError(f"{where} must be a dict of Encoder options; got {type(options).__name__}")
    unknown = sorted(set(options) - ENCODER_OPTIONS)
    if unknown:
        raise ValueError(
            f"{where} has option(s) {unknown} that bgem3.Encoder does not take; "
            f"valid options are {sorted(ENCODER_OPTIONS)}"
        )
    return options


def dtype_name(dtype: Any) -> Optional[str]:
    """``torch.float32`` / ``"float32"`` -> ``"fp32"`` (``None`` stays ``None``); for configs that serialise."""
    if dtype is None:
        return None
    text = str(dtype).replace("torch.", "").lower()
    return {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
            "qint8": "int8"}.get(text, text)


def _freeze(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    hash(value)  # raises TypeError for unhashable values -> not cached
    return value


def _cache_key(model_name_or_path: Union[str, os.PathLike], options: dict) -> Optional[Hashable]:
    name = os.fspath(model_name_or_path)
    expanded = os.path.expanduser(name)
    where = os.path.realpath(expanded) if os.path.isdir(expanded) else name
    opts = dict(options)
    device = resolve_device(opts.pop("device", None))
    dtype = resolve_dtype(opts.pop("dtype", None), device)
    try:
        rest = _freeze(opts)
    except TypeError:
        return None
    return (where, str(device), str(dtype), rest)


def shared_encoder(model_name_or_path: Union[str, os.PathLike], **options: Any) -> Encoder:
    """The loaded :class:`~bgem3.Encoder` for this model and options, loading it only once.

    ``options`` are :class:`~bgem3.Encoder`'s keyword arguments (``device``, ``dtype``,
    ``profile``, ``max_length``, ``local_files_only``, ...). Two calls that resolve to the same
    folder, device, dtype and options return the same object while anything still holds it.

    Example::

        >>> enc = shared_encoder("BAAI/bge-m3", device="cpu")     # doctest: +SKIP
        >>> enc is shared_encoder("BAAI/bge-m3", device="cpu")    # doctest: +SKIP
        True
    """
    global _LOADS
    check_encoder_options(options, "encoder options")
    if not isinstance(model_name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"model_name must be a hub id like 'BAAI/bge-m3' or a local folder path; got {type(model_name_or_path).__name__}"
        )
    key = _cache_key(model_name_or_path, options)
    with _LOCK:  # one lock: two threads asking for the same model load it once
        if key is not None:
            hit = _CACHE.get(key)
            if hit is not None:
                return hit
        enc = Encoder(model_name_or_path, **options)
        _LOADS += 1
        if key is not None:
            _CACHE[key] = enc
        return enc


def encoder_cache_info() -> dict:
    """``{"loads": encoders loaded through shared_encoder so far, "live": how many are held now}``."""
    return {"loads": _LOADS, "live": len(_CACHE)}


def clear_encoder_cache() -> None:
    """Forget cached encoders (those still held by a facade stay alive with it)."""
    with _LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------- E5 family

def e5_templates(profile: Profile, task: Optional[str] = None) -> Profile:
    """The profile an E5 facade applies: E5's own if the model is an E5, else E5's prefixes on top.

    ``task`` selects the e5-instruct format (``Instruct: {task}\\nQuery: {q}``, documents as
    they are). A model known as a plain (non-instruct) E5 refuses a ``task``.
    """
    if profile.name == "e5-instruct":
        return profile if task is None else replace(profile, task=task)
    if profile.name == "e5":
        if task is not None:
            raise ValueError(
                f"task={task!r} is for e5-instruct models (e.g. intfloat/multilingual-e5-large-instruct); this "
                "model is a plain E5, which takes 'query: ' / 'passage: ' prefixes and no task. "
                "Drop task=, or set query_instruction= to change the query prefix."
            )
        return profile
    if profile.name in ("m3", "bge", "bge-zh"):
        raise ValueError(
            f"this model uses the {profile.name!r} profile, not E5: use BGEM3Embeddings / BGEM3Embedding "
            "for BGE-M3, or pass an E5 model (e.g. 'intfloat/multilingual-e5-large')"
        )
    # a generic mean/CLS-pooled folder: keep its pooling, add the E5 templates
    e5 = get_profile("e5-instruct" if task is not None else "e5")
    return replace(profile, name=e5.name, query_template=e5.query_template,
                   passage_template=e5.passage_template, task=task if task is not None else e5.task)


def e5_encoder_profile(model_name_or_path: Union[str, os.PathLike], *, task: Optional[str] = None,
                       cache_dir: Optional[str] = None, revision: Optional[str] = None,
                       local_files_only: Optional[bool] = None) -> Optional[str]:
    """``None`` when the model folder tells its own pooling, else ``"e5"`` (``"e5-instruct"``
    with a ``task``), both mean pooling.

    An E5 facade passes the result as ``profile=`` so a bare E5 folder (no sentence-transformers
    config, unknown name) still loads with E5's mean pooling.
    """
    path = resolve_model_path(model_name_or_path, cache_dir=cache_dir, revision=revision,
                              local_files_only=local_files_only)
    try:
        detect_profile(path, name_hint=os.fspath(model_name_or_path))
    except ValueError:
        return "e5-instruct" if task is not None else "e5"
    return None


# --------------------------------------------------------------------------- the view

def sparse_to_lists(weights: dict) -> tuple[list[int], list[float]]:
    """``{token_id: weight}`` -> ``(sorted ids, their weights)`` as plain Python lists."""
    if not weights:
        return [], []
    ids = sorted(weights)
    return [int(i) for i in ids], [float(weights[i]) for i in ids]


class TextEncoder:
    """One :class:`~bgem3.Encoder` seen through a facade's own prefixes and call options.

    Args:
        encoder: the loaded encoder (share it: :func:`shared_encoder`).
        query_instruction: text put before every query instead of the profile's template
            (``""`` for none, ``None`` to keep the profile's, e.g. E5's ``"query: "``).
        document_instruction: the same for documents (E5's default is ``"passage: "``).
        task: the e5-instruct task (``Instruct: {task}\\nQuery: ...``).
        profile: the templates to apply (default: the encoder's profile).
        batch_size / max_length / show_progress: defaults for each encode call.

    Example::

        >>> te = TextEncoder(shared_encoder("intfloat/multilingual-e5-large"))   # doctest: +SKIP
        >>> te.format_queries(["how are you"])                                   # doctest: +SKIP
        ['query: how are you']
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        query_instruction: Optional[str] = None,
        document_instruction: Optional[str] = None,
        task: Optional[str] = None,
        profile: Optional[Profile] = None,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        show_progress: Optional[bool] = None,
    ) -> None:
        if not isinstance(encoder, Encoder):
            raise TypeError(f"encoder must be a bgem3.Encoder; got {type(encoder).__name__}")
        self.encoder = encoder
        prof = profile or encoder.profile
        for name, value in (("query_instruction", query_instruction), ("document_instruction", document_instruction)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string (or None for the model's default); got {type(value).__name__}")
        prof = prof.with_templates(
            ... if query_instruction is None else (_escape(query_instruction) + "{text}" if query_instruction else None),
            ... if document_instruction is None else (_escape(document_instruction) + "{text}" if document_instruction else None),
        )
        self.profile = prof
        self.task = task
        self.batch_size = batch_size
        self.max_length = max_length
        self.show_progress = show_progress

    # ---------------------------------------------------------------- formatting
    def format_queries(self, texts: Sequence[str]) -> list[str]:
        """The queries as the model sees them (with the query template)."""
        return [self.profile.format_query(t, self.task) for t in _texts(texts)]

    def format_documents(self, texts: Sequence[str]) -> list[str]:
        """The documents as the model sees them (with the passage template)."""
        return [self.profile.format_passage(t) for t in _texts(texts)]

    def _encode(self, texts: list[str], *, dense: bool, sparse: bool, batch_size: Optional[int],
                show_progress: Optional[bool]):
        return self.encoder.encode(
            texts, dense=dense, sparse=sparse,
            batch_size=batch_size if batch_size is not None else self.batch_size,
            max_length=self.max_length,
            show_progress=show_progress if show_progress is not None else self.show_progress,
        )

    # ---------------------------------------------------------------- dense
    def dense_queries(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                      show_progress: Optional[bool] = None) -> np.ndarray:
        """``float32 [N, H]`` L2-normalised query vectors."""
        return self._encode(self.format_queries(texts), dense=True, sparse=False, batch_size=batch_size,
                            show_progress=show_progress).dense

    def dense_documents(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                        show_progress: Optional[bool] = None) -> np.ndarray:
        """``float32 [N, H]`` L2-normalised document vectors."""
        return self._encode(self.format_documents(texts), dense=True, sparse=False, batch_size=batch_size,
                            show_progress=show_progress).dense

    # ---------------------------------------------------------------- sparse
    def sparse_queries(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                       show_progress: Optional[bool] = None) -> list[dict[int, float]]:
        """``{token_id: weight}`` per query (BGE-M3's lexical weights)."""
        self.check_sparse()
        return self._encode(self.format_queries(texts), dense=False, sparse=True, batch_size=batch_size,
                            show_progress=show_progress).sparse

    def sparse_documents(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                         show_progress: Optional[bool] = None) -> list[dict[int, float]]:
        """``{token_id: weight}`` per document."""
        self.check_sparse()
        return self._encode(self.format_documents(texts), dense=False, sparse=True, batch_size=batch_size,
                            show_progress=show_progress).sparse

    def sparse_lists_queries(self, texts: Sequence[str], **kwargs: Any) -> tuple[list[list[int]], list[list[float]]]:
        """Qdrant's batch format: ``([ids per query], [weights per query])``."""
        return _split(self.sparse_queries(texts, **kwargs))

    def sparse_lists_documents(self, texts: Sequence[str], **kwargs: Any) -> tuple[list[list[int]], list[list[float]]]:
        """Qdrant's batch format: ``([ids per document], [weights per document])``."""
        return _split(self.sparse_documents(texts, **kwargs))

    def check_sparse(self) -> None:
        """Raise a ``ValueError`` naming the folder if the model has no sparse head."""
        if not self.encoder.has_heads:
            raise ValueError(
                f"sparse (lexical) embeddings need BGE-M3's sparse head, but the model at {self.encoder.path!r} "
                "has no sparse_linear.pt / colbert_linear.pt. Use a BGE-M3 checkpoint such as 'BAAI/bge-m3'."
            )


def _split(rows: list[dict]) -> tuple[list[list[int]], list[list[float]]]:
    pairs = [sparse_to_lists(r) for r in rows]
    return [p[0] for p in pairs], [p[1] for p in pairs]
