"""LangChain dense embeddings backed by :class:`bgem3.Encoder`: BGE-M3 and the E5 family.

Fields follow ``langchain_huggingface.HuggingFaceEmbeddings`` (``model_name``,
``cache_folder``, ``model_kwargs``, ``encode_kwargs``, ``show_progress``) so switching is a
one-line change. Every number comes from :class:`bgem3.Encoder`; a dense and a sparse facade
for the same model share one loaded encoder.

Example::

    from langchain_bgem3 import BGEM3Embeddings, E5Embeddings

    m3 = BGEM3Embeddings(model_name="BAAI/bge-m3", model_kwargs={"device": "cpu"})
    vec = m3.embed_query("What is BGE M3?")          # list[float], 1024 numbers

    e5 = E5Embeddings(model_name="intfloat/multilingual-e5-large")
    e5.embed_documents(["..."])    # encoded as "passage: ..."
    e5.embed_query("...")          # encoded as "query: ..."
"""

from __future__ import annotations

try:
    from langchain_core.embeddings import Embeddings
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    from bgem3._adapters.arguments import missing_framework

    raise missing_framework("langchain_bgem3", "langchain-core", "LangChain", "langchain") from _exc

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from bgem3 import Encoder
from bgem3._adapters.arguments import check_list_arg
from bgem3._adapters.instructions import e5_encoder_profile, e5_templates, framework_query_instruction
from bgem3._adapters.options import (ENCODE_OPTIONS, check_encode_kwargs, encode_call_options, prefetch_with_token,
                                     split_model_kwargs)
from bgem3._adapters.text_encoder import TextEncoder, TextEncoderCache
from bgem3._loading import shared_encoder

__all__ = ["BGEM3Embeddings", "E5Embeddings"]

DEFAULT_BGEM3_MODEL = "BAAI/bge-m3"
DEFAULT_E5_MODEL = "intfloat/multilingual-e5-large"

#: Keys ``encode_kwargs`` / ``query_encode_kwargs`` may hold (sentence-transformers' ``encode`` names).
ENCODE_KWARGS = ENCODE_OPTIONS


class EncoderBacked(BaseModel):
    """Fields and loading shared by the LangChain facades (dense and sparse). Not used directly.

    Every option of ``langchain_huggingface.HuggingFaceEmbeddings`` is honoured or refused with
    the alternative (see docs/langchain.md, "Migrating from HuggingFaceEmbeddings").
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str = DEFAULT_BGEM3_MODEL
    """Hub id (``"BAAI/bge-m3"``) or local folder of the model (``model=`` is an alias)."""
    cache_folder: Optional[str] = None
    """Hugging Face cache folder for hub downloads."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Loading options: those of :class:`bgem3.Encoder` (``device``, ``dtype``, ``max_length``,
    ``local_files_only``, ``revision``, ``trust_remote_code``...) and the sentence-transformers ones
    that make sense here: ``torch_dtype`` (or ``{"model_kwargs": {"torch_dtype": ...}}``),
    ``prompts`` + ``default_prompt_name``, ``token``, ``truncate_dim``, ``backend`` (``"torch"``,
    ``"onnx"``, ``"openvino"``) with ``{"model_kwargs": {"file_name": ...}}`` for the graph backends."""
    encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Per-call options for documents (and for queries when ``query_encode_kwargs`` is empty):
    ``batch_size``, ``max_length``, ``normalize_embeddings``, ``truncate_dim``, ``prompt``,
    ``prompt_name``, ``show_progress_bar``, ``precision="float32"``, ``convert_to_numpy`` /
    ``convert_to_tensor`` (accepted; LangChain gets ``list[float]`` either way)."""
    query_encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Like ``encode_kwargs``, for :meth:`embed_query`; when non-empty it replaces
    ``encode_kwargs`` for queries (as in ``HuggingFaceEmbeddings``)."""
    multi_process: bool = False
    """``True`` is refused: bgem3 encodes in one process (length-sorted token-budget batching)."""
    batch_size: Optional[int] = Field(default=None, gt=0)
    """Texts per forward pass. Reads the value in use after construction (default 32, the encoder's);
    ``encode_kwargs["batch_size"]`` wins over this field when both are set (as in the anchor)."""
    show_progress: bool = False
    """Show a tqdm progress bar while encoding."""
    query_instruction: Optional[str] = None
    """Text put before every query, replacing the model's default (``""`` for none)."""
    document_instruction: Optional[str] = None
    """Text put before every document, replacing the model's default (``""`` for none)."""
    encoder: Optional[Encoder] = Field(default=None, exclude=True, repr=False)
    """An already loaded :class:`bgem3.Encoder` to use (shares its weights); loaded from
    ``model_name`` + ``model_kwargs`` when not given."""

    _doc_call: dict = PrivateAttr(default_factory=dict)
    _query_call: dict = PrivateAttr(default_factory=dict)
    _text_encoders: TextEncoderCache = PrivateAttr(default_factory=TextEncoderCache)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            data = dict(data)
            model = data.pop("model")
            if "model_name" in data and data["model_name"] != model:
                raise ValueError(f"model={model!r} and model_name={data['model_name']!r} disagree; "
                                 "model is an alias of model_name: set one")
            if isinstance(model, Encoder):
                data.setdefault("encoder", model)
            else:
                data["model_name"] = model
        return data

    @model_validator(mode="after")
    def _load(self) -> "EncoderBacked":
        if self.multi_process:
            raise ValueError("multi_process=True is not supported: bgem3 encodes in one process. For several "
                             "GPUs build one BGEM3Embeddings per device (model_kwargs={'device': 'cuda:1'}) or run "
                             "`bgem3 serve`; leave multi_process=False")
        enc_opts, extras = split_model_kwargs(self.model_kwargs, "model_kwargs")
        if extras.get("token") is not None:  # used to download, never kept in the config (repr, dumps, pickles)
            self.model_kwargs = {k: v for k, v in self.model_kwargs.items() if k not in ("token", "use_auth_token")}
        doc_kw = check_encode_kwargs(self.encode_kwargs, "encode_kwargs")
        query_kw = check_encode_kwargs(self.query_encode_kwargs, "query_encode_kwargs") or doc_kw
        if self.encoder is not None:
            if not isinstance(self.encoder, Encoder):
                raise TypeError(f"encoder must be a bgem3.Encoder; got {type(self.encoder).__name__}")
            if enc_opts or extras.get("token") is not None:
                raise ValueError(
                    "model_kwargs configure loading a model, but encoder= is an already loaded one; "
                    "pass one or the other"
                )
            if "model_name" not in self.model_fields_set:
                self.model_name = str(self.encoder.model_name)
            elif self.model_name not in (str(self.encoder.model_name), self.encoder.path):
                raise ValueError(
                    f"model_name={self.model_name!r} does not match the encoder's model "
                    f"{self.encoder.model_name!r}; drop model_name when passing encoder="
                )
        else:
            if self.cache_folder is not None:
                enc_opts.setdefault("cache_dir", self.cache_folder)
            enc_opts = prefetch_with_token(self.model_name, extras.get("token"), enc_opts)
            self.encoder = self._load_encoder(enc_opts)
        self._doc_call = encode_call_options(doc_kw, extras, where="encode_kwargs",
                                             instruction=self.document_instruction)
        self._query_call = encode_call_options(
            query_kw, extras, where="query_encode_kwargs" if self.query_encode_kwargs else "encode_kwargs",
            instruction=self.query_instruction)
        # encode_kwargs["batch_size"] wins over the field (as in HuggingFaceEmbeddings); .batch_size reads the value used
        self.batch_size = self._doc_call["batch_size"] or self.batch_size or self.encoder.batch_size
        self._check_encoder()
        return self

    def _load_encoder(self, options: dict) -> Encoder:
        return shared_encoder(self.model_name, **options)

    def _check_encoder(self) -> None:
        self._text_encoder()  # validates templates / task now, not at the first call
        self._text_encoder(query=True)

    def _profile(self) -> Any:
        return None  # the encoder's

    def _text_encoder(self, query: bool = False) -> TextEncoder:
        call = self._query_call if query else self._doc_call
        profile = self._profile() or self.encoder.profile
        instruction = call["instruction"]
        if query:
            instruction = framework_query_instruction(profile, instruction)
        return self._text_encoders.get(
            "queries" if query else "documents",
            self.encoder,
            profile=profile,
            query_instruction=instruction if query else None,
            document_instruction=None if query else instruction,
            batch_size=call["batch_size"] or self.batch_size,
            max_length=call["max_length"],
            show_progress=self.show_progress if call["show_progress"] is None else call["show_progress"],
            normalize=call["normalize"],
            truncate_dim=call["truncate_dim"],
        )


def _one_line(texts: list[str]) -> list[str]:
    # HuggingFaceEmbeddings replaces newlines by spaces before encoding; so do we (templates keep theirs)
    return [t.replace("\n", " ") if isinstance(t, str) else t for t in check_list_arg(texts, "texts")]


def _one_query(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"embed_query takes one string; got {type(text).__name__} (use embed_documents for a list)")
    return _one_line([text])


class _DenseEmbeddings(EncoderBacked, Embeddings):
    """The LangChain ``Embeddings`` methods over a :class:`~bgem3._adapters.text_encoder.TextEncoder`."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (with the model's passage template: none for BGE-M3, ``passage: `` for E5).

        A lone string is refused (``TypeError``): pass a list. Newlines become spaces first, as in
        ``HuggingFaceEmbeddings``.
        """
        return self._text_encoder().dense_documents(_one_line(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (with the model's query template: none for BGE-M3, ``query: `` for E5)."""
        return self._text_encoder(query=True).dense_queries(_one_query(text))[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Like :meth:`embed_documents`, awaitable: a :class:`bgem3.RemoteEncoder` sends its HTTP
        requests on this event loop; a local encoder runs in a worker thread."""
        return (await self._text_encoder().adense_documents(_one_line(texts))).tolist()

    async def aembed_query(self, text: str) -> list[float]:
        """Like :meth:`embed_query`, awaitable (see :meth:`aembed_documents`)."""
        return (await self._text_encoder(query=True).adense_queries(_one_query(text)))[0].tolist()


class BGEM3Embeddings(_DenseEmbeddings):
    """BGE-M3 dense embeddings for LangChain (CLS vector, L2-normalised, 1024 numbers).

    BGE-M3 needs no query or passage prefix. For hybrid search pair it with
    :class:`~langchain_bgem3.BGEM3SparseEmbeddings` built on the same encoder.

    Args:
        model_name: hub id or local folder (default ``"BAAI/bge-m3"``).
        model_kwargs: :class:`bgem3.Encoder` options, e.g. ``{"device": "cuda", "dtype": "fp16"}``.
        encode_kwargs: ``{"batch_size": 16, "max_length": 512}``.
        encoder: an already loaded :class:`bgem3.Encoder` (shares its weights).

    Example::

        >>> from langchain_bgem3 import BGEM3Embeddings                      # doctest: +SKIP
        >>> emb = BGEM3Embeddings(model_name="BAAI/bge-m3")                  # doctest: +SKIP
        >>> len(emb.embed_query("What is BGE M3?"))                          # doctest: +SKIP
        1024
    """


class E5Embeddings(_DenseEmbeddings):
    """Multilingual E5 dense embeddings for LangChain, with E5's prefixes applied for you.

    Documents are encoded as ``"passage: <text>"`` and queries as ``"query: <text>"`` (the
    E5 models were trained that way; leaving the prefixes out costs retrieval quality).
    Instruct models (``intfloat/multilingual-e5-large-instruct``) take
    ``"Instruct: <task>\\nQuery: <text>"`` for queries and the bare text for documents;
    set ``task`` to change the instruction.

    Args:
        model_name: default ``"intfloat/multilingual-e5-large"``; any E5 hub id or folder
            (a sentence-transformers folder keeps its own pooling and gets E5's prefixes).
        query_instruction / document_instruction: replace ``"query: "`` / ``"passage: "``
            (``""`` turns a prefix off).
        task: the instruction for e5-instruct models.

    Example::

        >>> from langchain_bgem3 import E5Embeddings                                     # doctest: +SKIP
        >>> emb = E5Embeddings(model_name="intfloat/multilingual-e5-large")              # doctest: +SKIP
        >>> q = emb.embed_query("how much protein should a female eat")   # "query: ..." # doctest: +SKIP
        >>> len(q)                                                                       # doctest: +SKIP
        1024
    """

    model_name: str = DEFAULT_E5_MODEL
    task: Optional[str] = None
    """The instruction for e5-instruct models (``Instruct: {task}\\nQuery: {query}``)."""

    def _load_encoder(self, options: dict) -> Encoder:
        opts = dict(options)
        if "profile" not in opts:
            profile = e5_encoder_profile(self.model_name, task=self.task, cache_dir=opts.get("cache_dir"),
                                         revision=opts.get("revision"), local_files_only=opts.get("local_files_only"))
            if profile is not None:
                opts["profile"] = profile
        return shared_encoder(self.model_name, **opts)

    def _profile(self) -> Any:
        return e5_templates(self.encoder.profile, self.task)
