"""The sentence-transformers option tables of the drop-in facades: which ``model_kwargs`` load the model and
which shape the encode call (:func:`split_model_kwargs`), which ``encode_kwargs`` are honoured
(:func:`check_encode_kwargs`, :func:`encode_call_options`), and which are refused with the alternative."""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from .._loading import ENCODER_OPTIONS
from ..backends import BACKEND_OPTIONS, check_backend, check_backend_options
from ..encoder import _DTYPES, dtype_name
from .arguments import unknown_options_error

def prefetch_with_token(model_name: str, token: Optional[Union[str, bool]], options: dict) -> dict:
    """Download a hub model with a Hugging Face ``token`` (gated / private repos), then return
    the loading ``options`` with ``local_files_only=True`` so the encoder loads that copy.

    A local folder, or ``token=None``, needs nothing: ``options`` come back unchanged.
    """
    if token is None or os.path.isdir(os.path.expanduser(os.fspath(model_name))):
        return options
    from huggingface_hub import snapshot_download

    from ..encoder import _HUB_PATTERNS

    snapshot_download(repo_id=os.fspath(model_name), token=token, cache_dir=options.get("cache_dir"),
                      revision=options.get("revision"), allow_patterns=_HUB_PATTERNS)
    out = dict(options)
    out.setdefault("local_files_only", True)
    return out


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
