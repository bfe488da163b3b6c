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

import difflib
import logging
import os
import threading
from dataclasses import replace
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .backends import BACKEND_OPTIONS, check_backend, check_backend_options
from .encoder import _DTYPES, Encoder, dtype_name, resolve_model_path
from ._checks import positive_int
from .stores.base import check_str_list
from .profiles import Profile, _escape, detect_profile, get_profile
from ._loading import ENCODER_OPTIONS, check_encoder_options, clear_encoder_cache, encoder_cache_info, shared_encoder
from .remote import is_url

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODER_OPTIONS",
    "FRAMEWORK_BGE_QUERY_INSTRUCTION",
    "TextEncoder",
    "check_encoder_options",
    "check_list_arg",
    "encoder_view",
    "framework_query_instruction",
    "prefetch_with_token",
    "unknown_options_error",
    "clear_encoder_cache",
    "dtype_name",
    "e5_encoder_profile",
    "e5_templates",
    "encoder_cache_info",
    "missing_framework",
    "shared_encoder",
    "sparse_to_lists",
]

def missing_framework(adapter: str, requirement: str, framework: str, extra: str) -> ImportError:
    """The ``ImportError`` an adapter package raises when its framework is not installed.

    >>> str(missing_framework("langchain_bgem3", "langchain-core", "LangChain", "langchain"))
    "langchain_bgem3 needs langchain-core, which is not installed. Install the LangChain extra: pip install 'bgem3[langchain]'"
    """
    return ImportError(
        f"{adapter} needs {requirement}, which is not installed. "
        f"Install the {framework} extra: pip install 'bgem3[{extra}]'"
    )


# --------------------------------------------------------------------------- argument checks

def check_list_arg(values: Any, name: str) -> list[str]:
    """The package-wide policy for a lone string where a list belongs: a ``TypeError`` naming the
    argument and the fix (never split into characters, never silently wrapped).

    >>> check_list_arg(["a", "b"], "ids")
    ['a', 'b']
    >>> check_list_arg("ab", "ids")
    Traceback (most recent call last):
    TypeError: ids must be a list of strings, not a single string; wrap it: ['ab']
    """
    return check_str_list(values, name)


def unknown_options_error(owner: str, unknown: Iterable[str], valid: Iterable[str],
                          hints: Optional[Mapping[str, str]] = None, exc: type = TypeError) -> Exception:
    """An error naming each unknown keyword, with the alternative: a hint from ``hints`` (an
    option of the class being replaced) or the closest valid name (a typo).

    >>> str(unknown_options_error("BGEM3Embedding", ["model_nme"], ["model_name", "device"]))
    "BGEM3Embedding got unknown keyword argument 'model_nme' (did you mean 'model_name'?). Valid options: ['device', 'model_name']"
    """
    valid = sorted(set(valid))
    hints = dict(hints or {})
    parts = []
    for name in sorted(unknown):
        if name in hints:
            parts.append(f"{name!r} ({hints[name]})")
            continue
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.75)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    noun = "argument" if len(parts) == 1 else "arguments"
    return exc(f"{owner} got unknown keyword {noun} {', '.join(parts)}. Valid options: {valid}")


#: The BGE (English, v1.5 and older) query instruction both frameworks' own classes use
#: (``langchain_community``'s ``HuggingFaceBgeEmbeddings`` and LlamaIndex's
#: ``HuggingFaceEmbedding`` for ``BAAI/bge-*-en*``). BGE's model card and bgem3's ``"bge"``
#: profile say "this sentence"; the adapters use the frameworks' wording by default so that
#: switching classes keeps the same query vectors.
FRAMEWORK_BGE_QUERY_INSTRUCTION = "Represent this question for searching relevant passages: "


def framework_query_instruction(profile: Profile, query_instruction: Optional[str]) -> Optional[str]:
    """``query_instruction`` if set, else the frameworks' BGE instruction for an English BGE
    profile, else ``None`` (keep the profile's template)."""
    if query_instruction is not None:
        return query_instruction
    if profile.name == "bge":
        return FRAMEWORK_BGE_QUERY_INSTRUCTION
    return None


def prefetch_with_token(model_name: str, token: Optional[Union[str, bool]], options: dict) -> dict:
    """Download a hub model with a Hugging Face ``token`` (gated / private repos), then return
    the loading ``options`` with ``local_files_only=True`` so the encoder loads that copy.

    A local folder, or ``token=None``, needs nothing: ``options`` come back unchanged.
    """
    if token is None or os.path.isdir(os.path.expanduser(os.fspath(model_name))):
        return options
    from huggingface_hub import snapshot_download

    from .encoder import _HUB_PATTERNS

    snapshot_download(repo_id=os.fspath(model_name), token=token, cache_dir=options.get("cache_dir"),
                      revision=options.get("revision"), allow_patterns=_HUB_PATTERNS)
    out = dict(options)
    out.setdefault("local_files_only", True)
    return out


# --------------------------------------------------------------------------- sentence-transformers options
#
# What a user of langchain-huggingface / llama-index-embeddings-huggingface passes goes to
# sentence-transformers' SentenceTransformer(...) and .encode(...). These two functions map every
# such option onto bgem3 (honoured) or refuse it with the alternative: nothing is dropped.

#: ``SentenceTransformer(...)`` options bgem3 honours besides :data:`ENCODER_OPTIONS`.
ST_MODEL_OPTIONS = ("prompts", "default_prompt_name", "token", "use_auth_token", "truncate_dim", "torch_dtype",
                    "model_kwargs", "backend")

#: ``SentenceTransformer(...)`` options refused, with the alternative.
ST_MODEL_REFUSED = {
    "tokenizer_kwargs": "bgem3 loads the model's own tokenizer; set max_length= for truncation",
    "config_kwargs": "bgem3 loads the model's own config",
    "model_card_data": "not used by bgem3",
    "similarity_fn_name": "bgem3 vectors are compared by dot product (cosine when normalised)",
    "cache_folder": "pass cache_folder= as its own argument",
    "local_files": "use local_files_only=True",
}

#: ``.encode(...)`` options bgem3 honours (``encode_kwargs`` / ``query_encode_kwargs``).
ENCODE_OPTIONS = ("batch_size", "max_length", "normalize_embeddings", "show_progress_bar", "convert_to_numpy",
                  "convert_to_tensor", "precision", "prompt", "prompt_name", "truncate_dim")

#: ``.encode(...)`` options refused, with the alternative.
ENCODE_REFUSED = {
    "device": "put device in model_kwargs (the model is loaded on one device)",
    "output_value": "bgem3 returns sentence embeddings; use bgem3.Encoder(...).encode(colbert=True) for token vectors",
    "pool": "bgem3 runs in one process; see multi_process",
    "chunk_size": "bgem3 runs in one process; see multi_process",
    "task": "use task= on E5Embeddings / E5Embedding (e5-instruct models)",
}

def _dtype_option(value: Any, where: str) -> Optional[str]:
    text = str(value).replace("torch.", "").lower() if value is not None else None
    if text is None or text == "auto":
        return None
    if text not in _DTYPES:  # the encoder's one dtype table (int8: CPU, bgem3.quant)
        raise ValueError(f"{where}={value!r} is not a dtype bgem3 runs; use 'float32', 'float16', 'bfloat16' "
                         "(or torch.float16 ...), 'int8' (CPU), or 'auto' / None for the default")
    return dtype_name(text)


#: the ONNX Runtime / OpenVINO options (sentence-transformers' model_kwargs names)
_GRAPH_OPTIONS = frozenset(k for opts in BACKEND_OPTIONS.values() for k in opts)


def split_model_kwargs(model_kwargs: Mapping[str, Any], where: str = "model_kwargs") -> tuple[dict, dict]:
    """Split sentence-transformers-style ``model_kwargs`` into ``(Encoder options, extras)``.

    ``extras`` holds ``prompts``, ``default_prompt_name``, ``token``, ``truncate_dim`` (applied by
    the facade). ``torch_dtype`` (also inside a nested ``model_kwargs``) becomes ``dtype``;
    ``backend`` (``"torch"``, ``"onnx"``, ``"openvino"``) is the Encoder's; the ONNX / OpenVINO options
    (``file_name``, ``subfolder``, ``export``, ``provider``, ``ov_config``), nested in ``model_kwargs`` as
    sentence-transformers takes them or at the top as HuggingFaceEmbedding passes them, become the
    Encoder's ``model_kwargs``. Anything else unknown raises naming it.

    >>> split_model_kwargs({"device": "cpu", "torch_dtype": "float16", "truncate_dim": 8})
    ({'device': 'cpu', 'dtype': 'fp16'}, {'truncate_dim': 8})
    """
    if not isinstance(model_kwargs, Mapping):
        raise TypeError(f"{where} must be a dict; got {type(model_kwargs).__name__}")
    enc: dict = {}
    extras: dict = {}
    unknown = []
    dtypes: dict = {}
    graph_opts: dict = {}
    for key, value in model_kwargs.items():
        if key in _GRAPH_OPTIONS:  # HuggingFaceEmbedding(backend="onnx", model_kwargs={"file_name": ...}) lands here
            graph_opts[key] = value
        elif key == "backend":
            enc["backend"] = check_backend(value)
        elif key == "model_kwargs":  # sentence-transformers passes these to transformers / the ONNX / OpenVINO loader
            if not isinstance(value, Mapping):
                raise TypeError(f"{where}['model_kwargs'] must be a dict; got {type(value).__name__}")
            for k2, v2 in value.items():
                if k2 in ("torch_dtype", "dtype"):
                    dtypes[f"{where}['model_kwargs'][{k2!r}]"] = v2
                elif k2 in _GRAPH_OPTIONS:
                    if k2 in graph_opts and graph_opts[k2] != v2:
                        raise ValueError(f"{k2} is given twice in {where} with different values")
                    graph_opts[k2] = v2
                else:
                    raise ValueError(
                        f"{where}['model_kwargs'] has {k2!r}, which bgem3 does not take; it takes torch_dtype / dtype "
                        f"and the backend options {sorted(_GRAPH_OPTIONS)} (bgem3 loads the weights itself)")
        elif key in ENCODER_OPTIONS:
            if key == "dtype":
                dtypes[f"{where}['dtype']"] = value
            else:
                enc[key] = value
        elif key == "torch_dtype":
            dtypes[f"{where}['torch_dtype']"] = value
        elif key == "use_auth_token":
            extras["token"] = value
        elif key in ("prompts", "default_prompt_name", "token", "truncate_dim"):
            extras[key] = value
        elif key in ST_MODEL_REFUSED:
            raise ValueError(f"{where}[{key!r}] is not supported: {ST_MODEL_REFUSED[key]}")
        else:
            unknown.append(key)
    if unknown:
        raise unknown_options_error(where, unknown, [*ENCODER_OPTIONS, *ST_MODEL_OPTIONS], exc=ValueError)
    if graph_opts:
        enc["model_kwargs"] = check_backend_options(enc.get("backend", "torch"), graph_opts)
    resolved = {k: _dtype_option(v, k) for k, v in dtypes.items()}
    if len(set(resolved.values())) > 1:
        raise ValueError(f"conflicting dtypes {dtypes}; set one")
    if resolved:
        dt = next(iter(resolved.values()))
        if dt is not None:
            enc["dtype"] = dt
    prompts = extras.get("prompts")
    if prompts is not None and (not isinstance(prompts, Mapping)
                                or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())):
        raise TypeError(f"{where}['prompts'] must be a dict of prompt name -> prefix text; got {prompts!r}")
    name = extras.get("default_prompt_name")
    if name is not None and name not in (prompts or {}):
        raise ValueError(f"{where}['default_prompt_name']={name!r} is not in {where}['prompts'] "
                         f"({sorted(prompts or {})}); add it there")
    return enc, extras


def check_encode_kwargs(options: Mapping[str, Any], where: str = "encode_kwargs") -> dict:
    """Check a sentence-transformers-style ``encode_kwargs`` dict: known keys only, values bgem3
    can honour (``precision`` must be ``"float32"``); returns a copy."""
    if not isinstance(options, Mapping):
        raise TypeError(f"{where} must be a dict; got {type(options).__name__}")
    out = dict(options)
    for key, value in out.items():
        if key in ENCODE_REFUSED:
            raise ValueError(f"{where}[{key!r}] is not supported: {ENCODE_REFUSED[key]}")
        if key not in ENCODE_OPTIONS:
            raise unknown_options_error(where, [key], ENCODE_OPTIONS, exc=ValueError)
    if out.get("precision", "float32") != "float32":
        raise ValueError(f"{where}['precision']={out['precision']!r} is not supported: bgem3 returns float32 "
                         "vectors; quantise them in your vector store (e.g. Qdrant scalar quantization)")
    for key in ("normalize_embeddings", "show_progress_bar", "convert_to_numpy", "convert_to_tensor"):
        if key in out and not isinstance(out[key], bool):
            raise TypeError(f"{where}[{key!r}] must be True or False; got {out[key]!r}")
    if "prompt" in out and "prompt_name" in out:
        raise ValueError(f"{where} has both 'prompt' and 'prompt_name'; set one")
    return out


def encode_call_options(encode_kwargs: Mapping[str, Any], extras: Mapping[str, Any], *, where: str,
                        instruction: Optional[str]) -> dict:
    """What one kind of call (documents or queries) does, from its encode kwargs and the model extras.

    Returns ``{"batch_size", "max_length", "normalize", "truncate_dim", "show_progress", "instruction"}``
    (``None`` = the default). The prefix is ``prompt`` / ``prompts[prompt_name]`` from
    ``encode_kwargs``, else ``instruction`` (the facade's own field), else
    ``prompts[default_prompt_name]``, else ``None`` (the model profile's template).
    """
    prompts = dict(extras.get("prompts") or {})
    prefix: Optional[str] = None
    if "prompt" in encode_kwargs:
        prefix = encode_kwargs["prompt"]
        if not isinstance(prefix, str):
            raise TypeError(f"{where}['prompt'] must be a string; got {type(prefix).__name__}")
    elif "prompt_name" in encode_kwargs:
        name = encode_kwargs["prompt_name"]
        if name not in prompts:
            raise ValueError(f"{where}['prompt_name']={name!r} is not a prompt of this model; define it in "
                             f"model_kwargs['prompts'] (now {sorted(prompts)})")
        prefix = prompts[name]
    if prefix is not None and instruction is not None:
        raise ValueError(f"{where} sets a prompt and the instruction field is set too; keep one")
    if prefix is None:
        prefix = instruction
    if prefix is None and extras.get("default_prompt_name") is not None:
        prefix = prompts[extras["default_prompt_name"]]
    return {
        "batch_size": encode_kwargs.get("batch_size"),
        "max_length": encode_kwargs.get("max_length"),
        "normalize": encode_kwargs.get("normalize_embeddings"),
        "truncate_dim": encode_kwargs.get("truncate_dim", extras.get("truncate_dim")),
        "show_progress": encode_kwargs.get("show_progress_bar"),
        "instruction": prefix,
    }


# --------------------------------------------------------------------------- output views

def encoder_view(encoder: Encoder, normalize: Optional[bool] = None, profile: Optional[Profile] = None) -> Encoder:
    """``encoder`` itself, or a view of it (same weights, tokenizer and locks; no reload) with
    ``profile`` (a facade's own templates) and/or dense vectors that are (``True``) or are not
    (``False``) L2-normalised. ``None`` keeps the encoder's own."""
    new = encoder.profile if profile is None else profile
    if normalize is not None and bool(normalize) != new.normalize:
        new = replace(new, normalize=bool(normalize))
    if new == encoder.profile:
        return encoder
    view = object.__new__(type(encoder))
    view.__dict__.update(encoder.__dict__)
    view.__dict__.pop("_bgem3_token", None)
    view.profile = new
    return view


def truncate_dense(vectors: np.ndarray, truncate_dim: Optional[int], normalize: bool) -> np.ndarray:
    """Matryoshka truncation: the first ``truncate_dim`` numbers of each row, L2-normalised again
    when ``normalize`` (sentence-transformers' ``encode(truncate_dim=..., normalize_embeddings=True)``:
    the model's own ``Normalize`` module runs before the truncation, ``normalize_embeddings`` after it)."""
    if truncate_dim is None or truncate_dim >= vectors.shape[1]:
        return vectors
    out = np.ascontiguousarray(vectors[:, :truncate_dim])
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- old pickles
#
# Pickling is a method of each class now (Encoder.__reduce__, HybridIndex.__getstate__/__setstate__,
# QdrantHybridStore.__reduce__). Pickles written by bgem3 before that name these two functions:
# kept so that they still load, until the next minor version.

def _restore_encoder(token: str, path: str, options: dict) -> Encoder:
    """Old pickles of an :class:`~bgem3.Encoder` (now ``bgem3.encoder._restore_encoder``)."""
    from .encoder import _restore_encoder as restore

    return restore(token, path, options)


def _restore_without_locks(cls: type, state: dict, locks: dict) -> Any:
    """Old pickles of a :class:`~bgem3.HybridIndex` (now ``HybridIndex.__setstate__``)."""
    obj = object.__new__(cls)
    obj.__dict__.update(state)
    for name, reentrant in locks.items():
        setattr(obj, name, threading.RLock() if reentrant else threading.Lock())
    return obj


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
    config, unknown name) still loads with E5's mean pooling. A ``bgem3 serve`` URL gives ``None``:
    the server chose the pooling when it loaded the model (the facade adds E5's templates on top).
    """
    if is_url(model_name_or_path):
        return None
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


def folder_normalizes(encoder: Any) -> bool:
    """The model folder's sentence-transformers pipeline ends with a ``Normalize`` module."""
    st = getattr(encoder, "st_pipeline", None)
    return bool(st is not None and st.normalize and encoder.profile.normalize)


_noted_normalize: set = set()


def _note_declared_normalize(encoder: Any) -> None:
    key = getattr(encoder, "path", None)
    if key in _noted_normalize:
        return
    _noted_normalize.add(key)
    logger.warning(
        "normalize=False / normalize_embeddings=False: the model folder %r ends its sentence-transformers "
        "pipeline with a Normalize module, so its vectors stay unit length (as sentence-transformers, "
        "HuggingFaceEmbeddings and HuggingFaceEmbedding return them). For the raw pooled vectors pass "
        "encoder=bgem3.Encoder(path, profile=bgem3.Profile(name='raw', pooling=%r, normalize=False))",
        key, encoder.st_pipeline.pooling)


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
        normalize: Optional[bool] = None,
        truncate_dim: Optional[int] = None,
        query_batch_size: Optional[int] = None,
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
        self.query_batch_size = query_batch_size
        self.max_length = max_length
        self.show_progress = show_progress
        if normalize is not None and not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True, False or None (the model's own); got {normalize!r}")
        #: what the caller asked for: True re-normalises after truncate_dim (sentence-transformers'
        #: normalize_embeddings=True); None / False do not
        self.renormalize = normalize is True
        if normalize is False and folder_normalizes(encoder):
            _note_declared_normalize(encoder)
            normalize = None  # the folder's Normalize module runs, as in sentence-transformers
        self.normalize = normalize
        if truncate_dim is not None:
            positive_int(truncate_dim, "truncate_dim")
            if truncate_dim > encoder.hidden_size:
                raise ValueError(f"truncate_dim={truncate_dim} is larger than the model's {encoder.hidden_size} "
                                 "dimensions; use a value <= that, or None for full vectors")
        self.truncate_dim = None if truncate_dim is None else int(truncate_dim)

    # ---------------------------------------------------------------- formatting
    def format_queries(self, texts: Sequence[str]) -> list[str]:
        """The queries as the model sees them (with the query template). A lone string is refused."""
        return [self.profile.format_query(t, self.task) for t in check_list_arg(texts, "texts")]

    def format_documents(self, texts: Sequence[str]) -> list[str]:
        """The documents as the model sees them (with the passage template). A lone string is refused."""
        return [self.profile.format_passage(t) for t in check_list_arg(texts, "texts")]

    def _encode(self, texts: Sequence[str], *, query: bool, dense: bool, sparse: bool, batch_size: Optional[int],
                show_progress: Optional[bool], run_async: bool = False):
        # the encoder's own encode_queries / encode_documents on a view with this facade's templates:
        # whatever the encoder does with its profile (prompt handling, no double prefix) applies as is.
        # run_async: its aencode_* twin (a coroutine; native HTTP for a RemoteEncoder)
        texts = check_list_arg(texts, "texts")
        view = encoder_view(self.encoder, self.normalize if dense else None, self.profile)
        kwargs = dict(dense=dense, sparse=sparse,
                      batch_size=batch_size if batch_size is not None else self.batch_size,
                      max_length=self.max_length,
                      show_progress=show_progress if show_progress is not None else self.show_progress)
        if query:
            kwargs["task"] = self.task
        method = ("aencode_" if run_async else "encode_") + ("queries" if query else "documents")
        return getattr(view, method)(texts, **kwargs)

    def _finish_dense(self, vecs: np.ndarray) -> np.ndarray:
        # as sentence-transformers: truncation after the model's own pipeline (its Normalize module
        # included), a new L2 normalisation only when normalize=True was asked for
        return truncate_dense(vecs, self.truncate_dim, self.renormalize)

    # ---------------------------------------------------------------- dense
    def dense_queries(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                      show_progress: Optional[bool] = None) -> np.ndarray:
        """``float32 [N, H]`` query vectors (L2-normalised unless ``normalize=False``; first
        ``truncate_dim`` numbers when set)."""
        return self._finish_dense(self._encode(texts, query=True, dense=True, sparse=False, show_progress=show_progress,
                                               batch_size=self.query_batch_size if batch_size is None else batch_size).dense)

    def dense_documents(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                        show_progress: Optional[bool] = None) -> np.ndarray:
        """``float32 [N, H]`` document vectors (see :meth:`dense_queries`)."""
        return self._finish_dense(self._encode(texts, query=False, dense=True, sparse=False, batch_size=batch_size,
                                               show_progress=show_progress).dense)

    async def adense_queries(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                             show_progress: Optional[bool] = None) -> np.ndarray:
        """:meth:`dense_queries`, awaitable (the encoder's ``aencode_queries``)."""
        out = await self._encode(texts, query=True, dense=True, sparse=False, show_progress=show_progress,
                                 batch_size=self.query_batch_size if batch_size is None else batch_size, run_async=True)
        return self._finish_dense(out.dense)

    async def adense_documents(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                               show_progress: Optional[bool] = None) -> np.ndarray:
        """:meth:`dense_documents`, awaitable (the encoder's ``aencode_documents``)."""
        out = await self._encode(texts, query=False, dense=True, sparse=False, batch_size=batch_size,
                                 show_progress=show_progress, run_async=True)
        return self._finish_dense(out.dense)

    # ---------------------------------------------------------------- sparse
    def sparse_queries(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                       show_progress: Optional[bool] = None) -> list[dict[int, float]]:
        """``{token_id: weight}`` per query (BGE-M3's lexical weights)."""
        self.check_sparse()
        return self._encode(texts, query=True, dense=False, sparse=True, batch_size=batch_size,
                            show_progress=show_progress).sparse

    def sparse_documents(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                         show_progress: Optional[bool] = None) -> list[dict[int, float]]:
        """``{token_id: weight}`` per document."""
        self.check_sparse()
        return self._encode(texts, query=False, dense=False, sparse=True, batch_size=batch_size,
                            show_progress=show_progress).sparse

    async def asparse_queries(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                              show_progress: Optional[bool] = None) -> list[dict[int, float]]:
        """:meth:`sparse_queries`, awaitable."""
        self.check_sparse()
        return (await self._encode(texts, query=True, dense=False, sparse=True, batch_size=batch_size,
                                   show_progress=show_progress, run_async=True)).sparse

    async def asparse_documents(self, texts: Sequence[str], *, batch_size: Optional[int] = None,
                                show_progress: Optional[bool] = None) -> list[dict[int, float]]:
        """:meth:`sparse_documents`, awaitable."""
        self.check_sparse()
        return (await self._encode(texts, query=False, dense=False, sparse=True, batch_size=batch_size,
                                   show_progress=show_progress, run_async=True)).sparse

    def sparse_lists_queries(self, texts: Sequence[str], **kwargs: Any) -> tuple[list[list[int]], list[list[float]]]:
        """Qdrant's batch format: ``([ids per query], [weights per query])``."""
        return _split(self.sparse_queries(texts, **kwargs))

    def sparse_lists_documents(self, texts: Sequence[str], **kwargs: Any) -> tuple[list[list[int]], list[list[float]]]:
        """Qdrant's batch format: ``([ids per document], [weights per document])``."""
        return _split(self.sparse_documents(texts, **kwargs))

    async def asparse_lists_queries(self, texts: Sequence[str], **kwargs: Any) -> tuple[list[list[int]], list[list[float]]]:
        """:meth:`sparse_lists_queries`, awaitable."""
        return _split(await self.asparse_queries(texts, **kwargs))

    async def asparse_lists_documents(self, texts: Sequence[str], **kwargs: Any) -> tuple[list[list[int]], list[list[float]]]:
        """:meth:`sparse_lists_documents`, awaitable."""
        return _split(await self.asparse_documents(texts, **kwargs))

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
