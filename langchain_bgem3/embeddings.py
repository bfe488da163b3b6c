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
    from langchain_core.runnables.config import run_in_executor
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    from bgem3._shared import missing_framework

    raise missing_framework("langchain_bgem3", "langchain-core", "LangChain", "langchain") from _exc

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bgem3 import Encoder
from bgem3._shared import (
    TextEncoder,
    check_encoder_options,
    e5_encoder_profile,
    e5_templates,
    shared_encoder,
)

__all__ = ["BGEM3Embeddings", "E5Embeddings"]

DEFAULT_BGEM3_MODEL = "BAAI/bge-m3"
DEFAULT_E5_MODEL = "intfloat/multilingual-e5-large"

#: Keys ``encode_kwargs`` may hold.
ENCODE_KWARGS = ("batch_size", "max_length", "normalize_embeddings")


class EncoderBacked(BaseModel):
    """Fields and loading shared by the LangChain facades (dense and sparse). Not used directly."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str = DEFAULT_BGEM3_MODEL
    """Hub id (``"BAAI/bge-m3"``) or local folder of the model."""
    cache_folder: Optional[str] = None
    """Hugging Face cache folder for hub downloads."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Options for :class:`bgem3.Encoder`: ``device`` (``"cpu"``, ``"cuda"``, ``"mps"``), ``dtype``
    (``"fp32"``, ``"fp16"``, ``"bf16"``), ``max_length``, ``local_files_only``, ``revision``, ..."""
    encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Options for each encode call: ``batch_size``, ``max_length``. Vectors are always
    L2-normalised (``normalize_embeddings=False`` is refused)."""
    batch_size: Optional[int] = Field(default=None, gt=0)
    """Most texts per forward pass (default: the encoder's, 32). Same as ``encode_kwargs["batch_size"]``."""
    show_progress: bool = False
    """Show a tqdm progress bar while encoding."""
    query_instruction: Optional[str] = None
    """Text put before every query, replacing the model's default (``""`` for none)."""
    document_instruction: Optional[str] = None
    """Text put before every document, replacing the model's default (``""`` for none)."""
    encoder: Optional[Encoder] = Field(default=None, exclude=True, repr=False)
    """An already loaded :class:`bgem3.Encoder` to use (shares its weights); loaded from
    ``model_name`` + ``model_kwargs`` when not given."""

    @model_validator(mode="after")
    def _load(self) -> "EncoderBacked":
        for key in self.encode_kwargs:
            if key not in ENCODE_KWARGS:
                raise ValueError(
                    f"encode_kwargs has {key!r}, which bgem3 does not take; valid keys are {list(ENCODE_KWARGS)} "
                    "(device and dtype go in model_kwargs)"
                )
        if self.encode_kwargs.get("normalize_embeddings", True) is not True:
            raise ValueError("encode_kwargs normalize_embeddings=False is not supported: bgem3 always returns "
                             "L2-normalised vectors (cosine = dot product). Drop the key.")
        ek_bs = self.encode_kwargs.get("batch_size")
        if ek_bs is not None and self.batch_size is not None and ek_bs != self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} and encode_kwargs['batch_size']={ek_bs} disagree; set one")
        check_encoder_options(self.model_kwargs, "model_kwargs")
        if self.encoder is not None:
            if not isinstance(self.encoder, Encoder):
                raise TypeError(f"encoder must be a bgem3.Encoder; got {type(self.encoder).__name__}")
            if self.model_kwargs:
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
            self.encoder = self._load_encoder()
        self._check_encoder()
        return self

    def _load_encoder(self) -> Encoder:
        opts = dict(self.model_kwargs)
        if self.cache_folder is not None:
            opts.setdefault("cache_dir", self.cache_folder)
        return shared_encoder(self.model_name, **opts)

    def _check_encoder(self) -> None:
        self._text_encoder()  # validates templates / task now, not at the first call

    def _text_encoder(self) -> TextEncoder:
        return TextEncoder(
            self.encoder,
            query_instruction=self.query_instruction,
            document_instruction=self.document_instruction,
            batch_size=self.batch_size if self.batch_size is not None else self.encode_kwargs.get("batch_size"),
            max_length=self.encode_kwargs.get("max_length"),
            show_progress=self.show_progress,
        )


class _DenseEmbeddings(EncoderBacked, Embeddings):
    """The LangChain ``Embeddings`` methods over a :class:`~bgem3._shared.TextEncoder`."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (with the model's passage template: none for BGE-M3, ``passage: `` for E5)."""
        return self._text_encoder().dense_documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (with the model's query template: none for BGE-M3, ``query: `` for E5)."""
        return self._text_encoder().dense_queries([text])[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Like :meth:`embed_documents`, in a worker thread (the event loop keeps running)."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Like :meth:`embed_query`, in a worker thread (the event loop keeps running)."""
        return await run_in_executor(None, self.embed_query, text)


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

    def _load_encoder(self) -> Encoder:
        opts = dict(self.model_kwargs)
        if self.cache_folder is not None:
            opts.setdefault("cache_dir", self.cache_folder)
        if "profile" not in opts:
            profile = e5_encoder_profile(self.model_name, task=self.task, cache_dir=opts.get("cache_dir"),
                                         revision=opts.get("revision"), local_files_only=opts.get("local_files_only"))
            if profile is not None:
                opts["profile"] = profile
        return shared_encoder(self.model_name, **opts)

    def _text_encoder(self) -> TextEncoder:
        return TextEncoder(
            self.encoder,
            profile=e5_templates(self.encoder.profile, self.task),
            query_instruction=self.query_instruction,
            document_instruction=self.document_instruction,
            batch_size=self.batch_size if self.batch_size is not None else self.encode_kwargs.get("batch_size"),
            max_length=self.encode_kwargs.get("max_length"),
            show_progress=self.show_progress,
        )
