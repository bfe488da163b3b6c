"""BGE cross-encoder and LLM rerankers, scored exactly as FlagEmbedding 1.4.2 scores them (framework-free).

Two families, each matched to its reference class:

* ``kind="encoder"`` -- ``*ForSequenceClassification`` with one label (bge-reranker-base, -large,
  -v2-m3, and any folder of that shape): FlagReranker. The query is cut to ``query_max_length``
  tokens (default ``max_length * 3 // 4``), the passage to ``max_length``, then the pair is built
  with the tokenizer's specials and only the passage is cut so the pair fits ``max_length``
  (with Transformers 5, as FlagEmbedding does, the two id lists are decoded and tokenized again as
  a pair). The score is the single logit; ``normalize=True`` is its sigmoid.
* ``kind="llm"`` -- a causal LM read at its last token (bge-reranker-v2-gemma): FlagLLMReranker.
  ``"A: " + query`` (cut to ``query_max_length``) after ``<bos>``, then ``"\\n" + "B: " + passage``
  cut so the pair fits ``max_length + len("\\n") + len(prompt)`` tokens, then ``"\\n" + prompt``;
  the score is the logit of the first token of ``"Yes"``.

The layer-wise (bge-reranker-v2-minicpm-layerwise) and lightweight (bge-reranker-v2.5-gemma2-
lightweight) rerankers run their own remote modelling code with per-layer / compression options;
bgem3 refuses them by name rather than approximate them.

Batches are length-sorted and capped by ``batch_size`` and a padded-token budget
(``max_tokens_per_batch``); XLM-R / BERT cross-encoders run on the encoder's unpadded path (every
linear layer on the real tokens only), which gives the same scores to float rounding.

Example::

    >>> from bgem3 import Reranker                                              # doctest: +SKIP
    >>> rr = Reranker("BAAI/bge-reranker-v2-m3")                                # doctest: +SKIP
    >>> rr.compute_score([("what is a panda?", "The giant panda is a bear.")])  # doctest: +SKIP
    [5.26]
    >>> [(h.index, round(h.score, 3)) for h in rr.rerank("what is a panda?",   # doctest: +SKIP
    ...     ["hi", "The giant panda is a bear native to China."], top_n=1, normalize=True)]
    [(1, 0.995)]
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import threading
import weakref
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from . import _unpadded
from ._attention import packed_layout
from ._batching import plan_batches, run_batches
from ._checks import check_pairs as _check_pairs, check_query, check_rank_texts as check_texts, check_top_n
from ._checks import positive_int as _check_positive_int
from .encoder import (DTypeLike, ModelLoadError, default_tokens_per_batch, resolve_device, resolve_dtype,
                      resolve_model_path)
from .families import (family_for_name, folder_architectures, is_cross_encoder_folder, reranker_for_name)
from .profiles import M3_HEAD_FILES
from .types import RankedText

logger = logging.getLogger(__name__)

__all__ = ["RankedText", "Reranker", "DEFAULT_LLM_PROMPT", "RERANKER_KINDS", "check_query", "check_texts",
           "is_reranker", "resolve_reranker", "shared_reranker"]

#: FlagLLMReranker's default prompt.
DEFAULT_LLM_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the "
                      "query by providing a prediction of either 'Yes' or 'No'.")

#: The kinds :class:`Reranker` runs (``kind=`` or detected).
RERANKER_KINDS = ("encoder", "llm")

#: FlagEmbedding's per-kind instruction defaults: (query instruction, passage instruction).
_INSTRUCTION_DEFAULTS = {"encoder": (None, None), "llm": ("A: ", "B: ")}

_UNSUPPORTED_KINDS = {
    "layerwise": ("LayerWiseFlagLLMReranker", "cutoff_layers"),
    "lightweight": ("LightWeightFlagLLMReranker", "cutoff_layers, compress_ratio and compress_layers"),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Reranker:
    """A BGE cross-encoder (FlagReranker) or LLM reranker (FlagLLMReranker), loaded once.

    Args:
        model_name_or_path: a hub id (``"BAAI/bge-reranker-v2-m3"``) or a local folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; default cuda > mps > cpu.
        dtype: ``"fp32"``, ``"fp16"`` (GPU), ``"bf16"``; default fp16 on CUDA/MPS, fp32 on CPU
            (the policy of :class:`~bgem3.Encoder`); ``"int8"`` on CPU for cross-encoders (:mod:`bgem3.quant`,
            checked by the int8 fidelity gates; docs/rerank.md).
        kind: ``"encoder"`` or ``"llm"``; default from the name (FlagEmbedding's reranker mapping) or
            the folder (a ``*ForSequenceClassification`` with one label is an encoder reranker).
        max_length: longest pair in tokens (FlagEmbedding's ``max_length``, default 512).
        query_max_length: longest query in tokens (default ``max_length * 3 // 4``).
        batch_size: most pairs in one forward pass.
        max_tokens_per_batch: most padded tokens in one forward pass (length x count); default 4096 on CPU
            (measured faster there: smaller passes stay in cache), 16384 on an accelerator. A value given is used.
        normalize: default of ``compute_score``'s ``normalize`` (the sigmoid of the logit).
        prompt: the LLM reranker's prompt (default FlagLLMReranker's); refused for encoders.
        query_instruction_for_rerank / passage_instruction_for_rerank / query_instruction_format /
            passage_instruction_format: as FlagEmbedding (LLM defaults ``"A: "`` / ``"B: "``).
        trust_remote_code / local_files_only / cache_dir / revision: loading options.

    Example::

        >>> rr = Reranker("BAAI/bge-reranker-v2-m3", device="cpu")                   # doctest: +SKIP
        >>> rr.rerank("what is BM25?", ["pandas eat bamboo", "BM25 ranks documents"])  # doctest: +SKIP
        [RankedText(index=1, score=3.2), RankedText(index=0, score=-9.1)]
    """

    def __init__(
        self,
        model_name_or_path: Union[str, os.PathLike],
        device: Optional[Union[str, torch.device]] = None,
        dtype: DTypeLike = None,
        *,
        kind: Optional[str] = None,
        max_length: int = 512,
        query_max_length: Optional[int] = None,
        batch_size: int = 128,
        max_tokens_per_batch: Optional[int] = None,
        normalize: bool = False,
        prompt: Optional[str] = None,
        query_instruction_for_rerank: Optional[str] = ...,  # type: ignore[assignment]
        query_instruction_format: str = "{}{}",
        passage_instruction_for_rerank: Optional[str] = ...,  # type: ignore[assignment]
        passage_instruction_format: str = "{}{}",
        trust_remote_code: bool = False,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        revision: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        self._refuse_options(kwargs, model_name_or_path)
        #: how to load this reranker again (pickling, :func:`shared_reranker`)
        self._load_options = {k: v for k, v in dict(
            device=None if device is None else str(device), dtype=dtype, kind=kind, max_length=max_length,
            query_max_length=query_max_length, batch_size=batch_size, max_tokens_per_batch=max_tokens_per_batch,
            normalize=normalize, prompt=prompt, query_instruction_for_rerank=query_instruction_for_rerank,
            query_instruction_format=query_instruction_format,
            passage_instruction_for_rerank=passage_instruction_for_rerank,
            passage_instruction_format=passage_instruction_format, trust_remote_code=trust_remote_code,
            local_files_only=local_files_only, cache_dir=cache_dir, revision=revision).items()
            if v is not ... and not (isinstance(v, torch.dtype))}
        if isinstance(dtype, torch.dtype):
            self._load_options["dtype"] = str(dtype).replace("torch.", "")
        self.max_length = _check_positive_int(max_length, "max_length")
        self.query_max_length = None if query_max_length is None else _check_positive_int(query_max_length, "query_max_length")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        if max_tokens_per_batch is not None:
            _check_positive_int(max_tokens_per_batch, "max_tokens_per_batch")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False; got {normalize!r}")
        self.normalize = normalize
        self.model_name = os.fspath(model_name_or_path) if isinstance(model_name_or_path, (str, os.PathLike)) \
            else model_name_or_path
        if isinstance(self.model_name, str):  # refused by name before anything is downloaded
            known = reranker_for_name(self.model_name)
            if known is not None and known[0] in _UNSUPPORTED_KINDS:
                self._refuse_kind(known)
            if known is None and family_for_name(self.model_name) is not None:
                self._check_not_embedder(None, folder=False)
        self.path = resolve_model_path(model_name_or_path, cache_dir=cache_dir, revision=revision,
                                       local_files_only=local_files_only)
        self.kind = self._detect_kind(kind)
        if prompt is not None and self.kind != "llm":
            raise ValueError(f"prompt= is for LLM rerankers (bge-reranker-v2-gemma); {self.model_name!r} is a "
                             "cross-encoder, which takes no prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string; got {type(prompt).__name__}")
        self.prompt = DEFAULT_LLM_PROMPT if prompt is None else prompt
        q_def, p_def = _INSTRUCTION_DEFAULTS[self.kind]
        self.query_instruction = q_def if query_instruction_for_rerank is ... else query_instruction_for_rerank
        self.passage_instruction = p_def if passage_instruction_for_rerank is ... else passage_instruction_for_rerank
        for name, fmt in (("query_instruction_format", query_instruction_format),
                          ("passage_instruction_format", passage_instruction_format)):
            if not isinstance(fmt, str) or fmt.count("{}") != 2:
                raise ValueError(f"{name} must be a string with two '{{}}' (instruction, text); got {fmt!r}")
        # FlagEmbedding's get_detailed_instruct turns a literal backslash-n into a newline
        self.query_instruction_format = query_instruction_format.replace("\\n", "\n")
        self.passage_instruction_format = passage_instruction_format.replace("\\n", "\n")

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        #: padded tokens per forward pass: the one given, else the default for this device (4096 on CPU)
        self.max_tokens_per_batch: int = max_tokens_per_batch or default_tokens_per_batch(self.device)
        if self.dtype == torch.qint8 and self.kind != "encoder":
            raise ValueError("dtype='int8' is for cross-encoder rerankers (bgem3.quant quantises an encoder stack); "
                             f"{self.model_name!r} is an LLM reranker: use dtype='bf16' or the fp32 default on CPU")
        #: the int8 report (bgem3.quant) when dtype='int8'
        self.quantization: Optional[dict] = None
        self._lock = threading.Lock()
        self.tokenizer = self._load_tokenizer(trust_remote_code)
        self.model = self._load_model(trust_remote_code)
        cfg = self.model.config
        if self.kind == "encoder":
            n_labels = int(getattr(cfg, "num_labels", 1))
            if n_labels != 1:
                raise ModelLoadError(f"{self.path!r} is a sequence classifier with {n_labels} labels; a reranker has one "
                                     "(its logit is the relevance score). Use a one-label cross-encoder.")
            self._packed = _unpadded.packed_kind(self.model.base_model)
            self._head = type(self.model).__name__
            if self._head not in ("XLMRobertaForSequenceClassification", "RobertaForSequenceClassification",
                                  "BertForSequenceClassification", "CamembertForSequenceClassification") \
                    or not type(self.model).__module__.startswith("transformers."):
                self._packed = None  # another head, or the model's own remote code: the model's own forward
        else:
            self._packed = None
            self.yes_loc = int(self.tokenizer("Yes", add_special_tokens=False)["input_ids"][0])
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)
        #: the most tokens the model takes in one sequence (its position table)
        self.model_max_length = self._model_limit()
        self._check_length(self.max_length, "max_length")
        if self.dtype == torch.qint8:
            self._quantize()

    def _model_limit(self) -> int:
        cfg = self.model.config
        limits = []
        max_pos = getattr(cfg, "max_position_embeddings", None)
        if max_pos:
            offset = (cfg.pad_token_id + 1) if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert") \
                else 0
            limits.append(int(max_pos) - int(offset or 0))
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if self.kind == "encoder" and tok_max and tok_max < 1_000_000:
            limits.append(int(tok_max))
        return min(limits) if limits else 1 << 30

    def _longest(self, max_length: int) -> int:
        """The longest sequence ``max_length`` allows: the pair itself (encoders); for LLM rerankers the pair
        may take ``max_length + len(sep) + len(prompt)`` tokens (FlagLLMReranker's budget), then the separator
        and the prompt follow it."""
        if self.kind == "encoder":
            return max_length
        tok = self.tokenizer
        sep = len(tok("\n", add_special_tokens=False)["input_ids"])
        prompt = len(tok(self.prompt, add_special_tokens=False)["input_ids"])
        return max_length + 2 * (sep + prompt)

    def _check_length(self, max_length: int, name: str) -> int:
        if self._longest(max_length) > self.model_max_length:
            raise ValueError(f"{name}={max_length} is longer than {self.model_name!r} takes ({self.model_max_length} "
                             f"positions{'' if self.kind == 'encoder' else ', prompt included'}); use a smaller {name}")
        return max_length

    def _quantize(self) -> None:
        """``dtype='int8'``: the encoder stack's linear layers in int8, calibrated and measured by
        :mod:`bgem3.quant` as for :class:`~bgem3.Encoder` (the most sensitive layers stay fp32; embeddings,
        LayerNorm, attention, GELU and the classification head stay fp32)."""
        from .quant import CALIBRATION_TEXTS, has_vnni, quantize_linear_layers, select_engine, warn_if_slow

        select_engine()
        warn_if_slow()
        texts = list(CALIBRATION_TEXTS)

        def run(batch):  # calibration pairs: each text as a query against the next one as the passage
            b = list(batch)
            self.compute_score([(q, b[(i + 1) % len(b)]) for i, q in enumerate(b)], show_progress=False)

        report = quantize_linear_layers(self.model.base_model, run, texts=texts)
        report["vnni"] = has_vnni()
        self.quantization = report
        logger.info("reranker int8: %d linear layers quantised, %d kept fp32", report["int8_layers"],
                    len(report["fp32_layers"]))

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _refuse_options(kwargs: dict, name: Any) -> None:
        if not kwargs:
            return
        layer_opts = {"cutoff_layers", "compress_ratio", "compress_layers", "compress_layer"}
        for key in kwargs:
            if key in layer_opts:
                raise ValueError(f"{key}= is an option of FlagEmbedding's layer-wise / lightweight LLM rerankers, which "
                                 f"bgem3 does not run (see bgem3.Reranker's docs); {name!r} takes no such option")
        hints = {"use_fp16": "use dtype='fp16' (GPU) or leave dtype=None (fp16 on GPUs, fp32 on CPU)",
                 "use_bf16": "use dtype='bf16'", "devices": "use device='cuda:0' (one device per Reranker)",
                 "peft_path": "merge the LoRA into the model first (peft's merge_and_unload) and pass that folder",
                 "model": "pass the model as the first argument (model_name_or_path)",
                 "top_n": "pass top_n to rerank(...)", "top_k": "pass top_n to rerank(...)"}
        key = sorted(kwargs)[0]
        raise TypeError(f"Reranker got an unexpected option {key}=; " + hints.get(key, "see help(bgem3.Reranker)"))

    def _detect_kind(self, kind: Optional[str]) -> str:
        name = self.model_name if isinstance(self.model_name, str) else None
        known = reranker_for_name(name) or reranker_for_name(self.path)
        if known is not None and known[0] in _UNSUPPORTED_KINDS:
            self._refuse_kind(known)
        if kind is not None:
            if kind not in RERANKER_KINDS:
                if kind in _UNSUPPORTED_KINDS:
                    raise ValueError(f"kind={kind!r} rerankers need remote code bgem3 does not run; "
                                     f"use FlagEmbedding's {_UNSUPPORTED_KINDS[kind][0]}")
                raise ValueError(f"kind must be one of {RERANKER_KINDS} (or None: detected); got {kind!r}")
            if known is not None and known[0] != kind:
                raise ValueError(f"kind={kind!r} contradicts {self.model_name!r}, a known {known[0]} reranker "
                                 f"({known[1]}); leave kind out")
        self._check_not_embedder(known)
        archs = folder_architectures(self.path)
        if kind is None:
            if known is not None:
                kind = known[0]
            elif is_cross_encoder_folder(self.path):
                kind = "encoder"
            elif any(a.endswith("ForCausalLM") for a in archs):
                raise ModelLoadError(
                    f"{self.model_name!r} is a causal LM ({', '.join(archs)}) that bgem3 does not know as a reranker; "
                    "if it is an LLM reranker scored by its 'Yes' logit (as bge-reranker-v2-gemma), pass kind='llm'")
            else:
                raise ModelLoadError(
                    f"{self.model_name!r} is not a reranker: its config declares {archs or 'no architectures'}, and a "
                    "cross-encoder declares a *ForSequenceClassification with one label. "
                    "Pass a reranker (e.g. BAAI/bge-reranker-v2-m3), or kind='encoder' / 'llm' if you know better")
        if kind == "encoder" and archs and not is_cross_encoder_folder(self.path):
            raise ModelLoadError(f"kind='encoder' needs a *ForSequenceClassification folder; {self.path!r} declares "
                                 f"{', '.join(archs)}")
        if kind == "encoder":
            n_labels = _num_labels(self.path)
            if n_labels is not None and n_labels != 1:
                raise ModelLoadError(f"{self.path!r} is a sequence classifier with {n_labels} labels; a reranker has one "
                                     "(its logit is the relevance score). Use a one-label cross-encoder.")
        if kind == "llm" and archs and not any(a.endswith("ForCausalLM") for a in archs):
            raise ModelLoadError(f"kind='llm' needs a causal LM (*ForCausalLM) folder; {self.path!r} declares "
                                 f"{', '.join(archs)}")
        return kind

    def _refuse_kind(self, known: tuple) -> None:
        ref, opts = _UNSUPPORTED_KINDS[known[0]]
        raise ModelLoadError(
            f"{self.model_name!r} is a {known[0]} LLM reranker: FlagEmbedding runs it with {ref}, which needs the "
            f"model's own remote modelling code and its {opts} options. bgem3 does not run that code and will not "
            f"approximate it; use FlagEmbedding's {ref} for this model, or bge-reranker-v2-m3 / "
            "bge-reranker-v2-gemma with bgem3.Reranker")

    def _check_not_embedder(self, known: Any, folder: bool = True) -> None:
        if known is not None:
            return
        name = self.model_name if isinstance(self.model_name, str) else None
        fam = family_for_name(name) or (family_for_name(self.path) if folder else None)
        heads = folder and all(os.path.isfile(os.path.join(self.path, f)) for f in M3_HEAD_FILES)
        st = folder and os.path.isfile(os.path.join(self.path, "modules.json")) and not is_cross_encoder_folder(self.path)
        if fam is not None or heads or st:
            what = f"the {fam.hub_id} embedding model" if fam is not None else (
                "a BGE-M3 embedding checkpoint" if heads else "a sentence-transformers embedding model")
            raise ModelLoadError(
                f"{self.model_name!r} is {what}, not a reranker: it embeds texts, it does not score query-passage "
                "pairs. Load it with bgem3.Encoder(...) (or rerank with its channels: bgem3.HybridReranker), "
                "and pass a cross-encoder such as BAAI/bge-reranker-v2-m3 to bgem3.Reranker")

    def _load_tokenizer(self, trust_remote_code: bool):
        from transformers import AutoTokenizer

        from .encoder import TOKENIZER_FILES

        present = set(os.listdir(self.path))
        if not (present & set(TOKENIZER_FILES)):
            raise ModelLoadError(f"{self.path!r} has no tokenizer file (one of {', '.join(TOKENIZER_FILES)}); copy the "
                                 "model's tokenizer files into the folder")
        try:
            return AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(f"cannot load a tokenizer from {self.path!r} ({type(exc).__name__}: {exc})") from None

    def _load_model(self, trust_remote_code: bool) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        cls = AutoModelForSequenceClassification if self.kind == "encoder" else AutoModelForCausalLM
        load_dtype = torch.float32 if self.dtype == torch.qint8 else self.dtype
        try:
            model = cls.from_pretrained(self.path, dtype=load_dtype, trust_remote_code=trust_remote_code)
        except Exception as exc:
            known = reranker_for_name(self.model_name if isinstance(self.model_name, str) else None)
            hint = (" This model ships its own modelling code: pass trust_remote_code=True if you trust it."
                    if known is not None and known[2] and not trust_remote_code else "")
            raise ModelLoadError(f"cannot load reranker weights from {self.path!r} ({type(exc).__name__}: {exc}). "
                                 "Check that the folder holds a complete checkpoint (config.json + model.safetensors)."
                                 + hint) from None
        model.to(self.device)
        model.eval()
        model.requires_grad_(False)
        return model

    def __repr__(self) -> str:
        return (f"Reranker({self.model_name!r}, kind={self.kind!r}, device='{self.device}', "
                f"dtype={str(self.dtype).replace('torch.', '')}, max_length={self.max_length})")

    # ------------------------------------------------------------------ public API
    def compute_score(
        self,
        sentence_pairs: Union[Sequence[Sequence[str]], Sequence[str]],
        *,
        normalize: Optional[bool] = None,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        query_max_length: Optional[int] = None,
        show_progress: Optional[bool] = None,
    ) -> list[float]:
        """Scores of ``(query, passage)`` pairs, in input order: what FlagEmbedding 1.4.2's
        ``compute_score`` returns for the same checkpoint (a list of floats; one ``(query, passage)``
        pair gives a list of one).

        Args:
            sentence_pairs: a list of ``(query, passage)`` pairs, or one pair.
            normalize: the sigmoid of the logits (default: the reranker's ``normalize``).
            batch_size / max_length / query_max_length: per-call overrides.
            show_progress: a tqdm bar; ``None`` shows it for multi-batch work on a TTY.
        """
        pairs = _check_pairs(sentence_pairs)
        return self._scores(pairs, normalize, batch_size, max_length, query_max_length, show_progress).tolist()

    def score(self, query: str, texts: Sequence[str], *, normalize: Optional[bool] = None,
              batch_size: Optional[int] = None, max_length: Optional[int] = None,
              show_progress: Optional[bool] = None) -> np.ndarray:
        """``float64 [N]``: the score of each of ``texts`` for ``query``, in input order."""
        query = check_query(query)
        texts = check_texts(texts)
        return self._scores([(query, t) for t in texts], normalize, batch_size, max_length, None, show_progress)

    def rerank(self, query: str, texts: Sequence[str], top_n: Optional[int] = None, *,
               normalize: Optional[bool] = None, batch_size: Optional[int] = None,
               max_length: Optional[int] = None, show_progress: Optional[bool] = None) -> list[RankedText]:
        """``texts`` best first (ties keep the input order), at most ``top_n`` (``None``: all).

        Example::

            >>> [h.index for h in rr.rerank("panda", ["cars", "pandas eat bamboo"])]   # doctest: +SKIP
            [1, 0]
        """
        top_n = check_top_n(top_n)
        s = self.score(query, texts, normalize=normalize, batch_size=batch_size, max_length=max_length,
                       show_progress=show_progress)
        order = np.argsort(-s, kind="stable")
        if top_n is not None:
            order = order[:top_n]
        return [RankedText(int(i), float(s[i])) for i in order]

    async def acompute_score(self, sentence_pairs: Any, **kwargs: Any) -> list[float]:
        """:meth:`compute_score`, awaitable (the model runs in a worker thread)."""
        return await asyncio.to_thread(functools.partial(self.compute_score, sentence_pairs, **kwargs))

    async def arerank(self, query: str, texts: Sequence[str], top_n: Optional[int] = None, **kwargs: Any) -> list[RankedText]:
        """:meth:`rerank`, awaitable (the model runs in a worker thread)."""
        return await asyncio.to_thread(functools.partial(self.rerank, query, texts, top_n, **kwargs))

    # ------------------------------------------------------------------ tokenization
    def _instruct(self, pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
        qi, pi = self.query_instruction, self.passage_instruction
        queries = [q if qi is None else self.query_instruction_format.format(qi, q) for q, _ in pairs]
        passages = [p if pi is None else self.passage_instruction_format.format(pi, p) for _, p in pairs]
        return queries, passages

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]], max_length: Optional[int] = None,
                       query_max_length: Optional[int] = None) -> tuple[list[list[int]], Optional[list[list[int]]]]:
        """The token ids (and token type ids, ``None`` where the model takes none) of each pair, as
        the reference builds them (see the module docs), truncation included. ``max_length`` is not checked
        against the model here (a server may tokenize uncut to see whether a pair would be cut)."""
        ml = self.max_length if max_length is None else _check_positive_int(max_length, "max_length")
        qml = query_max_length if query_max_length is not None else self.query_max_length
        qml = ml * 3 // 4 if qml is None else _check_positive_int(qml, "query_max_length")
        queries, passages = self._instruct(list(pairs))
        tok = self.tokenizer
        with self._lock:
            q_ids = tok(queries, add_special_tokens=False, max_length=qml, truncation=True)["input_ids"]
            p_ids = tok(passages, add_special_tokens=False, max_length=ml, truncation=True)["input_ids"]
            if self.kind == "encoder":
                return self._encoder_pairs(q_ids, p_ids, ml)
            return self._llm_pairs(q_ids, p_ids, ml), None

    def _encoder_pairs(self, q_ids, p_ids, ml):
        tok = self.tokenizer
        want_tt = "token_type_ids" in getattr(tok, "model_input_names", [])
        legacy = getattr(tok, "prepare_for_model", None)
        ids, tts = [], []
        if callable(legacy):  # Transformers 4: the reference pairs the id lists directly
            for q, p in zip(q_ids, p_ids):
                item = legacy(list(q), list(p), truncation="only_second", max_length=ml, padding=False)
                ids.append(list(item["input_ids"]))
                tts.append(list(item.get("token_type_ids") or [0] * len(item["input_ids"])))
        else:  # Transformers 5: decoded (specials kept) and tokenized again as a pair, as the reference does
            dq = tok.batch_decode(q_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            dp = tok.batch_decode(p_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            try:
                enc = tok(dq, dp, truncation="only_second", max_length=ml, padding=False,
                          return_token_type_ids=want_tt)
            except Exception as exc:
                raise ValueError(f"a pair cannot be cut to max_length={ml} tokens by shortening the passage alone "
                                 f"({exc}); use a larger max_length or a smaller query_max_length") from None
            ids = [list(x) for x in enc["input_ids"]]
            tts = [list(x) for x in enc["token_type_ids"]] if want_tt else []
        return ids, (tts if want_tt else None)

    def _llm_pairs(self, q_ids, p_ids, ml):
        tok = self.tokenizer
        prompt_ids = tok(self.prompt, add_special_tokens=False)["input_ids"]
        sep_ids = tok("\n", add_special_tokens=False)["input_ids"]
        room = ml + len(sep_ids) + len(prompt_ids)
        bos = tok.bos_token_id
        lead = [bos] if bos is not None and bos != tok.pad_token_id else []
        left = getattr(tok, "truncation_side", "right") == "left"
        out = []
        for q, p in zip(q_ids, p_ids):
            first = lead + list(q)
            second = list(sep_ids) + list(p)
            cut = len(first) + len(second) - room
            if 0 < cut < len(second):  # only the passage is cut; if it cannot absorb the cut, nothing is
                second = second[cut:] if left else second[:-cut]
            out.append(first + second + list(sep_ids) + list(prompt_ids))
        return out

    # ------------------------------------------------------------------ scoring
    def _scores(self, pairs, normalize, batch_size, max_length, query_max_length, show_progress) -> np.ndarray:
        normalize = self.normalize if normalize is None else normalize
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False; got {normalize!r}")
        bs = self.batch_size if batch_size is None else _check_positive_int(batch_size, "batch_size")
        if max_length is not None:
            self._check_length(_check_positive_int(max_length, "max_length"), "max_length")
        n = len(pairs)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        ids, tts = self.tokenize_pairs(pairs, max_length, query_max_length)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order, batches = plan_batches(lengths, bs, self.max_tokens_per_batch)
        out = np.empty(n, dtype=np.float64)

        def store(idx: np.ndarray, res: np.ndarray) -> None:
            out[idx] = res

        run_batches(order, batches,
                    lambda idx: self._forward([ids[j] for j in idx], None if tts is None else [tts[j] for j in idx]),
                    store, device=self.device, show_progress=show_progress, desc="Reranking", unit="pair")
        return _sigmoid(out) if normalize else out

    def _pad(self, rows: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        arr = np.full((len(rows), width), fill, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, row in enumerate(rows):
            arr[r, : len(row)] = row
            mask[r, : len(row)] = 1
        return torch.from_numpy(arr).to(self.device), torch.from_numpy(mask).to(self.device)

    def _forward(self, batch_ids: list[list[int]], batch_tts: Optional[list[list[int]]]) -> np.ndarray:
        with torch.inference_mode():
            if self.kind == "llm":
                return self._forward_llm(batch_ids)
            if self._packed:
                return self._forward_packed(batch_ids, batch_tts)
            input_ids, mask = self._pad(batch_ids, self.pad_token_id)
            kw = {}
            if batch_tts is not None:
                kw["token_type_ids"] = self._pad(batch_tts, 0)[0]
            logits = self.model(input_ids=input_ids, attention_mask=mask, **kw).logits
            return logits.view(-1).float().cpu().numpy().astype(np.float64)

    def _forward_llm(self, batch_ids: list[list[int]]) -> np.ndarray:
        """Right-padded (causal attention never sees the pads, so each row is scored as if alone), the
        base model's hidden state at each row's last token through ``lm_head``; the "Yes" logit."""
        input_ids, mask = self._pad(batch_ids, self.pad_token_id)
        model = self.model
        hidden = model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        last = mask.sum(dim=1) - 1
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = model.get_output_embeddings()(h)
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits[:, self.yes_loc].float().cpu().numpy().astype(np.float64)

    def forward_tokenized(self, batch_ids: list[list[int]], batch_tts: Optional[list[list[int]]] = None) -> np.ndarray:
        """Raw scores (logits, no sigmoid) of already tokenized pairs (:meth:`tokenize_pairs`), one forward pass,
        in the given order. For servers that batch pairs from many requests."""
        return self._forward(batch_ids, batch_tts)

    def __reduce__(self) -> tuple:
        """Pickled as how to load it again; in the process that holds it, unpickling gives the same object."""
        token = getattr(self, "_bgem3_token", None)
        if token is None:
            token = f"{_PROCESS}-{next(_TOKENS)}"
            self._bgem3_token = token
        _LIVE[token] = self
        where = self.path if os.path.isdir(self.path) else os.fspath(self.model_name)
        return _restore_reranker, (token, where, dict(self._load_options))

    def _forward_packed(self, batch_ids: list[list[int]], batch_tts: Optional[list[list[int]]]) -> np.ndarray:
        """The unpadded path (:mod:`bgem3._unpadded`, as :class:`~bgem3.Encoder`'s: every linear layer on the real
        tokens only, attention per text), keeping only the CLS rows at the last layer, then the model's own head."""
        dev = self.device
        b = len(batch_ids)
        lens_np = np.fromiter((len(x) for x in batch_ids), dtype=np.int64, count=b)
        total = int(lens_np.sum())
        flat = np.fromiter((t for row in batch_ids for t in row), dtype=np.int64, count=total)
        starts_np = np.cumsum(lens_np) - lens_np
        local_np = np.arange(total, dtype=np.int64) - np.repeat(starts_np, lens_np)
        ids = torch.from_numpy(flat).to(dev)
        local = torch.from_numpy(local_np).to(dev)
        starts = torch.from_numpy(starts_np).to(dev)
        lens = torch.from_numpy(lens_np).to(dev)
        base = self.model.base_model
        pos = _unpadded.packed_position_ids(self._packed, base.embeddings, ids, local, starts, lens)
        tt = None
        if batch_tts is not None:
            tt = torch.from_numpy(np.fromiter((t for row in batch_tts for t in row), dtype=np.int64,
                                              count=total)).to(dev).unsqueeze(0)
        hidden = base.embeddings(input_ids=ids.unsqueeze(0), token_type_ids=tt, position_ids=pos.unsqueeze(0)).squeeze(0)
        layout = packed_layout(lens_np, dev, local=local)
        layers = list(base.encoder.layer)
        for li, layer in enumerate(layers):
            hidden = _unpadded.packed_layer(layer, hidden, layout, starts if li == len(layers) - 1 else None)
        cls = hidden.unsqueeze(1)  # [B, 1, H]: the heads read features[:, 0]
        if self._head == "BertForSequenceClassification":
            logits = self.model.classifier(self.model.dropout(base.pooler(cls)))
        else:
            logits = self.model.classifier(cls)
        return logits.view(-1).float().cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------- sharing, pickling, resolving

_LIVE: "weakref.WeakValueDictionary[str, Reranker]" = weakref.WeakValueDictionary()
_TOKENS = itertools.count()
_PROCESS = f"{os.getpid()}-{id(_LIVE)}"
_CACHE: "weakref.WeakValueDictionary[Any, Reranker]" = weakref.WeakValueDictionary()
_CACHE_LOCK = threading.Lock()


def _restore_reranker(token: str, where: str, options: dict) -> "Reranker":
    live = _LIVE.get(token)
    if live is not None:
        return live
    return shared_reranker(where, **options)


def shared_reranker(model_name_or_path: Union[str, os.PathLike], **options: Any) -> Reranker:
    """The loaded :class:`Reranker` for this model and options, loaded once per process (weakly cached:
    two adapters over the same model share its weights)."""
    name = os.fspath(model_name_or_path)
    where = os.path.realpath(os.path.expanduser(name)) if os.path.isdir(os.path.expanduser(name)) else name
    try:
        key = (where, tuple(sorted((k, repr(v)) for k, v in options.items())))
    except Exception:  # pragma: no cover - repr never fails on plain options
        return Reranker(model_name_or_path, **options)
    with _CACHE_LOCK:
        rr = _CACHE.get(key)
        if rr is None:
            rr = Reranker(model_name_or_path, **options)
            _CACHE[key] = rr
        return rr


def is_reranker(obj: Any) -> bool:
    """Whether ``obj`` scores like a reranker: a :class:`Reranker`, a ``RemoteReranker``, or any object with
    ``compute_score(pairs)`` and ``rerank(query, texts, top_n)``."""
    return isinstance(obj, Reranker) or (callable(getattr(obj, "compute_score", None))
                                         and callable(getattr(obj, "rerank", None)))


def resolve_reranker(reranker: Any, **options: Any) -> Any:
    """A reranker from what a user passed: a :class:`Reranker` (or ``RemoteReranker``, or any object with
    ``compute_score`` and ``rerank``) as is; a ``bgem3 serve`` URL -> ``RemoteReranker``; a model name or
    folder -> a shared :class:`Reranker` loaded with ``options``."""
    if is_reranker(reranker):
        if options:
            raise TypeError(f"reranker options {sorted(options)} were given with an already-built reranker; pass them "
                            "to Reranker(...) instead, or pass a model name")
        return reranker
    if isinstance(reranker, (str, os.PathLike)):
        from ._http_client import is_url

        if is_url(os.fspath(reranker)):
            from .remote_rerank import remote_reranker_for

            return remote_reranker_for(os.fspath(reranker), **options)
        return shared_reranker(reranker, **options)
    raise TypeError(f"reranker must be a bgem3.Reranker, a RemoteReranker, a model name / folder or a bgem3 serve URL; "
                    f"got {type(reranker).__name__}")


def _num_labels(folder: str) -> Optional[int]:
    """Labels the folder's config declares (``id2label``, else ``num_labels``, else Transformers' default 2)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(cfg, dict):
        return None
    if isinstance(cfg.get("id2label"), dict) and cfg["id2label"]:
        return len(cfg["id2label"])
    n = cfg.get("num_labels", 2)
    return n if isinstance(n, int) else None
