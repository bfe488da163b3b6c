"""LlamaIndex dense embeddings backed by :class:`bgem3.Encoder`: BGE-M3 and the E5 family.

Field names follow ``llama_index.embeddings.huggingface.HuggingFaceEmbedding``
(``model_name``, ``max_length``, ``query_instruction``, ``text_instruction``,
``cache_folder``, ``device``, ``embed_batch_size``). The loaded model lives in a private
attribute, so ``to_dict()`` / ``to_json()`` hold only the configuration and ``from_dict``
loads the model again.

Example::

    from llama_index.core import Settings, VectorStoreIndex, Document
    from llama_index_bgem3 import E5Embedding

    Settings.embed_model = E5Embedding(model_name="intfloat/multilingual-e5-large")
    index = VectorStoreIndex.from_documents([Document(text="...")])
"""

from __future__ import annotations

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.bridge.pydantic import BaseModel, ConfigDict, Field, PrivateAttr
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    from bgem3._shared import missing_framework

    raise missing_framework("llama_index_bgem3", "llama-index-core", "LlamaIndex", "llama-index") from _exc

import asyncio
from typing import Any, ClassVar, Optional

from bgem3 import Encoder
from bgem3._shared import (
    TextEncoder,
    check_encoder_options,
    dtype_name,
    e5_encoder_profile,
    e5_templates,
    shared_encoder,
)

__all__ = ["BGEM3Embedding", "E5Embedding"]

DEFAULT_BGEM3_MODEL = "BAAI/bge-m3"
DEFAULT_E5_MODEL = "intfloat/multilingual-e5-large"
DEFAULT_BATCH_SIZE = 32


class EncoderFields(BaseModel):
    """Configuration shared by the LlamaIndex facades (dense and sparse). Not used directly."""

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

    device: Optional[str] = Field(default=None, description="'cpu', 'cuda', 'cuda:1', 'mps'; None = auto.")
    dtype: Optional[str] = Field(default=None, description="'fp32', 'fp16', 'bf16'; None = fp16 on GPU, fp32 on CPU.")
    max_length: Optional[int] = Field(default=None, gt=0, description="Truncation length; None = the model's limit.")
    query_instruction: Optional[str] = Field(
        default=None, description="Text put before every query instead of the model's default ('' for none).")
    text_instruction: Optional[str] = Field(
        default=None, description="Text put before every document instead of the model's default ('' for none).")
    cache_folder: Optional[str] = Field(default=None, description="Hugging Face cache folder for hub downloads.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Other bgem3.Encoder options (local_files_only, revision, profile, ...).")

    _encoder: Any = PrivateAttr(default=None)

    @staticmethod
    def _prepare(cls_default_model: str, model_name: Optional[str], encoder: Optional[Encoder],
                 kwargs: dict) -> tuple[str, Optional[Encoder], dict]:
        """Fill ``model_name`` / device / dtype from ``encoder`` and check the loading options."""
        model_kwargs = kwargs.get("model_kwargs") or {}
        check_encoder_options(model_kwargs, "model_kwargs")
        for key in ("device", "dtype", "max_length", "cache_dir"):
            if key in model_kwargs:
                raise ValueError(f"pass {key} as its own argument, not inside model_kwargs"
                                 + (" (cache_folder=)" if key == "cache_dir" else ""))
        if encoder is None:
            return model_name or cls_default_model, None, kwargs
        if not isinstance(encoder, Encoder):
            raise TypeError(f"encoder must be a bgem3.Encoder; got {type(encoder).__name__}")
        if model_kwargs:
            raise ValueError("model_kwargs configure loading a model, but encoder= is an already loaded one; "
                             "pass one or the other")
        if model_name is not None and model_name not in (str(encoder.model_name), encoder.path):
            raise ValueError(f"model_name={model_name!r} does not match the encoder's model {encoder.model_name!r}; "
                             "drop model_name when passing encoder=")
        kwargs = dict(kwargs)
        kwargs.setdefault("device", str(encoder.device))
        kwargs.setdefault("dtype", dtype_name(encoder.dtype))
        return str(encoder.model_name), encoder, kwargs

    def _encoder_options(self) -> dict:
        opts = dict(self.model_kwargs)
        opts.update(device=self.device, dtype=self.dtype)
        if self.cache_folder is not None:
            opts["cache_dir"] = self.cache_folder
        return opts

    def _load_encoder(self) -> Encoder:
        return shared_encoder(self.model_name, **self._encoder_options())  # type: ignore[attr-defined]

    @property
    def encoder(self) -> Encoder:
        """The loaded :class:`bgem3.Encoder` (pass it as ``encoder=`` to share the weights)."""
        return self._encoder

    def _text_encoder(self) -> TextEncoder:
        return TextEncoder(
            self._encoder,
            query_instruction=self.query_instruction,
            document_instruction=self.text_instruction,
            batch_size=self.embed_batch_size,  # type: ignore[attr-defined]
            max_length=self.max_length,
        )


class _DenseEmbedding(EncoderFields, BaseEmbedding):
    """The ``BaseEmbedding`` methods over a :class:`~bgem3._shared.TextEncoder`."""

    _default_model: ClassVar[str] = DEFAULT_BGEM3_MODEL

    def __init__(self, model_name: Optional[str] = None, *, encoder: Optional[Encoder] = None, **kwargs: Any) -> None:
        model_name, encoder, kwargs = self._prepare(self._default_model, model_name, encoder, kwargs)
        kwargs.setdefault("embed_batch_size", DEFAULT_BATCH_SIZE)
        super().__init__(model_name=model_name, **kwargs)
        self._encoder = encoder if encoder is not None else self._load_encoder()
        self._text_encoder()  # validates templates / task now, not at the first call

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._text_encoder().dense_queries([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._text_encoder().dense_documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._text_encoder().dense_documents(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class BGEM3Embedding(_DenseEmbedding):
    """BGE-M3 dense embeddings for LlamaIndex (CLS vector, L2-normalised, 1024 numbers).

    Args:
        model_name: hub id or local folder (default ``"BAAI/bge-m3"``).
        device / dtype: ``"cuda"`` / ``"fp16"`` etc.; default GPU with fp16 when there is one.
        embed_batch_size: texts per encoder call (default 32).
        max_length: truncation length (default the model's, 8192 for BGE-M3).
        encoder: an already loaded :class:`bgem3.Encoder` (shares its weights).

    Example::

        >>> from llama_index.core import Settings                          # doctest: +SKIP
        >>> from llama_index_bgem3 import BGEM3Embedding                   # doctest: +SKIP
        >>> Settings.embed_model = BGEM3Embedding(model_name="BAAI/bge-m3")  # doctest: +SKIP
        >>> len(Settings.embed_model.get_query_embedding("What is BGE M3?"))  # doctest: +SKIP
        1024
    """

    @classmethod
    def class_name(cls) -> str:
        return "BGEM3Embedding"


class E5Embedding(_DenseEmbedding):
    """Multilingual E5 dense embeddings for LlamaIndex, with E5's prefixes applied for you.

    Documents are encoded as ``"passage: <text>"``, queries as ``"query: <text>"``;
    instruct models take ``"Instruct: <task>\\nQuery: <text>"`` for queries (set ``task``).

    Args:
        model_name: default ``"intfloat/multilingual-e5-large"``.
        query_instruction / text_instruction: replace ``"query: "`` / ``"passage: "``.
        task: the instruction for e5-instruct models.

    Example::

        >>> from llama_index_bgem3 import E5Embedding                                # doctest: +SKIP
        >>> emb = E5Embedding(model_name="intfloat/multilingual-e5-large")           # doctest: +SKIP
        >>> len(emb.get_text_embedding("Seoul is the capital of Korea."))           # doctest: +SKIP
        1024
    """

    _default_model: ClassVar[str] = DEFAULT_E5_MODEL
    task: Optional[str] = Field(default=None, description="The instruction for e5-instruct models.")

    @classmethod
    def class_name(cls) -> str:
        return "E5Embedding"

    def _load_encoder(self) -> Encoder:
        opts = self._encoder_options()
        if "profile" not in opts:
            profile = e5_encoder_profile(self.model_name, task=self.task, cache_dir=opts.get("cache_dir"),
                                         revision=opts.get("revision"), local_files_only=opts.get("local_files_only"))
            if profile is not None:
                opts["profile"] = profile
        return shared_encoder(self.model_name, **opts)

    def _text_encoder(self) -> TextEncoder:
        return TextEncoder(
            self._encoder,
            profile=e5_templates(self._encoder.profile, self.task),
            query_instruction=self.query_instruction,
            document_instruction=self.text_instruction,
            batch_size=self.embed_batch_size,
            max_length=self.max_length,
        )
