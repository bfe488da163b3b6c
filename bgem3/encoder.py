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

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .profiles import M3_HEAD_FILES, Profile, detect_profile, get_profile

logger = logging.getLogger(__name__)

DTypeLike = Union[str, torch.dtype, None]

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}

#: Files a hub download needs (weights, configs, tokenizer, M3 heads, ST configs).
_HUB_PATTERNS = [
    "*.json", "*.safetensors", "*.txt", "*.model", "sentencepiece.bpe.model",
    "colbert_linear.pt", "sparse_linear.pt", "1_Pooling/*", "2_Normalize/*",
]


class ModelLoadError(OSError):
    """A model could not be found or loaded; the message names the input and the fix."""


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
            raise ValueError(f"dtype {dtype!r} is not supported; use 'fp32', 'fp16' or 'bf16' (or None for auto)")
        dt = _DTYPES[key]
    elif isinstance(dtype, torch.dtype):
        dt = dtype
    else:
        raise TypeError(f"dtype must be a string, a torch.dtype or None; got {type(dtype).__name__}")
    if dt not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype {dtype!r} is not supported; use fp32, fp16 or bf16")
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
                       revision: Optional[str] = None, local_files_only: Optional[bool] = None) -> str:
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
                                 allow_patterns=_HUB_PATTERNS, local_files_only=True)
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
        return snapshot_download(name, cache_dir=cache_dir, revision=revision, allow_patterns=_HUB_PATTERNS)
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
        profile: ``"m3"``, ``"e5"``, ``"e5-instruct"``, ``"bge"``, ``"bge-zh"`` or a
            :class:`~bgem3.profiles.Profile`; default detected from the folder / hub id.
        query_template / passage_template: override the profile's templates (they must
            contain ``{text}``); ``None`` or ``""`` turns a template off.
        task: the instruction for e5-instruct query templates.
        max_length: default truncation length; default the model's own limit (8192 for
            BGE-M3). Longer inputs are truncated.
        batch_size: most texts in one forward pass.
        max_tokens_per_batch: most padded tokens in one forward pass (length x count); keeps
            memory flat when long and short texts are mixed.
        local_files_only / cache_dir / revision: hub loading options.

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
        max_tokens_per_batch: int = 16384,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        revision: Optional[str] = None,
        trust_remote_code: bool = False,
    ) -> None:
        _check_positive_int(batch_size, "batch_size")
        _check_positive_int(max_tokens_per_batch, "max_tokens_per_batch")
        self.model_name = os.fspath(model_name_or_path) if isinstance(model_name_or_path, (str, os.PathLike)) else model_name_or_path
        self.path = resolve_model_path(model_name_or_path, cache_dir=cache_dir, revision=revision,
                                       local_files_only=local_files_only)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if profile is None:
            self.profile = detect_profile(self.path, name_hint=self.model_name)
        else:
            self.profile = get_profile(profile)
        self.profile = self.profile.with_templates(query_template, passage_template, task)
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch

        self._tokenizer_lock = threading.Lock()
        self.tokenizer = self._load_tokenizer(trust_remote_code)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and not cpu_has_fast_bf16():
            logger.warning("dtype='bf16' on a CPU without avx512_bf16/AMX runs emulated and is usually slower "
                           "than fp32; use dtype='fp32' (the exact default) on this machine")
        self.model = self._load_model(trust_remote_code)
        self.hidden_size = int(self.model.config.hidden_size)
        self.colbert_linear: Optional[torch.nn.Linear] = None
        self.sparse_linear: Optional[torch.nn.Linear] = None
        self._missing_heads = [f for f in M3_HEAD_FILES if not os.path.isfile(os.path.join(self.path, f))]
        if not self._missing_heads:
            self.colbert_linear, self.sparse_linear = self._load_heads()

        self.model_max_length = self._model_max_length()
        if max_length is not None:
            _check_positive_int(max_length, "max_length")
        self.max_length = min(max_length, self.model_max_length) if max_length else self.model_max_length
        self._special_ids = torch.tensor(sorted(self._unused_token_ids()), dtype=torch.long)
        #: "roberta" / "bert" when the unpadded path applies to this architecture, else None.
        self._packed: Optional[str] = _packed_kind(self.model)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.vocab_size = max(len(self.tokenizer), int(getattr(self.model.config, "vocab_size", 0) or 0))

    # ------------------------------------------------------------------ loading
    def _load_tokenizer(self, trust_remote_code: bool):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load a tokenizer from {self.path!r} ({type(exc).__name__}: {exc}). "
                "The folder needs tokenizer.json (or the tokenizer's vocabulary files) next to config.json."
            ) from None

    def _load_model(self, trust_remote_code: bool) -> torch.nn.Module:
        from transformers import AutoModel

        if not os.path.isfile(os.path.join(self.path, "config.json")):
            raise ModelLoadError(
                f"{self.path!r} is not a model folder: config.json is missing. Pass the folder that "
                "holds config.json and the weights (model.safetensors or pytorch_model.bin)."
            )
        try:
            model = AutoModel.from_pretrained(self.path, dtype=self.dtype, trust_remote_code=trust_remote_code,
                                              add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_pretrained(self.path, dtype=self.dtype, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load model weights from {self.path!r} ({type(exc).__name__}: {exc}). "
                "Check that the folder holds a complete checkpoint (config.json + model.safetensors)."
            ) from None
        model.to(self.device)
        model.eval()
        model.requires_grad_(False)
        return model

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
        return (f"Encoder({self.model_name!r}, device='{self.device}', dtype={str(self.dtype).replace('torch.', '')}, "
                f"profile={self.profile.name!r}, max_length={self.max_length})")

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
        texts = _check_texts(texts)
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
            ml = min(_check_positive_int(max_length, "max_length"), self.model_max_length)
        return self._encode(texts, dense, sparse, colbert, bs, ml, show_progress)

    def encode_queries(self, texts: Union[str, Sequence[str]], *, task: Optional[str] = None, **kwargs: Any) -> EncodeOutput:
        """Encode queries with the profile's query template (``query: `` for E5, instruction for e5-instruct)."""
        texts = _check_texts(texts)
        return self.encode([self.profile.format_query(t, task) for t in texts], **kwargs)

    def encode_documents(self, texts: Union[str, Sequence[str]], **kwargs: Any) -> EncodeOutput:
        """Encode documents with the profile's passage template (``passage: `` for E5)."""
        texts = _check_texts(texts)
        return self.encode([self.profile.format_passage(t) for t in texts], **kwargs)

    # ------------------------------------------------------------------ internals
    def tokenize(self, texts: Sequence[str], max_length: Optional[int] = None) -> list[list[int]]:
        """Token ids of each text, truncated to ``max_length`` (specials included). Thread-safe."""
        ml = max_length or self.max_length
        with self._tokenizer_lock:
            enc = self.tokenizer(list(texts), truncation=True, max_length=ml, padding=False,
                                 return_attention_mask=False, return_token_type_ids=False)
        return enc["input_ids"]

    def plan_batches(self, lengths: np.ndarray, batch_size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Sort by length (longest first) and cut batches capped by count and padded-token budget.

        Returns the sort order and ``(start, end)`` slices into it.
        """
        order = np.argsort(-lengths, kind="stable")
        batches = []
        i, n = 0, len(order)
        while i < n:
            longest = int(lengths[order[i]])
            cap = max(1, min(batch_size, self.max_tokens_per_batch // max(longest, 1)))
            batches.append((i, min(i + cap, n)))
            i += cap
        return order, batches

    def _encode(self, texts, want_dense, want_sparse, want_colbert, batch_size, max_length, show_progress) -> EncodeOutput:
        n = len(texts)
        out = EncodeOutput(token_counts=np.zeros(n, dtype=np.int64))
        if n == 0:
            if want_dense:
                out.dense = np.zeros((0, self.hidden_size), dtype=np.float32)
            out.sparse = [] if want_sparse else None
            out.colbert = [] if want_colbert else None
            return out
        ids = self.tokenize(texts, max_length)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        out.token_counts = lengths
        order, batches = self.plan_batches(lengths, batch_size)

        dense_out = np.empty((n, self.hidden_size), dtype=np.float32) if want_dense else None
        sparse_out: list = [None] * n if want_sparse else None  # type: ignore[assignment]
        colbert_out: list = [None] * n if want_colbert else None  # type: ignore[assignment]

        if show_progress is None:
            show_progress = len(batches) > 1 and sys.stderr.isatty()
        bar = tqdm(total=n, desc="Encoding", unit="text", disable=not show_progress)
        try:
            queue = list(batches)
            while queue:
                start, end = queue.pop(0)
                idx = order[start:end]
                try:
                    res = self._forward([ids[i] for i in idx], want_dense, want_sparse, want_colbert)
                except Exception as exc:  # only CUDA OOM is retried, with half the batch
                    if not _is_oom(exc) or end - start == 1:
                        raise
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    mid = start + (end - start) // 2
                    logger.warning("out of memory on a batch of %d texts; retrying as %d + %d", end - start, mid - start, end - mid)
                    queue[:0] = [(start, mid), (mid, end)]
                    continue
                dense_b, sparse_b, colbert_b = res
                if want_dense:
                    dense_out[idx] = dense_b
                for j, i in enumerate(idx):
                    if want_sparse:
                        sparse_out[i] = sparse_b[j]
                    if want_colbert:
                        colbert_out[i] = colbert_b[j]
                bar.update(end - start)
        finally:
            bar.close()
        out.dense, out.sparse, out.colbert = dense_out, sparse_out, colbert_out
        return out

    def _pad(self, batch_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        lens = [len(x) for x in batch_ids]
        width = max(lens)
        arr = np.full((len(batch_ids), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(batch_ids), width), dtype=np.int64)
        for r, row in enumerate(batch_ids):
            arr[r, : len(row)] = row
            mask[r, : len(row)] = 1
        return torch.from_numpy(arr).to(self.device), torch.from_numpy(mask).to(self.device)

    def _forward(self, batch_ids, want_dense, want_sparse, want_colbert):
        if self._packed:
            return self._forward_packed(batch_ids, want_dense, want_sparse, want_colbert)
        return self._forward_padded(batch_ids, want_dense, want_sparse, want_colbert)

    def _forward_padded(self, batch_ids, want_dense, want_sparse, want_colbert):
        """Reference path: a padded ``[B, T]`` batch through the Hugging Face model."""
        input_ids, attention_mask = self._pad(batch_ids)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            dense_np = sparse_list = colbert_list = None
            if want_dense:
                dense_np = self._pool(hidden, attention_mask).float().cpu().numpy()
            if want_sparse:
                sparse_list = self._sparse(hidden, input_ids, attention_mask)
            if want_colbert:
                colbert_list = self._colbert(hidden, attention_mask)
        return dense_np, sparse_list, colbert_list

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooling = self.profile.pooling
        if pooling == "cls":
            vec = hidden[:, 0]
        elif pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        elif pooling == "lasttoken":
            last = mask.sum(dim=1) - 1
            vec = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:  # pragma: no cover - profiles are validated
            raise ValueError(f"unknown pooling {pooling!r}")
        vec = vec.float()  # normalise in fp32 so bf16/fp16 vectors have unit norm too
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
        vecs = torch.nn.functional.normalize(self.colbert_linear(tokens.float()), dim=-1).cpu().numpy()
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

        model = self.model
        with torch.inference_mode():
            if self._packed == "roberta":
                # as create_position_ids_from_input_ids: count non-pad tokens per text from padding_idx+1
                pad_idx = model.embeddings.padding_idx
                nonpad = ids.ne(pad_idx).to(torch.int64)
                c = torch.cumsum(nonpad, 0)
                base = (c[starts] - nonpad[starts]).repeat_interleave(lens)
                pos = (c - base) * nonpad + pad_idx
            else:
                pos = local
            hidden = model.embeddings(input_ids=ids.unsqueeze(0), position_ids=pos.unsqueeze(0)).squeeze(0)

            # attention layout: packed row r of text s sits at padded slot s * width + local[r]
            slot = seg_idx = None
            if b > 1 and width * b != total:
                seg_idx = torch.from_numpy(seg_np).to(dev)
                slot = seg_idx * width + local
                key_mask = (torch.arange(width, device=dev).unsqueeze(0) < lens.unsqueeze(1))
                attn_mask = key_mask[:, None, None, :]  # [B, 1, 1, W], True = attend
            else:
                attn_mask = None
            layers = list(model.encoder.layer)
            cls_only = want_dense and not (want_sparse or want_colbert) and self.profile.pooling == "cls"
            for li, layer in enumerate(layers):
                last = li == len(layers) - 1
                hidden = self._packed_layer(layer, hidden, b, width, slot, attn_mask,
                                            starts if (last and cls_only) else None)
            # after a cls-only last layer, hidden holds just the B CLS rows

            dense_np = sparse_list = colbert_list = None
            if want_dense:
                pooling = self.profile.pooling
                if cls_only:
                    vec = hidden
                elif pooling == "cls":
                    vec = hidden[starts]
                elif pooling == "mean":
                    seg_t = torch.from_numpy(seg_np).to(dev) if seg_idx is None else seg_idx
                    sums = torch.zeros(b, hidden.shape[-1], dtype=hidden.dtype, device=dev).index_add_(0, seg_t, hidden)
                    vec = sums / lens.unsqueeze(1).to(hidden.dtype).clamp(min=1e-9)
                elif pooling == "lasttoken":
                    vec = hidden[starts + lens - 1]
                else:  # pragma: no cover - profiles are validated
                    raise ValueError(f"unknown pooling {pooling!r}")
                vec = vec.float()
                if self.profile.normalize:
                    vec = torch.nn.functional.normalize(vec, dim=-1)
                dense_np = vec.float().cpu().numpy()
            if want_sparse:
                weights = torch.relu(self.sparse_linear(hidden.float())).squeeze(-1)  # [total]
                keep = weights > 0
                if len(self._special_ids):
                    keep &= ~torch.isin(ids, self._special_ids.to(dev))
                sel = keep.nonzero(as_tuple=True)[0]
                rows = torch.from_numpy(seg_np).to(dev)[sel]
                sparse_list = self._sparse_dicts(rows, ids[sel], weights[sel], b)
            if want_colbert:
                body = local.ne(0)
                vecs = torch.nn.functional.normalize(self.colbert_linear(hidden[body].float()), dim=-1).cpu().numpy()
                colbert_list = np.split(vecs, np.cumsum(lens_np - 1)[:-1])
        return dense_np, sparse_list, colbert_list

    def _packed_layer(self, layer, hidden, b, width, slot, attn_mask, query_rows):
        """One BERT/XLM-R encoder layer on packed rows. ``query_rows``: keep only those rows
        (the CLS rows of the last layer when nothing else is needed)."""
        att = layer.attention
        sa = att.self
        nh, hd = sa.num_attention_heads, sa.attention_head_size
        q_in = hidden if query_rows is None else hidden[query_rows]
        q = sa.query(q_in)
        k = sa.key(hidden)
        v = sa.value(hidden)
        h = q.shape[-1]
        if slot is None:  # one text, or texts of one length: a plain reshape
            kk = k.view(b, width, nh, hd).transpose(1, 2)
            vv = v.view(b, width, nh, hd).transpose(1, 2)
        else:
            kk = k.new_zeros(b * width, h).index_copy_(0, slot, k).view(b, width, nh, hd).transpose(1, 2)
            vv = v.new_zeros(b * width, h).index_copy_(0, slot, v).view(b, width, nh, hd).transpose(1, 2)
        if query_rows is not None:
            qq = q.view(b, 1, nh, hd).transpose(1, 2)
        elif slot is None:
            qq = q.view(b, width, nh, hd).transpose(1, 2)
        else:
            qq = q.new_zeros(b * width, h).index_copy_(0, slot, q).view(b, width, nh, hd).transpose(1, 2)
        ctx = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, attn_mask=attn_mask, scale=sa.scaling)
        ctx = ctx.transpose(1, 2).reshape(-1, h)
        if query_rows is None and slot is not None:
            ctx = ctx[slot]
        attn_out = att.output(ctx, q_in)
        return layer.output(layer.intermediate(attn_out), attn_out)

    def _sparse_dicts(self, rows: torch.Tensor, tok: torch.Tensor, w: torch.Tensor, n_rows: int) -> list[dict[int, float]]:
        """Max weight per (row, token id), vectorised, as one dict per row."""
        key = rows.to(torch.int64) * int(self.vocab_size + 1) + tok
        uniq, inverse = torch.unique(key, return_inverse=True)
        best = torch.zeros(uniq.shape[0], dtype=w.dtype, device=w.device).scatter_reduce(0, inverse, w, reduce="amax", include_self=False)
        urow = (uniq // (self.vocab_size + 1)).cpu().numpy()
        utok = (uniq % (self.vocab_size + 1)).cpu().numpy().tolist()
        uval = best.cpu().numpy().tolist()
        bounds = np.searchsorted(urow, np.arange(n_rows + 1))
        return [dict(zip(utok[a:b], uval[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- helpers

def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _check_texts(texts: Union[str, Iterable[str]]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if texts is None:
        raise TypeError("texts must be a list of strings; got None")
    if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a list of strings; got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str; every item must be a string")
    return texts


_ROBERTA_TYPES = ("xlm-roberta", "roberta", "camembert")
_BERT_TYPES = ("bert",)


def _packed_kind(model: torch.nn.Module) -> Optional[str]:
    """Which unpadded path fits ``model``: "roberta", "bert", or None (use the padded path).

    Only encoder-only BERT / (XLM-)RoBERTa models with absolute position embeddings and the
    standard Hugging Face module layout qualify; anything else keeps the reference path.
    """
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", "")
    if mtype not in _ROBERTA_TYPES + _BERT_TYPES:
        return None
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return None
    if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
        return None
    try:
        layer = model.encoder.layer[0]
        sa = layer.attention.self
        _ = (model.embeddings.position_embeddings, sa.query, sa.key, sa.value, sa.num_attention_heads,
             sa.attention_head_size, sa.scaling, layer.attention.output, layer.intermediate, layer.output)
        if getattr(layer, "chunk_size_feed_forward", 0):
            return None
    except (AttributeError, IndexError, TypeError):
        return None
    return "roberta" if mtype in _ROBERTA_TYPES else "bert"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX), so ``dtype='bf16'`` pays off.

    Example::

        >>> from bgem3.encoder import cpu_has_fast_bf16
        >>> isinstance(cpu_has_fast_bf16(), bool)
        True
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "")()
    return "AMX" in str(cap).upper()


def _is_oom(exc: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    return bool(oom_types) and isinstance(exc, oom_types)
