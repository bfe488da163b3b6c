"""Request parsing and response shapes of the three APIs ``bgem3 serve`` speaks.

* **TEI** (text-embeddings-inference): ``POST /embed`` and ``POST /`` -> ``[[float]]``,
  ``POST /embed_sparse`` -> ``[[{"index", "value"}]]``, errors ``{"error", "error_type"}``.
* **OpenAI**: ``POST /v1/embeddings`` -> ``{"object": "list", "data": [...], "model", "usage"}``,
  errors ``{"error": {"message", "type", "param", "code"}}``.
* **ours**: ``POST /encode`` -> dense / lexical / ColBERT in one compact answer (base64
  float32 dense, base64 float16 or float32 ColBERT), errors like TEI's.

Every parser checks names and types and raises :class:`ApiError` naming the field and the fix;
an unknown field is refused, never ignored.

Example::

    >>> req = parse_encode({"inputs": ["hi"], "sparse": True}, max_texts=8)
    >>> req.texts, req.dense, req.sparse, req.colbert
    (['hi'], True, True, False)
    >>> float(decode_array(encode_array(np.ones((2, 3), np.float32)), "float32", (2, 3)).sum())
    6.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np  # noqa: F401 (the module doctest)

from .._checks import positive_int
from .._wire import COLBERT_DTYPES, ENCODE_FIELDS, ENCODINGS, SIDES, decode_array, encode_array

__all__ = [
    "ApiError", "EncodeRequest", "TextsRequest", "decode_array", "encode_array", "parse_encode",
    "parse_openai", "parse_tei", "tei_error", "openai_error",
]


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a message for people, a machine ``kind``."""

    def __init__(self, status: int, message: str, kind: str = "Validation", param: Optional[str] = None,
                 headers: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.headers = headers or {}


def tei_error(err: ApiError) -> dict:
    """TEI's error body."""
    return {"error": err.message, "error_type": err.kind}


_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
                 503: "server_error", 504: "timeout", 500: "server_error"}


def openai_error(err: ApiError) -> dict:
    """OpenAI's error body."""
    code = {404: "model_not_found", 429: "rate_limit_exceeded"}.get(err.status)
    return {"error": {"message": err.message, "type": _OPENAI_TYPES.get(err.status, "invalid_request_error"),
                      "param": err.param, "code": code}}


# --------------------------------------------------------------------------- helpers

def _check_fields(body: Any, allowed: frozenset, where: str) -> dict:
    if not isinstance(body, dict):
        raise ApiError(422, f"{where}: the JSON body must be an object like {{\"inputs\": [\"text\"]}}; "
                            f"got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(422, f"{where}: unknown field(s) {unknown}; accepted fields are {sorted(allowed)}",
                       param=unknown[0])
    return body


def _bool(body: dict, name: str, default: Optional[bool]) -> Optional[bool]:
    value = body.get(name, None)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(422, f"`{name}` must be true or false; got {value!r}", param=name)
    return value


def _texts(value: Any, name: str, max_texts: int, *, allow_empty: bool) -> list[str]:
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = value
    elif value is None:
        raise ApiError(422, f"`{name}` is required: a string or a list of strings", param=name)
    else:
        raise ApiError(422, f"`{name}` must be a string or a list of strings; got {type(value).__name__}", param=name)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            hint = (" (token-id input is not supported: send the text; the server tokenises with the model's "
                    "own tokenizer)") if isinstance(t, (int, list)) else ""
            raise ApiError(422, f"`{name}[{i}]` is {type(t).__name__}, not a string{hint}", param=name)
    if not texts and not allow_empty:
        raise ApiError(422, f"`{name}` is empty: send at least one text", kind="Empty", param=name)
    if len(texts) > max_texts:
        raise ApiError(413, f"`{name}` has {len(texts)} texts; this server takes at most {max_texts} per request "
                            "(--max-client-batch-size): split the list into several requests", param=name)
    return list(texts)


@dataclass
class TextsRequest:
    """A parsed TEI or OpenAI request."""

    texts: list[str]
    truncate: Optional[bool] = None
    side: str = "raw"  # "raw", "query", "document"
    normalize: bool = True
    base64: bool = False
    dimensions: Optional[int] = None
    model: Optional[str] = None
    task: Optional[str] = None


@dataclass
class EncodeRequest(TextsRequest):
    """A parsed ``POST /encode`` request."""

    dense: bool = True
    sparse: bool = False
    colbert: bool = False
    colbert_dtype: str = "float16"  # the default: half the bytes; RemoteEncoder asks float32 (exact)
    encoding: str = "base64"
    max_length: Optional[int] = None
    examples: Optional[list] = None


_TEI_EMBED = frozenset({"inputs", "normalize", "truncate", "truncation_direction", "prompt_name", "dimensions"})
_TEI_SPARSE = frozenset({"inputs", "truncate", "truncation_direction", "prompt_name"})

#: prompt names TEI clients send -> our template side
PROMPT_SIDES = {"query": "query", "document": "document", "passage": "document", "corpus": "document"}


def parse_tei(body: Any, *, sparse: bool, max_texts: int) -> TextsRequest:
    """``POST /embed`` (``sparse=False``) or ``POST /embed_sparse`` body."""
    where = "/embed_sparse" if sparse else "/embed"
    body = _check_fields(body, _TEI_SPARSE if sparse else _TEI_EMBED, where)
    req = TextsRequest(texts=_texts(body.get("inputs"), "inputs", max_texts, allow_empty=False))
    req.truncate = _bool(body, "truncate", None)
    direction = body.get("truncation_direction")
    if direction is not None and direction not in ("Right", "right"):
        raise ApiError(422, f"`truncation_direction` {direction!r} is not supported: bgem3 truncates on the right "
                            "(drop the field or send \"Right\")", param="truncation_direction")
    prompt = body.get("prompt_name")
    if prompt is not None:
        if not isinstance(prompt, str) or prompt not in PROMPT_SIDES:
            raise ApiError(422, f"`prompt_name` {prompt!r} is unknown; this server applies the model's templates for "
                                f"{sorted(PROMPT_SIDES)} (query -> query template, the others -> passage template)",
                           param="prompt_name")
        req.side = PROMPT_SIDES[prompt]
    if not sparse:
        req.normalize = bool(_bool(body, "normalize", True))
        dims = body.get("dimensions")
        if dims is not None:
            req.dimensions = positive_field(dims, "dimensions")
    return req


_OPENAI = frozenset({"input", "model", "encoding_format", "dimensions", "user"})


def parse_openai(body: Any, *, max_texts: int) -> TextsRequest:
    """``POST /v1/embeddings`` body. ``user`` is accepted (it is an end-user id for abuse
    tracking upstream and does not change the result)."""
    body = _check_fields(body, _OPENAI, "/v1/embeddings")
    req = TextsRequest(texts=_texts(body.get("input"), "input", max_texts, allow_empty=False))
    model = body.get("model")
    if model is None or not isinstance(model, str):
        raise ApiError(422, "`model` is required (a string): the served model's name, see GET /v1/models",
                       param="model")
    req.model = model
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(422, f"`encoding_format` must be \"float\" or \"base64\"; got {fmt!r}", param="encoding_format")
    req.base64 = fmt == "base64"
    if body.get("dimensions") is not None:
        req.dimensions = positive_field(body["dimensions"], "dimensions")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise ApiError(422, "`user` must be a string", param="user")
    return req


_ENCODE = ENCODE_FIELDS


def parse_encode(body: Any, *, max_texts: int) -> EncodeRequest:
    """``POST /encode`` body: ``inputs``, ``side`` (raw/query/document), ``task``, ``examples`` (bge-en-icl
    queries), output flags, ``colbert_dtype`` (float16 by default, or float32), ``encoding`` (base64/float),
    ``truncate``, ``max_length``."""
    body = _check_fields(body, _ENCODE, "/encode")
    req = EncodeRequest(texts=_texts(body.get("inputs"), "inputs", max_texts, allow_empty=True))
    side = body.get("side", "raw")
    if side not in SIDES:
        raise ApiError(422, f"`side` must be \"query\", \"document\" or \"raw\" (no template); got {side!r}",
                       param="side")
    req.side = side
    task = body.get("task")
    if task is not None:
        if not isinstance(task, str):
            raise ApiError(422, "`task` must be a string (the instruction, or an LLM-Embedder task name)", param="task")
        if side == "raw":
            raise ApiError(422, "`task` applies to templated texts: send it with \"side\": \"query\" (or "
                                "\"document\" for LLM-Embedder's key instructions)", param="task")
        req.task = task
    examples = body.get("examples")
    if examples is not None:
        if side != "query":
            raise ApiError(422, "`examples` (bge-en-icl few-shot examples) apply to queries: send them with "
                                "\"side\": \"query\"", param="examples")
        if not isinstance(examples, list) or not all(
                isinstance(e, dict) and set(e) <= {"instruct", "query", "response"}
                and all(isinstance(v, str) for v in e.values()) for e in examples):
            raise ApiError(422, "`examples` must be a list of objects with string fields \"query\", \"response\" "
                                "and optionally \"instruct\"", param="examples")
        req.examples = examples
    req.dense = bool(_bool(body, "dense", True))
    req.sparse = bool(_bool(body, "sparse", False))
    req.colbert = bool(_bool(body, "colbert", False))
    if not (req.dense or req.sparse or req.colbert):
        raise ApiError(422, "nothing to compute: set at least one of \"dense\", \"sparse\", \"colbert\" to true",
                       param="dense")
    req.colbert_dtype = body.get("colbert_dtype", "float16")
    if req.colbert_dtype not in COLBERT_DTYPES:
        raise ApiError(422, f"`colbert_dtype` must be \"float16\" or \"float32\"; got {req.colbert_dtype!r}",
                       param="colbert_dtype")
    req.encoding = body.get("encoding", "base64")
    if req.encoding not in ENCODINGS:
        raise ApiError(422, f"`encoding` must be \"base64\" or \"float\"; got {req.encoding!r}", param="encoding")
    req.truncate = _bool(body, "truncate", None)
    if body.get("max_length") is not None:
        req.max_length = positive_field(body["max_length"], "max_length")
    return req


def positive_field(value: Any, name: str) -> int:
    """A request field that must be a positive integer (:func:`bgem3._checks.positive_int`), or a 422 naming it."""
    try:
        return positive_int(value, name)
    except ValueError:
        raise ApiError(422, f"`{name}` must be a positive integer; got {value!r}", param=name) from None
