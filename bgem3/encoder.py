"""THE one encoder: loading, device + dtype policy, length-sorted token-budget batching, heads.

Reference semantics are FlagEmbedding's ``BGEM3FlagModel`` in fp32:

* dense: CLS hidden state (M3, BGE) or the attention-masked mean (E5, MiniLM), L2-normalised;
* sparse: ``relu(sparse_linear(h))`` per token, max over repeats of a token id, special tokens
  (cls, eos, pad, unk) dropped, weights ``> 0`` kept -> ``dict[int, float]``;
* ColBERT: ``normalize(colbert_linear(h[:, 1:]))`` over the real tokens -> ``[T-1, H]`` (CLS
  dropped, ``</s>`` kept).

Example (with a local BGE-M3 folder, or ``"BAAI/bge-m3"`` when it is in the HF cache)::

    from bgem3 import Encoder

    enc = Encoder("BAAI/bge-m3")           # cuda > mps > cpu; fp16 on GPUs, fp32 on CPU
    out = enc.encode(["BGE M3 is an embedding model.", "BM25 is a bag-of-words model."],
                     dense=True, sparse=True, colbert=True)
    out.dense.shape        # (2, 1024), float32, L2-normalised
    out.sparse[0]          # {token_id: weight, ...}
    out.colbert[0].shape   # (T_0 - 1, 1024)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ._batching import plan_batches as _plan_batches, progress_bar, run_batches
from ._checks import check_examples as _check_examples, check_texts as _check_texts
from ._checks import positive_int as _check_positive_int
from ._dtypes import DTYPE_NAMES, dtype_name
from .families import check_runnable, family_for_name, reranker_for_name
from .profiles import ICL_EXAMPLE_TEMPLATE, ICL_SUFFIX, M3_HEAD_FILES, Profile, detect_profile, get_profile
from ._hf import ModelLoadError, quiet_expected_load_report, transformers_attr
from . import _unpadded
from ._attention import packed_layout
from ._cpu_linear import (PackedCopy, linear, onednn_active, pack_fused, pack_linears, prepack_active, trim_heap,
                          unpack_linears)
from .st_pipeline import STPipeline, load_dense_layers, read_st_pipeline

logger = logging.getLogger(__name__)

#: padded tokens per forward pass on the torch backend on an accelerator when the user gives no
#: max_tokens_per_batch (the graph backends take their runtime's GraphBackend.preferred_tokens_per_batch)
DEFAULT_MAX_TOKENS_PER_BATCH = 16384
#: the same on the CPU: smaller passes keep the FFN's activations and the attention's working set in cache
#: (measured 2026-12-07, exact path, 2 threads, Zen 4: 7-9 % faster bulk on the 6-layer model, 15 % on the
#: BGE-M3 shape, than 16384; docs/benchmarks_encode.md)
CPU_MAX_TOKENS_PER_BATCH = 4096


def default_tokens_per_batch(device: Union[str, torch.device]) -> int:
    """Padded tokens per forward pass on the torch path when none is given: :data:`CPU_MAX_TOKENS_PER_BATCH`
    on the CPU, :data:`DEFAULT_MAX_TOKENS_PER_BATCH` on an accelerator (the Encoder, the Reranker and
    ``bgem3 serve``'s batcher take it)."""
    return CPU_MAX_TOKENS_PER_BATCH if torch.device(device).type == "cpu" else DEFAULT_MAX_TOKENS_PER_BATCH


DTypeLike = Union[str, torch.dtype, None]

#: ``torch.dtype`` of each short name; :data:`_DTYPES` maps every accepted name (bgem3._dtypes' one table) to it.
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                 "int8": torch.qint8}  # CPU: int8 linear layers, the rest fp32 (bgem3.quant)
_DTYPES = {alias: _TORCH_DTYPES[short] for alias, short in DTYPE_NAMES.items()}

#: The short name of each dtype: the first name :data:`_DTYPES` gives it ("fp32", "fp16", "bf16", "int8").
_DTYPE_SHORT: dict = {}
for _alias, _dt in _DTYPES.items():
    _DTYPE_SHORT.setdefault(_dt, _alias)

#: Files a hub download needs (weights, configs, tokenizer, M3 heads, ST configs).
_HUB_PATTERNS = [
    "*.json", "*.safetensors", "*.txt", "*.model", "sentencepiece.bpe.model",
    "colbert_linear.pt", "sparse_linear.pt", "1_Pooling/*", "2_Normalize/*", "*_Dense/*", "README.md",
]

#: Files one of which a folder needs for its tokenizer (else it is refused: no silent <unk> tokenizer).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                   "sentencepiece.model", "vocab.txt", "vocab.json", "qwen.tiktoken", "tokenizer.tiktoken")

#: Default truncation length of the decoder-only families (FlagLLMModel's / FlagICLModel's
#: query_max_length and passage_max_length), unless ``max_length`` says otherwise.
DECODER_DEFAULT_MAX_LENGTH = 512


@dataclass
class EncodeOutput:
    """What :meth:`Encoder.encode` returns. Fields not requested are ``None``.

    Attributes:
        dense: ``float32 [N, H]``, L2-normalised (unless the profile says otherwise).
        sparse: ``list[dict[int, float]]`` token id -> weight.
        colbert: ``list[float32 [T_i, H]]``, L2-normalised token vectors.
        token_counts: ``int64 [N]``, tokens each input had after truncation (specials included).
    """

    dense: Optional[np.ndarray] = None
    sparse: Optional[list] = None
    colbert: Optional[list] = None
    token_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.token_counts)


# --------------------------------------------------------------------------- policies

def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """Explicit device wins (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``); else cuda > mps > cpu."""
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device {device!r} is not a valid torch device ({exc}); use 'cpu', 'cuda', 'cuda:1' or 'mps'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use device='cpu'")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r} was asked for but MPS is not available here; use device='cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: DTypeLike, device: torch.device) -> torch.dtype:
    """fp16 on CUDA/MPS by default, bf16 when asked, fp32 on CPU; never fp16 on CPU."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "")
        if key not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; use 'fp32', 'fp16', 'bf16' or 'int8' (CPU) (or None for auto)")
        dt = _DTYPES[key]
    elif isinstance(dtype, torch.dtype):
        dt = dtype
    else:
        raise TypeError(f"dtype must be a string, a torch.dtype or None; got {type(dtype).__name__}")
    if dt == torch.qint8 and device.type != "cpu":
        raise ValueError(f"dtype 'int8' runs on CPU only (device is {device}); use dtype='fp16' on GPUs")
    if dt not in (torch.float32, torch.float16, torch.bfloat16, torch.qint8):
        raise ValueError(f"dtype {dtype!r} is not supported; use fp32, fp16, bf16 or int8 (CPU)")
    if dt == torch.float16 and device.type == "cpu":
        raise ValueError(
            "dtype fp16 on CPU is not supported (it rounds the weights and is slow there); "
            "use dtype='fp32' (exact, the CPU default) or dtype='bf16'"
        )
    return dt


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else is meant as a local path."""
    return (
        name.startswith(("/", ".", "~", "\\"))
        or "\\" in name
        or name.count("/") > 1
        or (len(name) > 1 and name[1] == ":")
    )


def resolve_model_path(model_name_or_path: Union[str, os.PathLike], *, cache_dir: Optional[str] = None,
                       revision: Optional[str] = None, local_files_only: Optional[bool] = None,
                       extra_patterns: Sequence[str] = ()) -> str:
    """A local folder as is; a hub id from the HF cache, else downloaded (unless offline).

    Offline-first: a cached snapshot is used without touching the network. With
    ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``), or with no network, an uncached hub id
    fails at once with a :class:`ModelLoadError` saying how to pass a local folder instead.
    """
    if not isinstance(model_name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"model_name_or_path must be a hub id like 'BAAI/bge-m3' or a local folder path; "
            f"got {type(model_name_or_path).__name__}"
        )
    name = os.fspath(model_name_or_path)
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    if os.path.exists(expanded):
        raise ModelLoadError(f"model path {name!r} is a file, not a folder; pass the folder that holds config.json")
    if not name or _looks_like_path(name):
        raise ModelLoadError(
            f"model folder {name!r} does not exist; pass an existing local folder "
            "(with config.json and the weights) or a hub id like 'BAAI/bge-m3'"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, cache_dir=cache_dir, revision=revision,
                                 allow_patterns=_HUB_PATTERNS + list(extra_patterns), local_files_only=True)
    except Exception:  # not cached (or cache incomplete): fall through
        pass
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") \
        or os.environ.get("TRANSFORMERS_OFFLINE", "0").lower() in ("1", "true", "yes")
    how = (
        f"Download it once where there is network (e.g. `hf download {name} "
        f"--local-dir ./{name.split('/')[-1]}`) and pass that local folder instead."
    )
    if offline:
        raise ModelLoadError(f"model {name!r} is not in the local Hugging Face cache and offline mode is on. {how}")
    try:
        return snapshot_download(name, cache_dir=cache_dir, revision=revision,
                                 allow_patterns=_HUB_PATTERNS + list(extra_patterns))
    except Exception as exc:
        raise ModelLoadError(
            f"model {name!r} is not in the local Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"If there is no network here: {how}"
        ) from None


# --------------------------------------------------------------------------- the encoder

class Encoder:
    """Load a BGE-M3 / E5 / BGE / sentence-transformers model once and encode texts with it.

    Args:
        model_name_or_path: a hub id (``"BAAI/bge-m3"``) or a local folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; default cuda > mps > cpu.
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"``; default fp16 on CUDA/MPS, fp32 on CPU.
            fp16 on CPU is refused.
        profile: a profile name (``"m3"``, ``"e5"``, ``"e5-instruct"``, ``"bge"``, ``"bge-zh"``,
            ``"llm-embedder"``, ``"llm-instruct"``, ``"qwen3-embedding"``, ``"bge-llm"``,
            ``"bge-en-icl"``), a pooling (``"cls"``, ``"mean"``, ``"lasttoken"``), a known model name,
            or a :class:`~bgem3.profiles.Profile`; default detected from the folder (its
            sentence-transformers pipeline wins) and its name (docs/encoder.md has the table).
        query_template / passage_template: override the profile's templates (they must
            contain ``{text}``); ``None`` or ``""`` turns a template off.
        task: the instruction for e5-instruct query templates.
        max_length: default truncation length; default the model's own limit (8192 for
            BGE-M3), a sentence-transformers folder's ``max_seq_length``, or 512 for decoder-only
            models (FlagEmbedding's default). Longer inputs are truncated.
        batch_size: most texts in one forward pass.
        max_tokens_per_batch: most padded tokens in one forward pass (length x count); keeps
            memory flat when long and short texts are mixed. Default 4096 on the CPU (smaller
            batches run faster there; they also feed OpenVINO's streams) and 16384 on a GPU.
        local_files_only / cache_dir / revision: hub loading options.
        examples: bge-en-icl few-shot examples, dicts with ``query``, ``response`` (and
            optionally ``instruct``); also per call in :meth:`encode_queries`.
        backend: what runs the transformer (:mod:`bgem3.backends`): ``"torch"`` (exact, the
            default; ``None`` = torch, except ``dtype="bf16"`` on a CPU with AVX512_BF16/AMX with
            OpenVINO installed, which runs OpenVINO bf16, measured faster and closer to fp32;
            one log line says which), ``"onnx"`` (ONNX Runtime, ``pip install 'bgem3[onnx]'``) or ``"openvino"``
            (``pip install 'bgem3[openvino]'``), as sentence-transformers takes it. The graph
            backends run on CPU, use the folder's ``onnx/model.onnx`` / ``openvino/openvino_model.xml``
            when it has one, else export the model once into a cache (``bgem3 export``). Templates,
            pooling and the M3 heads are the same code for every backend.
        model_kwargs: the graph backends' options, sentence-transformers' names: ``file_name``
            (e.g. ``"onnx/model_qint8.onnx"``), ``subfolder``, ``export`` (True: export even if the
            folder has a graph; False: never export), ``provider`` (ONNX Runtime), ``ov_config``
            (OpenVINO properties).

    Example::

        >>> enc = Encoder("BAAI/bge-m3", device="cpu")                   # doctest: +SKIP
        >>> q = enc.encode_queries(["What is BGE M3?"], sparse=True)     # doctest: +SKIP
        >>> q.dense.shape, type(q.sparse[0])                             # doctest: +SKIP
        ((1, 1024), <class 'dict'>)
    """

    def __init__(
        self,
        model_name_or_path: Union[str, os.PathLike],
        device: Optional[Union[str, torch.device]] = None,
        dtype: DTypeLike = None,
        *,
        profile: Optional[Union[str, Profile]] = None,
        query_template: Optional[str] = ...,  # type: ignore[assignment]
        passage_template: Optional[str] = ...,  # type: ignore[assignment]
        task: Optional[str] = ...,  # type: ignore[assignment]
        max_length: Optional[int] = None,
        batch_size: int = 32,
        max_tokens_per_batch: Optional[int] = None,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        revision: Optional[str] = None,
        trust_remote_code: bool = False,
        examples: Optional[Sequence[dict]] = None,
        backend: Optional[str] = None,
        model_kwargs: Optional[dict] = None,
    ) -> None:
        _check_positive_int(batch_size, "batch_size")
        from .backends import check_backend, check_backend_options

        #: "torch", "onnx" or "openvino": what runs the transformer (bgem3.backends)
        self.backend_name = check_backend(backend)
        self._backend_options = check_backend_options(self.backend_name, model_kwargs)
        if self.backend_name != "torch" and device is None:
            device = "cpu"  # the graph backends run on CPU
        if max_tokens_per_batch is not None:
            _check_positive_int(max_tokens_per_batch, "max_tokens_per_batch")
        self.model_name = os.fspath(model_name_or_path) if isinstance(model_name_or_path, (str, os.PathLike)) else model_name_or_path
        if isinstance(self.model_name, str) and reranker_for_name(self.model_name) is not None:  # before any download
            raise ModelLoadError(f"{self.model_name!r} is a reranker (it scores query-passage pairs, it does not embed "
                                 "texts); load it with bgem3.Reranker(...), not as an embedding model")
        # a hub repo's own graph comes along for the graph backends (BGE-M3's onnx/model.onnx + .onnx_data)
        graph_patterns = {"onnx": ["onnx/*"], "openvino": ["openvino/*"]}.get(self.backend_name, [])
        self.path = resolve_model_path(model_name_or_path, cache_dir=cache_dir, revision=revision,
                                       local_files_only=local_files_only, extra_patterns=graph_patterns)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        #: why the backend was chosen for this dtype when none was asked for (None: asked, or exact torch)
        self.backend_reason: Optional[str] = None
        if backend is None and self.device.type == "cpu" and self.dtype in (torch.bfloat16, torch.qint8) \
                and not self._backend_options:
            from .quant.engine import fast_path

            choice, self.backend_reason = fast_path("bf16" if self.dtype == torch.bfloat16 else "int8",
                                                    native_bf16=cpu_has_fast_bf16())
            self.backend_name = choice
        if self.backend_name != "torch" and self.device.type != "cpu":
            raise ValueError(f"backend={self.backend_name!r} runs on CPU here (device={device!r}); use backend='torch' "
                             "on GPUs")
        if self.backend_name == "onnx" and self.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype={dtype!r} with backend='onnx': ONNX Runtime runs fp32 here (its dynamic int8 "
                             "graph fails the fidelity gates); for int8 use backend='openvino' (NNCF static int8) or "
                             "backend='torch', or name the dynamic graph with model_kwargs={'file_name': "
                             "'onnx/model_qint8.onnx'} (made by `bgem3 export --backend onnx --quantize int8`)")
        if self.backend_name == "openvino" and self.dtype not in (torch.float32, torch.bfloat16, torch.qint8):
            raise ValueError(f"dtype={dtype!r} with backend='openvino': OpenVINO runs fp32, bf16 or int8 here")
        if self.backend_name == "onnx" and self.dtype == torch.bfloat16:
            raise ValueError("dtype='bf16' with backend='onnx' is not supported (ONNX Runtime runs the graph's own "
                             "precision); use backend='openvino' with dtype='bf16', or backend='torch'")
        try:
            check_runnable(self.path, self.model_name if isinstance(self.model_name, str) else None, self.backend_name)
            #: the sentence-transformers pipeline the folder declares (None: not an ST folder)
            self.st_pipeline: Optional[STPipeline] = read_st_pipeline(self.path)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        #: the folder holding the transformer (a sentence-transformers Transformer module may sit in a subfolder)
        self.model_dir = os.path.join(self.path, self.st_pipeline.transformer_path) \
            if self.st_pipeline is not None and self.st_pipeline.transformer_path else self.path
        if profile is None:
            self.profile = detect_profile(self.path, name_hint=self.model_name)
        else:
            self.profile = get_profile(profile)
        self.profile = self.profile.with_templates(query_template, passage_template, task)
        if examples is not None:
            if not self.profile.icl:
                raise ValueError(f"examples= is for in-context-learning profiles (bge-en-icl); the {self.profile.name!r} "
                                 "profile takes none. Pass profile='bge-en-icl' for a bge-en-icl model.")
            from dataclasses import replace

            self.profile = replace(self.profile, examples=_check_examples(examples))
        self.batch_size = batch_size
        #: the budget the user gave (None: the backend's default, resolved once the backend is known)
        self._max_tokens_given = max_tokens_per_batch

        self._tokenizer_lock = threading.Lock()
        self.tokenizer = self._load_tokenizer(trust_remote_code)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and not cpu_has_fast_bf16():
            logger.warning("dtype='bf16' on a CPU without avx512_bf16/AMX runs emulated and is usually slower "
                           "than fp32; use dtype='fp32' (the exact default) on this machine")
        self.graph = None
        if self.backend_reason is not None and self.backend_name != "torch":
            try:  # chosen for speed, not asked for: fall back to torch when this model has no such graph
                self.graph = self._load_graph(trust_remote_code)
            except (ModelLoadError, ImportError) as exc:
                logger.warning("dtype=%r: %s could not run this model (%s); using PyTorch instead",
                               _dtype_label(self.dtype), self.backend_name, exc)
                self.backend_name, self.backend_reason = "torch", f"{self.backend_reason}, but it failed here: {exc}"
        if self.backend_reason is not None:
            logger.info("dtype=%r runs on %s: %s (pass backend= to choose)", _dtype_label(self.dtype),
                        {"torch": "PyTorch", "openvino": "OpenVINO", "onnx": "ONNX Runtime"}[self.backend_name],
                        self.backend_reason)
        self.model = self._load_model(trust_remote_code)
        self.quantization: Optional[dict] = None  # the int8 report (bgem3.quant) when dtype='int8'
        #: the transformer's hidden size (what the M3 heads and the first Dense module take)
        self.model_hidden_size = int(self.model.config.hidden_size)
        #: decoder-only architecture (Mistral, Qwen2/3, Gemma2, ...): last-token families, 512 default length
        self.is_decoder = _is_decoder_only(self.model.config)
        self._dense_layers = []
        if self.st_pipeline is not None and self.st_pipeline.dense:
            try:
                self._dense_layers = [layer.to(self.device) for layer in load_dense_layers(self.path, self.st_pipeline)]
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from None
            if self._dense_layers[0].spec.in_features != self.model_hidden_size:
                raise ModelLoadError(f"the first Dense module of {self.path!r} takes {self._dense_layers[0].spec.in_features} "
                                     f"features but the model's hidden size is {self.model_hidden_size}")
        #: dense output dimension (the last Dense module's out_features, else the hidden size)
        self.dimension = self._dense_layers[-1].spec.out_features if self._dense_layers else self.model_hidden_size
        #: the dense vectors' size, as the stores read it (== ``dimension``; ``model_hidden_size`` is the transformer's)
        self.hidden_size = self.dimension
        self.colbert_linear: Optional[torch.nn.Linear] = None
        self.sparse_linear: Optional[torch.nn.Linear] = None
        self._missing_heads = [f for f in M3_HEAD_FILES if not os.path.isfile(os.path.join(self.path, f))]
        if not self._missing_heads:
            self.colbert_linear, self.sparse_linear = self._load_heads()

        self.model_max_length = self._model_max_length()
        try:
            self._n_special = int(self.tokenizer.num_special_tokens_to_add(pair=False))
        except Exception:  # pragma: no cover - every HF tokenizer has it
            self._n_special = 0
        default = self.model_max_length
        if self.profile.default_max_length or self.is_decoder:
            default = min(default, self.profile.default_max_length or DECODER_DEFAULT_MAX_LENGTH)
        elif self.st_pipeline is not None and self.st_pipeline.max_seq_length:
            default = min(default, self.st_pipeline.max_seq_length)
        if max_length is not None:
            self._check_max_length(max_length)
        self.max_length = min(max_length, self.model_max_length) if max_length else default
        self._special_ids = torch.tensor(sorted(self._unused_token_ids()), dtype=torch.long)
        #: "roberta" / "bert" when the unpadded path applies to this architecture, else None.
        self._packed: Optional[str] = _unpadded.packed_kind(self.model)
        #: pad on the tokenizer's side, as the reference's tokenizer.pad does (left for most decoders)
        self._pad_left = getattr(self.tokenizer, "padding_side", "right") == "left"
        pad = self.tokenizer.pad_token_id
        if pad is None:  # no pad token (many decoders): any id works, padded positions are masked out
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)
        self.vocab_size = max(len(self.tokenizer), int(getattr(self.model.config, "vocab_size", 0) or 0))
        if self.backend_name != "torch":  #: the graph runtime of backend='onnx' / 'openvino' (None for torch)
            self._packed = None
            if self.graph is None:
                self.graph = self._load_graph(trust_remote_code)
        self.max_tokens_per_batch = self._max_tokens_given or (
            self.graph.preferred_tokens_per_batch if self.graph is not None
            else default_tokens_per_batch(self.device))
        if self.dtype == torch.qint8 and self.backend_name == "openvino":  # the NNCF graph: how it was made
            from .quant.openvino_int8 import graph_report

            self.quantization = graph_report(self.graph.path)
        if self.dtype == torch.qint8 and self.backend_name == "torch":  # int8: loaded in fp32, now quantised
            from .quant import quantize_encoder

            quantize_encoder(self)
        #: bytes of fp32 linear weights held pre-packed for oneDNN (one copy; 0 when not packed)
        self.prepacked_bytes = 0
        #: the M3 heads (ColBERT + sparse) as one pre-packed product on the unpadded path (a copy, rebuilt on change)
        self._heads_copy = PackedCopy()
        if self._packed and self.backend_name == "torch" and self.device.type == "cpu" \
                and self.dtype == torch.float32 and prepack_active():
            for layer in self._model.encoder.layer:  # query/key/value as one product, then the other four
                sa = layer.attention.self
                self.prepacked_bytes += pack_fused(sa.query, sa.key, sa.value) + pack_linears(layer)
                trim_heap()  # the freed temporary [3H, H] concatenation: out of RSS now, not at exit

    @property
    def model(self) -> torch.nn.Module:
        """The transformer (a Hugging Face model). Reading it turns pre-packed linear layers back into plain
        ``nn.Linear`` ones first (the caller may read, change, move or quantise the weights): outputs stay the
        same, short texts get slower (docs/encoder.md). :attr:`config` reads the config without that."""
        if self.__dict__.get("prepacked_bytes"):
            unpack_linears(self._model)
            self.prepacked_bytes = 0
        return self._model

    @model.setter
    def model(self, value: torch.nn.Module) -> None:
        self._model = value
        self.prepacked_bytes = 0

    @property
    def config(self):
        """The transformer's Hugging Face config (reading it leaves pre-packed layers as they are)."""
        return self._model.config

    # ------------------------------------------------------------------ loading
    def _load_tokenizer(self, trust_remote_code: bool):
        AutoTokenizer = transformers_attr("AutoTokenizer")

        try:
            present = set(os.listdir(self.model_dir))
        except OSError:
            present = set()
        if not (present & set(TOKENIZER_FILES)) and not any(n.endswith(".tiktoken") for n in present):
            raise ModelLoadError(
                f"{self.model_dir!r} has no tokenizer file (one of {', '.join(TOKENIZER_FILES)}); loading it would "
                "fall back to a tokenizer that maps every word to <unk>. Copy the model's tokenizer files "
                "(tokenizer.json, or its vocabulary files) into the folder."
            )
        try:
            return AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load a tokenizer from {self.path!r} ({type(exc).__name__}: {exc}). "
                "The folder needs tokenizer.json (or the tokenizer's vocabulary files) next to config.json."
            ) from None

    def _load_model(self, trust_remote_code: bool) -> torch.nn.Module:
        AutoModel = transformers_attr("AutoModel")

        if not os.path.isfile(os.path.join(self.model_dir, "config.json")):
            raise ModelLoadError(
                f"{self.model_dir!r} is not a model folder: config.json is missing. Pass the folder that "
                "holds config.json and the weights (model.safetensors or pytorch_model.bin)."
            )
        if self.backend_name != "torch":
            return self._load_model_skeleton(trust_remote_code)
        load_dtype = torch.float32 if self.dtype == torch.qint8 else self.dtype
        try:
            with quiet_expected_load_report():  # the pooler left out on purpose is not news
                model = AutoModel.from_pretrained(self.model_dir, dtype=load_dtype, trust_remote_code=trust_remote_code,
                                                  add_pooling_layer=False)
        except TypeError:
            try:
                with quiet_expected_load_report():
                    model = AutoModel.from_pretrained(self.model_dir, dtype=load_dtype,
                                                      trust_remote_code=trust_remote_code)
            except Exception as exc:
                raise ModelLoadError(
                    f"cannot load model weights from {self.model_dir!r} ({type(exc).__name__}: {exc}). "
                    "Check that the folder holds a complete checkpoint (config.json + model.safetensors)."
                ) from None
        except Exception as exc:
            fam = family_for_name(self.model_name if isinstance(self.model_name, str) else None) or family_for_name(self.path)
            hint = (f" {fam.hub_id} ships its own modelling code: pass trust_remote_code=True if you trust it."
                    if fam is not None and fam.trust_remote_code and not trust_remote_code else "")
            raise ModelLoadError(
                f"cannot load model weights from {self.path!r} ({type(exc).__name__}: {exc}). "
                "Check that the folder holds a complete checkpoint (config.json + model.safetensors)." + hint
            ) from None
        model.to(self.device)
        model.eval()
        model.requires_grad_(False)
        return model

    def _load_model_skeleton(self, trust_remote_code: bool) -> torch.nn.Module:
        """backend='onnx' / 'openvino': the model's config and module layout on the meta device, no
        weights (the graph holds them; an export loads its own fp32 copy). Saves the torch copy's memory."""
        from transformers import AutoConfig, AutoModel

        try:
            config = AutoConfig.from_pretrained(self.model_dir, trust_remote_code=trust_remote_code)
            with torch.device("meta"):
                model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(f"cannot read the model config of {self.model_dir!r} ({type(exc).__name__}: {exc}); "
                                 "the folder needs config.json next to the weights") from None
        return model.eval().requires_grad_(False)

    def _load_graph(self, trust_remote_code: bool):
        """The ONNX Runtime / OpenVINO graph: the folder's own (or ``file_name``), else the cached export."""
        from .backends import find_graph_file, load_graph_backend

        opts = self._backend_options
        name = self.backend_name
        try:
            from .backends.export import export_dir_for, export_graph

            out_dir = export_dir_for(self.model_dir)
            int8 = self.dtype == torch.qint8  # OpenVINO's NNCF int8 graph: bgem3's own export unless file_name names one
            graph_file = None if opts.get("export") or (int8 and not opts.get("file_name")) \
                else find_graph_file(self.model_dir, name, opts, also=[out_dir])
            if graph_file is None and int8:
                from .backends.export import QUANTIZED_FILES

                cached = os.path.join(out_dir, "openvino", QUANTIZED_FILES["openvino"])
                if opts.get("export") is False and not os.path.isfile(cached):
                    raise ValueError(f"dtype='int8' with backend='openvino' runs bgem3's NNCF int8 graph, which is not "
                                     f"in the cache yet ({cached}) and model_kwargs['export'] is False; run "
                                     f"`bgem3 export {self.model_dir} --backend openvino --quantize int8` or drop export=False")
                graph_file = export_graph(self.model_dir, name, out_dir, quantize="int8", reuse=not opts.get("export"),
                                          trust_remote_code=trust_remote_code)
            if graph_file is None:
                if opts.get("export") is False:
                    raise ValueError(f"{self.model_dir!r} has no {name} graph (onnx/model.onnx or "
                                     "openvino/openvino_model.xml) and model_kwargs['export'] is False; "
                                     f"run `bgem3 export {self.model_dir} --backend {name}` or drop export=False")
                graph_file = export_graph(self.model_dir, name, out_dir, reuse=not opts.get("export"),
                                          trust_remote_code=trust_remote_code)
            # int8 graph: the layers left out of int8 run bf16 where the CPU computes bf16 natively
            precision = "bf16" if self.dtype == torch.bfloat16 or (int8 and cpu_has_fast_bf16()) else "fp32"
            graph = load_graph_backend(name, graph_file, threads=torch.get_num_threads(), options=opts,
                                       precision=precision)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        logger.info("backend=%s (%s): running %s", name, f"int8, the rest {precision}" if int8 else precision, graph_file)
        return graph

    def _load_heads(self) -> tuple[torch.nn.Linear, torch.nn.Linear]:
        heads = []
        for fname, out_dim in (("colbert_linear.pt", None), ("sparse_linear.pt", 1)):
            fpath = os.path.join(self.path, fname)
            try:
                state = torch.load(fpath, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ModelLoadError(
                    f"cannot read the head file {fpath!r} ({type(exc).__name__}: {exc}); it must be a "
                    "torch state dict with 'weight' and 'bias' (loaded with weights_only=True)"
                ) from None
            if not isinstance(state, dict) or "weight" not in state:
                raise ModelLoadError(f"head file {fpath!r} is not a Linear state dict (expected keys 'weight', 'bias')")
            weight = state["weight"]
            if weight.ndim != 2 or weight.shape[1] != self.model.config.hidden_size or (out_dim and weight.shape[0] != out_dim):
                raise ModelLoadError(
                    f"head file {fpath!r} has weight shape {tuple(weight.shape)}, which does not fit a model "
                    f"with hidden size {self.model.config.hidden_size}"
                )
            lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
            lin.load_state_dict(state)
            # heads stay fp32 (they are ~0.3% of the FLOPs): bf16/fp16 models lose less accuracy
            lin.to(device=self.device, dtype=torch.float32).eval().requires_grad_(False)
            heads.append(lin)
        return heads[0], heads[1]

    def _model_max_length(self) -> int:
        cfg = self.model.config
        limits = []
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 1_000_000:
            limits.append(int(tok_max))
        max_pos = getattr(cfg, "max_position_embeddings", None)
        if max_pos:
            offset = (cfg.pad_token_id + 1) if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
            limits.append(int(max_pos) - int(offset or 0))
        return min(limits) if limits else 512

    def _unused_token_ids(self) -> set[int]:
        ids = set()
        tok = self.tokenizer
        for attr in ("cls_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            val = getattr(tok, attr, None)
            if val is not None:
                ids.add(int(val))
        return ids

    @property
    def has_heads(self) -> bool:
        """Whether the sparse and ColBERT heads are loaded."""
        return self.colbert_linear is not None

    def __repr__(self) -> str:
        backend = "" if self.backend_name == "torch" else f", backend={self.backend_name!r}"
        return (f"Encoder({self.model_name!r}, device='{self.device}', dtype={str(self.dtype).replace('torch.', '')}, "
                f"profile={self.profile.name!r}, max_length={self.max_length}{backend})")

    def __reduce__(self) -> tuple:
        """Pickled as how to load it again plus a process-local token: unpickling in the process that
        holds it (while it is alive) gives the same object, so ``copy.deepcopy`` shares the model;
        elsewhere the model is loaded again from its folder / hub id with the same options."""
        token = getattr(self, "_bgem3_token", None)
        if token is None:
            token = f"{_PROCESS}-{next(_TOKENS)}"
            self._bgem3_token = token
        _LIVE[token] = self
        path, options = self._load_spec()
        return _restore_encoder, (token, path, options)

    def _load_spec(self) -> tuple[str, dict]:
        """``(folder or hub id, Encoder options)`` that load this model again."""
        opts = getattr(self, "_bgem3_load_options", None)  # set by bgem3._loading.shared_encoder
        if opts is None:
            opts = {"device": str(self.device), "dtype": dtype_name(self.dtype), "profile": self.profile,
                    "batch_size": self.batch_size, "max_tokens_per_batch": getattr(self, "_max_tokens_given",
                                                                                   self.max_tokens_per_batch)}
            if self.max_length != self.model_max_length:
                opts["max_length"] = self.max_length
            # the engine as the user chose it: named (kept, so an unpickled copy runs the same graph), or
            # picked for the dtype on this CPU (left out, so it is picked again for the CPU that unpickles it)
            backend, backend_options = getattr(self, "backend_name", "torch"), getattr(self, "_backend_options", {})
            if getattr(self, "backend_reason", None) is None and (backend != "torch" or opts["dtype"] != "fp32"):
                opts["backend"] = backend
            if backend_options:
                opts["backend"], opts["model_kwargs"] = backend, dict(backend_options)
        path = self.path if os.path.isdir(self.path) else os.fspath(self.model_name)
        return path, dict(opts)

    # ------------------------------------------------------------------ public API
    def encode(
        self,
        texts: Union[str, Sequence[str]],
        *,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        show_progress: Optional[bool] = None,
    ) -> EncodeOutput:
        """Encode texts as they are (no template). Only the requested outputs are computed.

        Args:
            texts: a list of strings (a single string is treated as a list of one).
            dense / sparse / colbert: which outputs to compute.
            batch_size: most texts per forward pass (default: the encoder's).
            max_length: truncation length (default: the encoder's, the model limit).
            show_progress: a tqdm bar over batches; ``None`` shows it for multi-batch work on a TTY.
        """
        return self._run(_check_texts(texts), dense, sparse, colbert, batch_size, max_length, show_progress)

    def _check_max_length(self, max_length: Any, name: str = "max_length") -> int:
        ml = _check_positive_int(max_length, name)
        if ml <= self._n_special:
            raise ValueError(
                f"{name}={ml} leaves no room for text: this tokenizer adds {self._n_special} special token(s) "
                f"to every input; use {name} >= {self._n_special + 1}"
            )
        return ml

    def _run(self, texts: list[str], dense: bool, sparse: bool, colbert: bool, batch_size: Optional[int],
             max_length: Optional[int], show_progress: Optional[bool], *, ids: Optional[list] = None,
             prompt_len: int = 0) -> EncodeOutput:
        if (sparse or colbert) and not self.has_heads:
            wanted = [n for n, on in (("sparse", sparse), ("colbert", colbert)) if on]
            raise ValueError(
                f"{' and '.join(wanted)} output needs BGE-M3's head files, but {self.path!r} lacks "
                f"{', '.join(self._missing_heads)}. Dense output works without them (dense=True only); "
                "for sparse/ColBERT use a BGE-M3 checkpoint that ships colbert_linear.pt and sparse_linear.pt."
            )
        if not (dense or sparse or colbert):
            raise ValueError("nothing to compute: set at least one of dense=True, sparse=True, colbert=True")
        bs = self.batch_size if batch_size is None else _check_positive_int(batch_size, "batch_size")
        if max_length is None:
            ml = self.max_length
        else:
            ml = min(self._check_max_length(max_length), self.model_max_length)
        return self._encode(texts, dense, sparse, colbert, bs, ml, show_progress, ids=ids, prompt_len=prompt_len)

    def encode_queries(self, texts: Union[str, Sequence[str]], *, task: Optional[str] = None,
                       examples: Optional[Sequence[dict]] = None, **kwargs: Any) -> EncodeOutput:
        """Encode queries with the profile's query template (``query: `` for E5, the instruction for
        the instruct families, LLM-Embedder's instruction for ``task``, few-shot ``examples`` for bge-en-icl).

        A query that already starts with the template's prefix is not prefixed again.
        """
        texts = _check_texts(texts)
        if self.profile.icl:
            return self._encode_icl_queries(texts, task, examples, **kwargs)
        if examples is not None:
            raise ValueError(f"examples= is for in-context-learning profiles (bge-en-icl); the {self.profile.name!r} "
                             "profile takes none")
        tmpl = self.profile.query_template
        if task is not None and self.profile.task_instructions is None and not (tmpl and "{task}" in tmpl):
            raise ValueError(
                f"task={task!r} was given but the {self.profile.name!r} profile's query template "
                f"({tmpl!r}) has no {{task}}; use an instruct profile (e.g. profile='e5-instruct') or put "
                "the instruction in query_template=..."
            )
        formatted = [self.profile.format_query(t, task) for t in texts]
        prompt_len = 0 if self.profile.include_prompt else self._prompt_length(self.profile.query_prefix(task))
        return self._run_kwargs(formatted, kwargs, prompt_len)

    def encode_documents(self, texts: Union[str, Sequence[str]], *, task: Optional[str] = None,
                         **kwargs: Any) -> EncodeOutput:
        """Encode documents with the profile's passage template (``passage: `` for E5; LLM-Embedder's
        key instruction for ``task``)."""
        texts = _check_texts(texts)
        formatted = [self.profile.format_passage(t, task) for t in texts]
        prompt_len = 0 if self.profile.include_prompt else self._prompt_length(self.profile.passage_prefix(task))
        return self._run_kwargs(formatted, kwargs, prompt_len)

    # async twins: the model runs in a worker thread so the event loop keeps running (a RemoteEncoder
    # overrides these with native HTTP calls); the frameworks' aembed_* methods await these
    async def aencode(self, texts: Union[str, Sequence[str]], **kwargs: Any) -> EncodeOutput:
        """:meth:`encode`, awaitable (in a worker thread)."""
        return await asyncio.to_thread(functools.partial(self.encode, texts, **kwargs))

    async def aencode_queries(self, texts: Union[str, Sequence[str]], **kwargs: Any) -> EncodeOutput:
        """:meth:`encode_queries`, awaitable (in a worker thread)."""
        return await asyncio.to_thread(functools.partial(self.encode_queries, texts, **kwargs))

    async def aencode_documents(self, texts: Union[str, Sequence[str]], **kwargs: Any) -> EncodeOutput:
        """:meth:`encode_documents`, awaitable (in a worker thread)."""
        return await asyncio.to_thread(functools.partial(self.encode_documents, texts, **kwargs))

    def _run_kwargs(self, texts: list[str], kwargs: dict, prompt_len: int = 0, ids: Optional[list] = None) -> EncodeOutput:
        if ids is None and not prompt_len:
            return self.encode(texts, **kwargs)
        allowed = ("dense", "sparse", "colbert", "batch_size", "max_length", "show_progress")
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}; encode takes {', '.join(allowed)}")
        return self._run(texts, kwargs.get("dense", True), kwargs.get("sparse", False), kwargs.get("colbert", False),
                         kwargs.get("batch_size"), kwargs.get("max_length"), kwargs.get("show_progress"),
                         ids=ids, prompt_len=prompt_len)

    def _prompt_length(self, prompt: str) -> int:
        """Tokens of ``prompt`` alone, less a trailing special token (sentence-transformers' rule for
        ``include_prompt=False``): that many leading positions are left out of pooling."""
        if not prompt:
            return 0
        with self._tokenizer_lock:
            ids = self.tokenizer(prompt)["input_ids"]
        n = len(ids)
        if n and ids[-1] in set(self.tokenizer.all_special_ids):
            n -= 1
        return n

    def _encode_icl_queries(self, texts: list[str], task: Optional[str], examples, **kwargs: Any) -> EncodeOutput:
        """bge-en-icl queries as FlagICLModel builds them: the instructed query is truncated first
        (to ``max_length`` less the specials and the suffix), then the few-shot examples are put
        in front and ``\\n<response>`` after it, so long queries never push the examples out."""
        prof = self.profile
        exs = _check_examples(examples) if examples is not None else prof.examples
        t = task or prof.task
        ml = kwargs.get("max_length")
        ml = self.max_length if ml is None else self._check_max_length(ml)
        instructed = [prof.format_query(x, t) for x in texts]
        prefix = icl_prefix(exs, t)
        suffix = ICL_SUFFIX
        tok = self.tokenizer
        with self._tokenizer_lock:
            len1 = len(tok("<s>", add_special_tokens=False)["input_ids"])
            len2 = len(tok(f"{suffix}</s>", add_special_tokens=False)["input_ids"])
            n_prefix = len(tok(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
            n_suffix = len(tok(suffix, add_special_tokens=False)["input_ids"])
            room = ml - len1 - len2
            if room <= 0:
                raise ValueError(f"max_length={ml} leaves no room for the query next to the ICL suffix; "
                                 f"use max_length >= {len1 + len2 + 1}")
            new_max = (n_prefix + n_suffix + ml + 8) // 8 * 8 + 8
            first = tok(instructed, truncation=True, max_length=room, add_special_tokens=False)["input_ids"] \
                if instructed else []
            decoded = tok.batch_decode(first) if first else []
            ids = tok([prefix + d + suffix for d in decoded], truncation=True, max_length=new_max)["input_ids"] \
                if decoded else []
        rest = {k: v for k, v in kwargs.items() if k != "max_length"}
        return self._run_kwargs(instructed, rest, 0, ids=[list(x) for x in ids])

    # ------------------------------------------------------------------ internals
    def tokenize(self, texts: Sequence[str], max_length: Optional[int] = None) -> list[list[int]]:
        """Token ids of each text, truncated to ``max_length`` (specials included). Thread-safe."""
        ml = max_length or self.max_length
        with self._tokenizer_lock:
            enc = self.tokenizer(list(texts), truncation=True, max_length=ml, padding=False,
                                 return_attention_mask=False, return_token_type_ids=False)
        ids = enc["input_ids"]
        # a tokenizer cannot truncate below its special tokens and then returns the whole text: cap anyway
        return [row if len(row) <= ml else list(row[: ml - 1]) + [row[-1]] for row in ids]

    def plan_batches(self, lengths: np.ndarray, batch_size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Sort by length (longest first) and cut batches capped by count and padded-token budget.

        Returns the sort order and ``(start, end)`` slices into it.
        """
        return _plan_batches(lengths, batch_size, self.max_tokens_per_batch)

    def _encode(self, texts, want_dense, want_sparse, want_colbert, batch_size, max_length, show_progress,
                ids=None, prompt_len: int = 0) -> EncodeOutput:
        n = len(texts)
        out = EncodeOutput(token_counts=np.zeros(n, dtype=np.int64))
        if n == 0:
            if want_dense:
                out.dense = np.zeros((0, self.dimension), dtype=np.float32)
            out.sparse = [] if want_sparse else None
            out.colbert = [] if want_colbert else None
            return out
        if ids is None:
            ids = self.tokenize(texts, max_length)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        out.token_counts = lengths
        single = n == 1 and not show_progress  # one text (a query): no batch plan, no progress bar to set up
        order, batches = (np.zeros(1, dtype=np.int64), [(0, 1)]) if single else self.plan_batches(lengths, batch_size)

        dense_out = np.empty((n, self.dimension), dtype=np.float32) if want_dense else None
        sparse_out: list = [None] * n if want_sparse else None  # type: ignore[assignment]
        colbert_out: list = [None] * n if want_colbert else None  # type: ignore[assignment]

        def store(idx: np.ndarray, res: tuple) -> None:
            dense_b, sparse_b, colbert_b = res
            if want_dense:
                dense_out[idx] = dense_b
            for j, i in enumerate(idx):
                if want_sparse:
                    sparse_out[i] = sparse_b[j]
                if want_colbert:
                    colbert_out[i] = colbert_b[j]

        if single:
            store(order, self._forward([ids[0]], want_dense, want_sparse, want_colbert, prompt_len))
        elif self.graph is not None and len(batches) > 1:  # bulk on a graph runtime: batches in flight, heads overlapped
            self._graph_stream(order, batches, ids, store, (want_dense, want_sparse, want_colbert, prompt_len),
                               show_progress)
        else:
            run_batches(order, batches,
                        lambda idx: self._forward([ids[i] for i in idx], want_dense, want_sparse, want_colbert,
                                                  prompt_len),
                        store, device=self.device, show_progress=show_progress, desc="Encoding", unit="text",
                        log=logger)
        out.dense, out.sparse, out.colbert = dense_out, sparse_out, colbert_out
        return out

    def _pad(self, batch_ids: list[list[int]], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T]`` ids and mask; right padding to ``T`` = the longest row rounded up to ``multiple``
        (left padding, the decoders' reference layout, always pads to the longest row exactly)."""
        lens = [len(x) for x in batch_ids]
        width = max(lens)
        if multiple > 1 and not self._pad_left:
            width = -(-width // multiple) * multiple
        arr = np.full((len(batch_ids), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(batch_ids), width), dtype=np.int64)
        for r, row in enumerate(batch_ids):
            if self._pad_left:
                arr[r, width - len(row):] = row
                mask[r, width - len(row):] = 1
            else:
                arr[r, : len(row)] = row
                mask[r, : len(row)] = 1
        return torch.from_numpy(arr).to(self.device), torch.from_numpy(mask).to(self.device)

    def forward_batch(self, batch_ids: Sequence[Sequence[int]], dense: bool = True, sparse: bool = False,
                      colbert: bool = False) -> tuple[Optional[np.ndarray], Optional[list], Optional[list]]:
        """One forward pass over token id lists (as :meth:`tokenize` returns them), in the given
        order, through this encoder's backend: ``(dense [B, D] or None, sparse dicts or None,
        ColBERT arrays or None)``. No templating, sorting or splitting: the caller (e.g. ``bgem3
        serve``'s batcher) has batched already.
        """
        if (sparse or colbert) and not self.has_heads:
            raise ValueError(f"sparse / ColBERT output needs BGE-M3's head files, which {self.path!r} lacks")
        if not batch_ids:
            raise ValueError("forward_batch needs at least one token id list")
        return self._forward([list(x) for x in batch_ids], dense, sparse, colbert)

    def _forward(self, batch_ids, want_dense, want_sparse, want_colbert, prompt_len: int = 0):
        if self.graph is not None:
            return self._forward_graph(batch_ids, want_dense, want_sparse, want_colbert, prompt_len)
        if self._packed and not prompt_len and self.profile.pooling in ("cls", "mean", "lasttoken"):
            return self._forward_packed(batch_ids, want_dense, want_sparse, want_colbert)
        return self._forward_padded(batch_ids, want_dense, want_sparse, want_colbert, prompt_len)

    def _forward_graph(self, batch_ids, want_dense, want_sparse, want_colbert, prompt_len: int = 0):
        """backend='onnx' / 'openvino': the graph gives the padded last hidden states, the same
        pooling and heads as the padded torch path run on them (fp32)."""
        input_ids, attention_mask = self._pad(batch_ids, self.graph.width_multiple)
        hidden = self.graph.hidden_states(input_ids.numpy(), attention_mask.numpy())
        return self._graph_heads(hidden, input_ids, attention_mask, want_dense, want_sparse, want_colbert, prompt_len)

    def _graph_stream(self, order, batches, ids, store, wants: tuple, show_progress) -> None:
        """Several batches through the graph runtime's stream (:meth:`GraphBackend.hidden_states_stream`:
        OpenVINO keeps a batch in flight per stream): each batch's heads run while the next ones infer,
        and ``store`` gets the batches in order, as :func:`run_batches` gives them."""
        held: deque = deque()  # the padded batches the stream has read and not yet given back

        def padded():
            for start, end in batches:
                input_ids, attention_mask = self._pad([ids[i] for i in order[start:end]], self.graph.width_multiple)
                held.append((order[start:end], input_ids, attention_mask))
                yield input_ids.numpy(), attention_mask.numpy()

        # with batches in flight on the runtime's streams (one thread each), the heads take one thread
        # too: at torch's full count they would preempt the streams (measured: bulk 6 % slower, no faster
        # than one request). The setting is process-wide: a torch-path encode in another thread meanwhile
        # runs on one thread too.
        with progress_bar(batches, show_progress, desc="Encoding", unit="text") as bar, \
                _one_torch_thread(self.graph.bulk_streams() > 1):
            for hidden in self.graph.hidden_states_stream(padded()):
                idx, input_ids, attention_mask = held.popleft()
                store(idx, self._graph_heads(hidden, input_ids, attention_mask, *wants))
                bar.update(len(idx))

    def _graph_heads(self, hidden, input_ids, attention_mask, want_dense, want_sparse, want_colbert, prompt_len):
        """The checked hidden states of a graph runtime -> pooling and heads (fp32, the padded path's code)."""
        if hidden.ndim != 3 or hidden.shape[:2] != tuple(input_ids.shape) or hidden.shape[2] != self.model_hidden_size:
            raise ValueError(f"the {self.backend_name} graph {self.graph.path!r} returned hidden states of shape "
                             f"{hidden.shape} for a batch of {tuple(input_ids.shape)}; expected "
                             f"[batch, tokens, {self.model_hidden_size}] (is it this model's graph?)")
        with torch.inference_mode():
            return self._heads_padded(torch.from_numpy(hidden), input_ids, attention_mask, want_dense, want_sparse,
                                      want_colbert, prompt_len)

    def _forward_padded(self, batch_ids, want_dense, want_sparse, want_colbert, prompt_len: int = 0):
        """Reference path: a padded ``[B, T]`` batch through the Hugging Face model."""
        input_ids, attention_mask = self._pad(batch_ids)
        with torch.inference_mode():
            hidden = self._model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self._heads_padded(hidden, input_ids, attention_mask, want_dense, want_sparse, want_colbert,
                                      prompt_len)

    def _heads_padded(self, hidden, input_ids, attention_mask, want_dense, want_sparse, want_colbert, prompt_len):
        """Pooling + Dense/Normalize, sparse and ColBERT heads on padded hidden states (any backend)."""
        dense_np = sparse_list = colbert_list = None
        if want_dense:
            dense_np = self._pool(hidden, attention_mask, prompt_len).float().cpu().numpy()
        if want_sparse:
            sparse_list = self._sparse(hidden, input_ids, attention_mask)
        if want_colbert:
            colbert_list = self._colbert(hidden, attention_mask)
        return dense_np, sparse_list, colbert_list

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor, prompt_len: int = 0) -> torch.Tensor:
        """Pool a padded batch as the profile says (padding on either side), then :meth:`_finish`.

        ``prompt_len``: leading real tokens left out of pooling (sentence-transformers' ``include_prompt=False``).
        """
        pooling = self.profile.pooling
        pm = _exclude_prompt(mask, prompt_len) if prompt_len else mask
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if pooling == "cls":
            first = pm.to(torch.int32).argmax(dim=1) if (self._pad_left or prompt_len) else torch.zeros_like(rows)
            vec = hidden[rows, first]
        elif pooling in ("mean", "mean_sqrt_len_tokens"):
            m = pm.unsqueeze(-1).to(hidden.dtype)
            count = m.sum(dim=1).clamp(min=1e-9)
            vec = (hidden * m).sum(dim=1) / (count if pooling == "mean" else count.sqrt())
        elif pooling == "lasttoken":
            width = pm.shape[1]
            last = width - 1 - pm.flip(1).to(torch.int32).argmax(dim=1)
            vec = hidden[rows, last]
        elif pooling == "max":
            vec = hidden.masked_fill(pm.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values
        else:  # pragma: no cover - profiles are validated
            raise ValueError(f"unknown pooling {pooling!r}")
        return self._finish(vec)

    def _finish(self, vec: torch.Tensor) -> torch.Tensor:
        """Pooled vectors -> fp32 -> the folder's Dense modules -> L2 normalisation (if the profile says so)."""
        vec = vec.float()  # normalise in fp32 so bf16/fp16 vectors have unit norm too
        for layer in self._dense_layers:
            vec = layer(vec)
        if self.profile.normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
        return vec

    def _sparse(self, hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> list[dict[int, float]]:
        weights = torch.relu(self.sparse_linear(hidden.float())).squeeze(-1)  # [B, T]
        keep = mask.bool() & (weights > 0)
        if len(self._special_ids):
            keep &= ~torch.isin(input_ids, self._special_ids.to(input_ids.device))
        rows, cols = keep.nonzero(as_tuple=True)
        return self._sparse_dicts(rows, input_ids[rows, cols], weights[rows, cols], hidden.shape[0])

    def _colbert(self, hidden: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
        body_mask = mask[:, 1:].bool()
        tokens = hidden[:, 1:][body_mask]  # only real tokens: [sum(T_i - 1), H]
        vecs = torch.nn.functional.normalize(linear(self.colbert_linear, tokens.float()), dim=-1).cpu().numpy()
        counts = body_mask.sum(dim=1).cpu().numpy()
        return np.split(vecs, np.cumsum(counts)[:-1])


    # ------------------------------------------------------------------ unpadded (packed) path
    def _forward_packed(self, batch_ids, want_dense, want_sparse, want_colbert):
        """Unpadded path: every linear layer, LayerNorm, GELU and head runs on the packed real
        tokens ``[sum(T_i), H]``; only the attention scores are computed per text (padded to
        the longest text of the batch, which the length-sorted batches keep close).

        Same modules, same weights, same op order as the Hugging Face forward, so outputs match
        the padded path to float rounding (~1e-7). Used for BERT / (XLM-)RoBERTa encoders with
        absolute positions; anything else takes :meth:`_forward_padded`.
        """
        dev = self.device
        b = len(batch_ids)
        model = self._model
        if b == 1:  # one text (a query): no varlen bookkeeping, cached position ranges
            total = width = len(batch_ids[0])
            lens_np = np.array([total], dtype=np.int64)
            seg_np = None  # every row is text 0
            ids = torch.tensor(batch_ids[0], dtype=torch.int64, device=dev)
            local = self._arange(total)
            starts = local[:1]
            lens = None
        else:
            lens_np = np.fromiter((len(x) for x in batch_ids), dtype=np.int64, count=b)
            total = int(lens_np.sum())
            width = int(lens_np.max())
            flat = np.fromiter((t for row in batch_ids for t in row), dtype=np.int64, count=total)
            starts_np = np.cumsum(lens_np) - lens_np
            seg_np = np.repeat(np.arange(b, dtype=np.int64), lens_np)
            local_np = np.arange(total, dtype=np.int64) - np.repeat(starts_np, lens_np)
            ids = torch.from_numpy(flat).to(dev)
            local = torch.from_numpy(local_np).to(dev)
            starts = torch.from_numpy(starts_np).to(dev)
            lens = torch.from_numpy(lens_np).to(dev)

        fast = onednn_active()  # read once per call, not per layer
        with torch.inference_mode():
            pos = None
            if b == 1 and self._packed == "roberta":  # one text without pad ids: positions count from padding_idx + 1
                pad_idx = model.embeddings.padding_idx
                if not bool(ids.eq(pad_idx).any()):
                    pos = self._arange(total + pad_idx + 1)[pad_idx + 1:]
            if pos is None:
                if lens is None:
                    lens = torch.tensor(lens_np, device=dev)
                pos = _unpadded.packed_position_ids(self._packed, model.embeddings, ids, local, starts, lens)
            hidden = model.embeddings(input_ids=ids.unsqueeze(0), position_ids=pos.unsqueeze(0)).squeeze(0)

            seg_idx = None
            if b > 1 and width * b != total:
                seg_idx = torch.from_numpy(seg_np).to(dev)
            layout = packed_layout(lens_np, dev, local=local, seg=seg_idx)
            layers = list(model.encoder.layer)
            cls_only = want_dense and not (want_sparse or want_colbert) and self.profile.pooling == "cls"
            plan = self._one_text_plan(layers) if b == 1 and fast and hidden.device.type == "cpu" else None
            for li, layer in enumerate(layers):
                last = li == len(layers) - 1
                rows = starts if (last and cls_only) else None
                out = None if plan is None or rows is not None else _unpadded.layer_one(plan[li], hidden, width)
                hidden = out if out is not None else _unpadded.packed_layer(layer, hidden, layout, rows, fast)
            # after a cls-only last layer, hidden holds just the B CLS rows

            dense_np = sparse_list = colbert_list = None
            if want_dense:
                pooling = self.profile.pooling
                if cls_only:
                    vec = hidden
                elif pooling == "cls":
                    vec = hidden[starts]
                elif pooling == "mean":
                    if seg_idx is not None:
                        seg_t = seg_idx
                    elif seg_np is None:
                        seg_t = torch.zeros(total, dtype=torch.int64, device=dev)
                    else:
                        seg_t = torch.from_numpy(seg_np).to(dev)
                    if lens is None:
                        lens = torch.tensor(lens_np, device=dev)
                    sums = torch.zeros(b, hidden.shape[-1], dtype=hidden.dtype, device=dev).index_add_(0, seg_t, hidden)
                    vec = sums / lens.unsqueeze(1).to(hidden.dtype).clamp(min=1e-9)
                elif pooling == "lasttoken":
                    vec = hidden[starts + (total - 1 if lens is None else lens - 1)]
                else:  # pragma: no cover - profiles are validated
                    raise ValueError(f"unknown pooling {pooling!r}")
                dense_np = self._finish(vec).cpu().numpy()
            if want_sparse or want_colbert:
                hid = hidden.float()
                # ColBERT [H, H] and sparse [1, H] heads as one pre-packed oneDNN product over every row
                both = self._heads_copy.product((self.colbert_linear, self.sparse_linear), hid, fast) \
                    if want_colbert else None
                if both is None:
                    both = (None, self.sparse_linear(hid) if want_sparse else None)
            if want_sparse:
                weights = torch.relu(both[1]).squeeze(-1)  # [total]
                keep = weights > 0
                if len(self._special_ids):
                    keep &= ~torch.isin(ids, self._special_ids.to(dev))
                sel = keep.nonzero(as_tuple=True)[0]
                rows = torch.zeros_like(sel) if seg_np is None else torch.from_numpy(seg_np).to(dev)[sel]
                sparse_list = self._sparse_dicts(rows, ids[sel], weights[sel], b)
            if want_colbert:
                if both[0] is not None:
                    body_out = both[0][1:] if b == 1 else both[0][local.ne(0)]
                else:
                    body_out = linear(self.colbert_linear, (hid[1:] if b == 1 else hid[local.ne(0)]).contiguous(),
                                      active=fast)
                vecs = torch.nn.functional.normalize(body_out, dim=-1).cpu().numpy()
                colbert_list = [vecs] if b == 1 else np.split(vecs, np.cumsum(lens_np - 1)[:-1])
        return dense_np, sparse_list, colbert_list

    def _one_text_plan(self, layers: list) -> Optional[list]:
        """:func:`bgem3._unpadded.one_text_plan` of this model's layers, made once per model."""
        cached = self.__dict__.get("_plan_cache")
        if cached is not None and cached[0] is self._model:
            return cached[1]
        plan = _unpadded.one_text_plan(layers)
        self._plan_cache = (self._model, plan)
        return plan

    def _arange(self, n: int) -> torch.Tensor:
        """``torch.arange(n)`` on the encoder's device, sliced from a cached range (grown when needed)."""
        r = self.__dict__.get("_arange_cache")
        if r is None or r.shape[0] < n:
            with torch.inference_mode(False):
                r = torch.arange(max(n, 1024), dtype=torch.int64, device=self.device)
            self._arange_cache = r
        return r[:n]

    def _sparse_dicts(self, rows: torch.Tensor, tok: torch.Tensor, w: torch.Tensor, n_rows: int) -> list[dict[int, float]]:
        """Max weight per (row, token id), vectorised, as one dict per row (keys in ascending token id order)."""
        if n_rows == 1 and tok.shape[0] <= 256:  # one short text: a few dozen pairs, cheaper in Python
            top: dict[int, float] = {}
            for t, v in zip(tok.tolist(), w.tolist()):
                if v > top.get(t, -1.0):  # the weights here are > 0
                    top[t] = v
            return [dict(sorted(top.items()))]
        key = rows.to(torch.int64) * int(self.vocab_size + 1) + tok
        uniq, inverse = torch.unique(key, return_inverse=True)
        best = torch.zeros(uniq.shape[0], dtype=w.dtype, device=w.device).scatter_reduce(0, inverse, w, reduce="amax", include_self=False)
        urow = (uniq // (self.vocab_size + 1)).cpu().numpy()
        utok = (uniq % (self.vocab_size + 1)).cpu().numpy().tolist()
        uval = best.cpu().numpy().tolist()
        bounds = np.searchsorted(urow, np.arange(n_rows + 1))
        return [dict(zip(utok[a:b], uval[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- pickling (Encoder.__reduce__)

_LIVE: "weakref.WeakValueDictionary[str, Encoder]" = weakref.WeakValueDictionary()
_TOKENS = itertools.count()
_PROCESS = f"{os.getpid()}-{id(_LIVE)}"


def _restore_encoder(token: str, path: str, options: dict) -> Encoder:
    live = _LIVE.get(token)
    if live is not None:
        return live
    # The one import that runs up a layer, at call time only: an unpickled encoder joins the process-wide
    # encoder cache (so several unpickled facades share one copy of the weights); bgem3._loading imports
    # no framework and no adapter glue.
    from ._loading import shared_encoder

    return shared_encoder(path, **options)


# --------------------------------------------------------------------------- helpers

_ONE_THREAD_LOCK = threading.Lock()
_one_thread = {"depth": 0, "before": 0}  # blocks inside _one_torch_thread now, and the count to put back


@contextlib.contextmanager
def _one_torch_thread(active: bool = True):
    """PyTorch's intra-op thread count at 1 for the block (a process-wide setting), then put back when the
    last such block in any thread ends: overlapping blocks in several threads never leave it at 1."""
    if not active:
        yield
        return
    with _ONE_THREAD_LOCK:
        if _one_thread["depth"] == 0:
            _one_thread["before"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _one_thread["depth"] += 1
    try:
        yield
    finally:
        with _ONE_THREAD_LOCK:
            _one_thread["depth"] -= 1
            if _one_thread["depth"] == 0:
                torch.set_num_threads(_one_thread["before"])


def _dtype_label(dtype: torch.dtype) -> str:
    return _DTYPE_SHORT.get(dtype, str(dtype))


def _exclude_prompt(mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The attention mask with the first ``prompt_len`` real tokens of each row zeroed (either padding side)."""
    mask = mask.clone()
    pad = mask.to(torch.int32).argmax(dim=1)  # leading pads per row (0 with right padding)
    pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    mask[pos < (pad + prompt_len).unsqueeze(1)] = 0
    return mask


def icl_prefix(examples: Optional[Sequence[dict]], task: Optional[str]) -> str:
    """FlagICLModel's few-shot prefix: each example as ``<instruct>{task}\\n<query>{q}\\n<response>{r}``,
    joined and followed by a blank line; ``""`` without examples."""
    if not examples:
        return ""
    parts = [ICL_EXAMPLE_TEMPLATE.format(task=ex.get("instruct", task), query=ex.get("query", ""),
                                         response=ex.get("response", "")) for ex in examples]
    return "\n\n".join(parts) + "\n\n"


def _is_decoder_only(config: Any) -> bool:
    """A causal-LM architecture that is not also a masked-LM encoder (Mistral, Qwen2/3, Gemma2, Llama...)."""
    try:
        from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                            MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    except ImportError:  # pragma: no cover
        return False
    mtype = getattr(config, "model_type", "")
    return mtype in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mtype not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX), so ``dtype='bf16'`` pays off.

    Example::

        >>> from bgem3.encoder import cpu_has_fast_bf16
        >>> isinstance(cpu_has_fast_bf16(), bool)
        True
    """
    from .quant.engine import _native_bf16

    return _native_bf16()
