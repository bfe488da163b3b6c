"""What the graph runtime plug-ins (:mod:`bgem3.backends.onnx`, :mod:`bgem3.backends.openvino`) share: the
interface they implement and the error for a missing runtime (a leaf: :mod:`bgem3.backends` imports the
plug-ins only when one is chosen, and they import this, never the package)."""

from __future__ import annotations

from typing import Iterable, Iterator

__all__ = ["EXTRAS", "GraphBackend", "missing_extra"]

#: The pip extra each graph backend needs.
EXTRAS = {"onnx": "onnx", "openvino": "openvino"}


def missing_extra(backend: str, module: str) -> ImportError:
    """The error when a graph backend's runtime is not installed: it names the extra."""
    return ImportError(f"backend={backend!r} needs the {module} package, which is not installed. "
                       f"Install the extra: pip install 'bgem3[{EXTRAS[backend]}]' (or use backend='torch')")


class GraphBackend:
    """A graph runtime that maps padded ``input_ids`` / ``attention_mask`` ``int64 [B, T]`` to the
    last hidden states ``float32 [B, T, H]``. Subclasses: :class:`~bgem3.backends.onnx.OnnxBackend`,
    :class:`~bgem3.backends.openvino.OpenVINOBackend`."""

    #: ``"onnx"`` / ``"openvino"``
    name = ""
    #: the graph file it runs
    path = ""
    #: padded tokens per batch the encoder aims at when the user sets no ``max_tokens_per_batch``
    #: (smaller batches than the torch path's 16384: the padded attention's working set stays in cache,
    #: and a bulk call has batches enough for every stream of :meth:`hidden_states_stream`)
    preferred_tokens_per_batch = 4096
    #: the encoder pads a batch's width up to a multiple of this (1: to the longest row): a runtime that
    #: prepares its kernels once per input shape then meets fewer shapes (OpenVINO: 8)
    width_multiple = 1

    def hidden_states(self, input_ids, attention_mask):  # pragma: no cover - interface
        raise NotImplementedError

    def bulk_streams(self) -> int:
        """How many batches :meth:`hidden_states_stream` keeps in flight at once (1: one after the other)."""
        return 1

    def hidden_states_stream(self, batches: Iterable) -> Iterator:
        """The hidden states of each ``(input_ids, attention_mask)`` pair of ``batches``, in their order.

        The base runs one batch at a time; a runtime that can overlap batches (OpenVINO's streams)
        overrides it. ``batches`` is read lazily, at most a few batches ahead of what was yielded."""
        for input_ids, attention_mask in batches:
            yield self.hidden_states(input_ids, attention_mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"
