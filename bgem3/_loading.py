"""How the package gets an encoder from what a user passed: one place, :func:`load_encoder`.

* an object (a :class:`~bgem3.Encoder`, a :class:`~bgem3.remote.RemoteEncoder`, ``None`` for precomputed
  vectors, a user's own encoder) is used as given;
* a URL (``http://host:8000``) is a ``bgem3 serve`` server: a :class:`~bgem3.remote.RemoteEncoder`;
* a hub id or a folder is loaded: a new :class:`~bgem3.Encoder`, or with ``shared=True`` the process-wide
  encoder cache (:func:`shared_encoder`: one copy of the weights for every facade asking for the same model
  and options).

The stores (``HybridIndex(model)``, ``QdrantHybridStore(model)``), the embedding-channel reranker
(:class:`bgem3.rerank.HybridReranker`) and the framework adapters all call it; it sits below the stores and
the adapter glue and imports neither.

Example::

    >>> load_encoder(None, {}) is None
    True
    >>> load_encoder(None, {"device": "cpu"}, owner="HybridIndex")
    Traceback (most recent call last):
    TypeError: unexpected keyword arguments ['device']: encoder options are only used when the encoder is a model name or folder, but None was given; pass them to Encoder(...) instead, or pass a model name (HybridIndex('BAAI/bge-m3', device='cpu'))
"""

from __future__ import annotations

import inspect
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Hashable, Mapping, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder

# The encoder (torch) and the HTTP client are imported when a name, folder or URL is loaded, not when this
# module is: ``import bgem3.index`` (a store for precomputed vectors) stays free of torch.

__all__ = ["check_encoder_options", "clear_encoder_cache", "encoder_cache_info", "load_encoder",
           "shared_encoder"]

_ENCODER_OPTIONS: Optional[frozenset] = None


def _encoder_options() -> frozenset:
    """The keyword arguments :class:`~bgem3.Encoder` accepts besides the model name (read once)."""
    global _ENCODER_OPTIONS
    if _ENCODER_OPTIONS is None:
        from .encoder import Encoder

        _ENCODER_OPTIONS = frozenset(name for name in inspect.signature(Encoder.__init__).parameters
                                     if name not in ("self", "model_name_or_path"))
    return _ENCODER_OPTIONS


def __getattr__(name: str) -> Any:
    if name == "ENCODER_OPTIONS":  #: Keyword arguments :class:`~bgem3.Encoder` accepts besides the model name.
        return _encoder_options()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_CACHE: "weakref.WeakValueDictionary[Hashable, Encoder]" = weakref.WeakValueDictionary()
_LOCK = threading.RLock()
_LOADS = 0


def load_encoder(spec: Any, options: Optional[Mapping[str, Any]] = None, *, owner: str = "Encoder",
                 shared: bool = False, reranking: bool = False, require_encoder: bool = False) -> Any:
    """The encoder ``spec`` stands for (see the module docstring); ``options`` are :class:`~bgem3.Encoder`'s
    keyword arguments, used only when ``spec`` is a name, folder or URL (refused by name otherwise, ``owner``
    naming the class in the fix).

    ``shared``: a name or folder comes from the process-wide cache. ``reranking``: the encoder re-scores
    candidates with its own channels, so a cross-encoder reranker's name is refused with the class to use
    instead. ``require_encoder``: an object given must be a :class:`~bgem3.Encoder` (or a remote one).
    """
    options = dict(options or {})
    if isinstance(spec, (str, os.PathLike)):
        from . import remote
        from .encoder import Encoder

        if reranking:
            from .families import reranker_for_name

            if reranker_for_name(os.fspath(spec)) is not None:
                raise ValueError(
                    f"{os.fspath(spec)!r} is a cross-encoder reranker; this class re-scores with an embedding model's "
                    "dense/lexical/ColBERT channels. Use bgem3.Reranker (LangChain: langchain_bgem3.BGERerankerCrossEncoder "
                    "/ BGECrossEncoderReranker; LlamaIndex: llama_index_bgem3.BGERerank) for cross-encoders")
        if remote.is_url(spec):  # a `bgem3 serve` server: the model is there, not here
            return remote.remote_encoder_for(spec, **options)
        return _cached_encoder(spec, options) if shared else Encoder(spec, **options)
    if require_encoder and not _is_encoder(spec):
        raise TypeError(f"expected a bgem3.Encoder or a model name / local folder (str); got {type(spec).__name__}")
    if options:
        given = "None" if spec is None else f"an already-built {type(spec).__name__}"
        raise TypeError(
            f"unexpected keyword arguments {sorted(options)}: encoder options are only used when the encoder is a "
            f"model name or folder, but {given} was given; pass them to Encoder(...) instead, or pass a model name "
            f"({owner}('BAAI/bge-m3', device='cpu'))")
    return spec


def _is_encoder(obj: Any) -> bool:
    from .encoder import Encoder

    return isinstance(obj, Encoder)


def check_encoder_options(options: dict, where: str = "model_kwargs") -> dict:
    """Raise a ``ValueError`` naming any key that :class:`~bgem3.Encoder` does not accept."""
    if not isinstance(options, dict):
        raise TypeError(f"{where} must be a dict of Encoder options; got {type(options).__name__}")
    unknown = sorted(set(options) - _encoder_options())
    if unknown:
        raise ValueError(
            f"{where} has option(s) {unknown} that bgem3.Encoder does not take; "
            f"valid options are {sorted(_encoder_options())}"
        )
    return options


def shared_encoder(model_name_or_path: Union[str, os.PathLike], **options: Any) -> Encoder:
    """The loaded :class:`~bgem3.Encoder` for this model and options, loading it only once.

    ``options`` are :class:`~bgem3.Encoder`'s keyword arguments (``device``, ``dtype``,
    ``profile``, ``max_length``, ``local_files_only``, ...). Two calls that resolve to the same
    folder, device, dtype and options return the same object while anything still holds it.
    A URL gives a :class:`~bgem3.remote.RemoteEncoder` (not cached).

    Example::

        >>> enc = shared_encoder("BAAI/bge-m3", device="cpu")     # doctest: +SKIP
        >>> enc is shared_encoder("BAAI/bge-m3", device="cpu")    # doctest: +SKIP
        True
    """
    check_encoder_options(options, "encoder options")
    if not isinstance(model_name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"model_name must be a hub id like 'BAAI/bge-m3' or a local folder path; got {type(model_name_or_path).__name__}"
        )
    return load_encoder(model_name_or_path, options, shared=True)


def _freeze(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    hash(value)  # raises TypeError for unhashable values -> not cached
    return value


def _cache_key(model_name_or_path: Union[str, os.PathLike], options: dict) -> Optional[Hashable]:
    from .encoder import resolve_device, resolve_dtype

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


def _cached_encoder(model_name_or_path: Union[str, os.PathLike], options: dict) -> Encoder:
    from .encoder import Encoder

    global _LOADS
    key = _cache_key(model_name_or_path, options)
    with _LOCK:  # one lock: two threads asking for the same model load it once
        if key is not None:
            hit = _CACHE.get(key)
            if hit is not None:
                return hit
        enc = Encoder(model_name_or_path, **options)
        enc._bgem3_load_options = dict(options)  # how to load it again (pickle, see Encoder.__reduce__)
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
