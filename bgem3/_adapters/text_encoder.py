""":class:`TextEncoder`: a view of one :class:`~bgem3.Encoder` with its own query / document prefixes (so two
facades with different instructions still share one copy of the weights), whose methods return exactly what
the frameworks want: dense rows, sparse dicts, or Qdrant's ``(indices, values)`` lists.

Example::

    >>> import tempfile
    >>> from bgem3.testing import make_m3_checkpoint
    >>> from bgem3._loading import shared_encoder
    >>> from bgem3._adapters.text_encoder import TextEncoder
    >>> enc = shared_encoder(make_m3_checkpoint(tempfile.mkdtemp()), device="cpu")
    >>> te = TextEncoder(enc, query_instruction="query: ")
    >>> te.dense_queries(["hello"]).shape
    (1, 32)
    >>> idx, val = te.sparse_lists_documents(["hello world"])
    >>> len(idx[0]) == len(val[0]) > 0
    True
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np

from .._checks import positive_int
from ..encoder import Encoder
from ..profiles import Profile, _escape
from .arguments import check_list_arg

logger = logging.getLogger(__name__)



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
        self._views: dict = {}

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
        view = self._view(dense)
        kwargs = dict(dense=dense, sparse=sparse,
                      batch_size=batch_size if batch_size is not None else self.batch_size,
                      max_length=self.max_length,
                      show_progress=show_progress if show_progress is not None else self.show_progress)
        if query:
            kwargs["task"] = self.task
        method = ("aencode_" if run_async else "encode_") + ("queries" if query else "documents")
        return getattr(view, method)(texts, **kwargs)

    def _view(self, dense: bool) -> Encoder:
        # the encoder with this facade's templates (and normalisation, for dense vectors), made once per
        # TextEncoder; made again only if the encoder's own profile was changed since
        hit = self._views.get(dense)
        if hit is not None and hit[0] is self.encoder.profile:
            return hit[1]
        view = encoder_view(self.encoder, self.normalize if dense else None, self.profile)
        self._views[dense] = (self.encoder.profile, view)
        return view

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


class TextEncoderCache:
    """The :class:`TextEncoder` s of one adapter object, built once instead of on every call.

    ``get(slot, encoder, **options)`` returns the one built for ``slot`` (``"documents"`` / ``"queries"``) while
    the encoder is the same object and the options are equal (a facade whose fields were changed gets a new
    one, as before). A pickle or deep copy of the adapter starts with an empty cache (rebuilt on first use).
    """

    def __init__(self) -> None:
        self._slots: dict = {}

    def __reduce__(self) -> tuple:
        return (TextEncoderCache, ())

    def __deepcopy__(self, memo: dict) -> "TextEncoderCache":
        return TextEncoderCache()

    def get(self, slot: str, encoder: Encoder, **options: Any) -> TextEncoder:
        hit = self._slots.get(slot)
        if hit is not None and hit[0] is encoder and hit[1] == options:
            return hit[2]
        te = TextEncoder(encoder, **options)
        self._slots[slot] = (encoder, options, te)
        return te
