"""What the graph runtime plug-ins (:mod:`bgem3.backends.onnx`, :mod:`bgem3.backends.openvino`) share: the
interface they implement and the error for a missing runtime (a leaf: :mod:`bgem3.backends` imports the
plug-ins only when one is chosen, and they import this, never the package)."""

from __future__ import annotations

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

    def hidden_states(self, input_ids, attention_mask):  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"
