"""What a graph is fed and which of its outputs is the last hidden state (shared by ONNX Runtime and OpenVINO)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Output names that hold the last hidden states ``[B, T, H]`` (Optimum / sentence-transformers / our exports).
HIDDEN_OUTPUT_NAMES = ("last_hidden_state", "token_embeddings", "hidden_states", "hidden")


def check_inputs(path: str, names: Sequence[str]) -> None:
    """Refuse a graph whose inputs we cannot feed (we feed ids, the mask, zero token types, plain positions)."""
    if "input_ids" not in names:
        raise ValueError(f"the graph {path!r} has no 'input_ids' input (its inputs: {list(names)}); "
                         "bgem3 runs graphs that take token ids, as Optimum / sentence-transformers / `bgem3 export` write them")
    other = [n for n in names if n not in ("input_ids", "attention_mask", "token_type_ids", "position_ids")]
    if other:
        raise ValueError(f"the graph {path!r} takes input(s) {other} that bgem3 does not feed (a decoder exported "
                         "with a KV cache?); export it for feature extraction without past_key_values, "
                         "or let bgem3 export it (drop model_kwargs['file_name'])")


def feeds(names: Sequence[str], input_ids: np.ndarray, attention_mask: np.ndarray) -> dict:
    """The inputs for one padded batch, for the names the graph declares."""
    out = {"input_ids": input_ids}
    if "attention_mask" in names:
        out["attention_mask"] = attention_mask
    if "token_type_ids" in names:
        out["token_type_ids"] = np.zeros_like(input_ids)
    if "position_ids" in names:  # what transformers uses when none are passed: 0..T-1 on every row
        out["position_ids"] = np.broadcast_to(np.arange(input_ids.shape[1], dtype=np.int64), input_ids.shape).copy()
    return out


def pick_hidden_output(path: str, outputs: Sequence[tuple[str, int]]) -> int:
    """Index of the last-hidden-state output among ``(name, rank)`` pairs, else a ``ValueError``."""
    for want in HIDDEN_OUTPUT_NAMES:
        for i, (name, _rank) in enumerate(outputs):
            if name == want:
                return i
    rank3 = [i for i, (_n, r) in enumerate(outputs) if r == 3]
    names = [n for n, _ in outputs]
    if len(outputs) == 1 and rank3:
        return rank3[0]
    if {"dense_vecs", "sparse_vecs", "colbert_vecs"} & set(names):
        raise ValueError(f"the graph {path!r} outputs {names}: heads already applied inside it, so bgem3 cannot apply "
                         "FlagEmbedding's sparse/ColBERT rules to its hidden states. Use a graph with a "
                         "'last_hidden_state' output (drop model_kwargs['file_name'] to let bgem3 export one)")
    raise ValueError(f"the graph {path!r} has no last-hidden-state output (its outputs: {names}); bgem3 needs "
                     f"one named {' / '.join(HIDDEN_OUTPUT_NAMES)} of shape [batch, tokens, hidden]")
