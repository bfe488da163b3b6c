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
    from bgem3._adapters.arguments import missing_framework

    raise missing_framework("llama_index_bgem3", "llama-index-core", "LlamaIndex", "llama-index") from _exc

from typing import Any, ClassVar, Optional

from bgem3 import Encoder
from bgem3._adapters.arguments import check_list_arg, unknown_options_error
from bgem3._adapters.instructions import e5_encoder_profile, e5_templates, framework_query_instruction
from bgem3._adapters.options import ST_MODEL_OPTIONS, prefetch_with_token, split_model_kwargs
from bgem3._adapters.text_encoder import TextEncoder, TextEncoderCache
from bgem3._loading import ENCODER_OPTIONS, shared_encoder
from bgem3.encoder import dtype_name

__all__ = ["BGEM3Embedding", "E5Embedding"]

DEFAULT_BGEM3_MODEL = "BAAI/bge-m3"
DEFAULT_E5_MODEL = "intfloat/multilingual-e5-large"
#: texts per call (HuggingFaceEmbedding's default is LlamaIndex's 10; vectors do not depend on it)
DEFAULT_BATCH_SIZE = 32

#: arguments of ``HuggingFaceEmbedding`` that bgem3 refuses, with the alternative.
_REFUSED = {
    "tokenizer_name": "bgem3 loads the model folder's own tokenizer; remove it (deprecated in HuggingFaceEmbedding too)",
    "tokenizer": "bgem3 loads the model folder's own tokenizer; remove it (deprecated in HuggingFaceEmbedding too)",
    "pooling": "the pooling comes from the model's profile; set model_kwargs={'profile': 'e5'} (mean) or 'bge' (CLS)",
    "parallel_process": "bgem3 encodes in one process; build one embedding per device (device='cuda:1') instead",
    "target_devices": "bgem3 encodes in one process; build one embedding per device (device='cuda:1') instead",
    "prompts": "use query_instruction= / text_instruction= (HuggingFaceEmbedding builds its prompts from those too)",
    "default_prompt_name": "use query_instruction= / text_instruction=",
}


class EncoderFields(BaseModel):
    """Configuration shared by the LlamaIndex facades (dense and sparse). Not used directly.

    Every argument of ``llama_index.embeddings.huggingface.HuggingFaceEmbedding`` is honoured or
    refused with the alternative (docs/llama_index.md, "Migrating from HuggingFaceEmbedding");
    an unknown keyword (a typo) raises ``TypeError`` naming it.
    """

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

    device: Optional[str] = Field(default=None, description="'cpu', 'cuda', 'cuda:1', 'mps'; None = auto.")
    dtype: Optional[str] = Field(default=None, description="'fp32', 'fp16', 'bf16'; None = fp16 on GPU, fp32 on CPU.")
    max_length: Optional[int] = Field(
        default=None, gt=0, description="Truncation length; reads the model's limit when not set.")
    query_instruction: Optional[str] = Field(
        default=None, description="Text put before every query instead of the model's default ('' for none).")
    text_instruction: Optional[str] = Field(
        default=None, description="Text put before every document instead of the model's default ('' for none).")
    normalize: bool = Field(default=True, description=(
        "L2-normalise dense vectors (False: the raw pooled vectors, unless the folder's sentence-transformers "
        "pipeline ends with a Normalize module, as in HuggingFaceEmbedding)."))
    truncate_dim: Optional[int] = Field(
        default=None, gt=0, description="Keep the first N dimensions (Matryoshka), re-normalised when normalize (as the anchor).")
    show_progress_bar: bool = Field(default=False, description="Show a progress bar while encoding.")
    cache_folder: Optional[str] = Field(default=None, description="Hugging Face cache folder for hub downloads.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Other bgem3.Encoder options (local_files_only, revision, profile, trust_remote_code, ...).")

    _encoder: Any = PrivateAttr(default=None)
    _token: Any = PrivateAttr(default=None)
    _text_encoders: Any = PrivateAttr(default_factory=TextEncoderCache)

    @classmethod
    def _prepare(cls, cls_default_model: str, model_name: Optional[str], encoder: Optional[Encoder],
                 kwargs: dict) -> tuple[str, Optional[Encoder], dict, Any]:
        """Map HuggingFaceEmbedding's arguments, check the loading options, fill model_name /
        device / dtype from ``encoder``. Returns ``(model_name, encoder, fields, token)``."""
        kwargs = dict(kwargs)
        if "model" in kwargs:  # HuggingFaceEmbedding's (deprecated) model=: a name or a loaded model
            model = kwargs.pop("model")
            if isinstance(model, Encoder):
                if encoder is not None and encoder is not model:
                    raise ValueError("model= and encoder= are two different encoders; pass one")
                encoder = model
            elif isinstance(model, str):
                if model_name is not None and model_name != model:
                    raise ValueError(f"model={model!r} and model_name={model_name!r} disagree; set one")
                model_name = model
            elif model != "deprecated":
                raise TypeError(f"model= must be a model name or a bgem3.Encoder; got {type(model).__name__} "
                                "(a SentenceTransformer cannot be reused: pass model_name= instead)")
        for name, why in _REFUSED.items():
            if name in kwargs:
                value = kwargs.pop(name)
                if name == "parallel_process" and value is False or name in ("tokenizer_name", "tokenizer", "pooling") \
                        and value == "deprecated" or name == "target_devices" and value is None:
                    continue
                raise ValueError(f"{name}={value!r} is not supported by {cls.__name__}: {why}")
        fields = set(cls.model_fields)
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in fields}
        unknown = [k for k in extra if k not in ENCODER_OPTIONS and k not in ST_MODEL_OPTIONS]
        if unknown:
            raise unknown_options_error(cls.__name__, unknown, fields | set(ENCODER_OPTIONS) | {"encoder", "task"})
        model_kwargs = dict(kwargs.get("model_kwargs") or {})
        for key, value in extra.items():  # HuggingFaceEmbedding passes **model_kwargs to SentenceTransformer
            if key in model_kwargs and model_kwargs[key] != value:
                raise ValueError(f"{key} is given twice (as {key}= and in model_kwargs) with different values")
            model_kwargs[key] = value
        for key in ("device", "max_length", "cache_dir"):
            if key in model_kwargs:
                raise ValueError(f"pass {key} as its own argument, not inside model_kwargs"
                                 + (" (cache_folder=)" if key == "cache_dir" else ""))
        enc_opts, extras = split_model_kwargs(model_kwargs, "model_kwargs")
        if "dtype" in enc_opts:  # torch_dtype / dtype spelled the sentence-transformers way
            if kwargs.get("dtype") is not None and kwargs["dtype"] != enc_opts["dtype"]:
                raise ValueError(f"dtype={kwargs['dtype']!r} and model_kwargs' dtype {enc_opts['dtype']!r} disagree")
            kwargs["dtype"] = enc_opts.pop("dtype")
        if "truncate_dim" in extras:
            if kwargs.get("truncate_dim") is not None and kwargs["truncate_dim"] != extras["truncate_dim"]:
                raise ValueError("truncate_dim is given twice with different values")
            kwargs["truncate_dim"] = extras["truncate_dim"]
        token = extras.get("token")
        kwargs["model_kwargs"] = enc_opts  # what to_dict() keeps: Encoder options only (never the token)
        if encoder is None:
            return model_name or cls_default_model, None, kwargs, token
        if not isinstance(encoder, Encoder):
            raise TypeError(f"encoder must be a bgem3.Encoder; got {type(encoder).__name__}")
        if enc_opts or token is not None:
            raise ValueError("model_kwargs configure loading a model, but encoder= is an already loaded one; "
                             "pass one or the other")
        if model_name is not None and model_name not in (str(encoder.model_name), encoder.path):
            raise ValueError(f"model_name={model_name!r} does not match the encoder's model {encoder.model_name!r}; "
                             "drop model_name when passing encoder=")
        kwargs.setdefault("device", str(encoder.device))
        kwargs.setdefault("dtype", dtype_name(encoder.dtype))
        return str(encoder.model_name), encoder, kwargs, None

    def _encoder_options(self) -> dict:
        opts = dict(self.model_kwargs)
        opts.update(device=self.device, dtype=self.dtype)
        if self.cache_folder is not None:
            opts["cache_dir"] = self.cache_folder
        return prefetch_with_token(self.model_name, self._token, opts)  # type: ignore[attr-defined]

    def _load_encoder(self) -> Encoder:
        return shared_encoder(self.model_name, **self._encoder_options())  # type: ignore[attr-defined]

    def _finish_init(self, encoder: Optional[Encoder], token: Any) -> None:
        self._token = token
        self._encoder = encoder if encoder is not None else self._load_encoder()
        if self.max_length is None:  # as HuggingFaceEmbedding: reads the model's limit
            self.max_length = int(self._encoder.max_length)

    @property
    def encoder(self) -> Encoder:
        """The loaded :class:`bgem3.Encoder` (pass it as ``encoder=`` to share the weights)."""
        return self._encoder

    def _profile(self) -> Any:
        return self._encoder.profile

    def _text_encoder(self, query: bool = False) -> TextEncoder:
        profile = self._profile()
        qi = framework_query_instruction(profile, self.query_instruction) if query else None
        return self._text_encoders.get(
            "queries" if query else "documents",
            self._encoder,
            profile=profile,
            query_instruction=qi,
            document_instruction=self.text_instruction,
            batch_size=self.embed_batch_size,  # type: ignore[attr-defined]
            max_length=self.max_length,
            show_progress=self.show_progress_bar,
            normalize=self.normalize,
            truncate_dim=self.truncate_dim,
        )

    # a lone string where a list belongs is refused (package-wide policy), never split into characters
    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list:
        """As ``BaseEmbedding.get_text_embedding_batch``; a lone string raises ``TypeError``."""
        return super().get_text_embedding_batch(check_list_arg(texts, "texts"), show_progress, **kwargs)  # type: ignore[misc]

    async def aget_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list:
        """As ``BaseEmbedding.aget_text_embedding_batch``; a lone string raises ``TypeError``."""
        return await super().aget_text_embedding_batch(  # type: ignore[misc]
            check_list_arg(texts, "texts"), show_progress, **kwargs)


class _DenseEmbedding(EncoderFields, BaseEmbedding):
    """The ``BaseEmbedding`` methods over a :class:`~bgem3._adapters.text_encoder.TextEncoder`."""

    _default_model: ClassVar[str] = DEFAULT_BGEM3_MODEL

    def __init__(self, model_name: Optional[str] = None, *, encoder: Optional[Encoder] = None, **kwargs: Any) -> None:
        model_name, encoder, kwargs, token = self._prepare(self._default_model, model_name, encoder, kwargs)
        kwargs.setdefault("embed_batch_size", DEFAULT_BATCH_SIZE)
        super().__init__(model_name=model_name, **kwargs)
        self._finish_init(encoder, token)
        self._text_encoder()  # validates templates / task now, not at the first call
        self._text_encoder(query=True)

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._text_encoder(query=True).dense_queries([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._text_encoder().dense_documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._text_encoder().dense_documents(texts).tolist()

    # awaitable: a bgem3.RemoteEncoder sends its HTTP requests on this event loop (aencode_*),
    # a local encoder runs in a worker thread
    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._text_encoder(query=True).adense_queries([query]))[0].tolist()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._text_encoder().adense_documents([text]))[0].tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return (await self._text_encoder().adense_documents(texts)).tolist()


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

    def _profile(self) -> Any:
        return e5_templates(self._encoder.profile, self.task)
