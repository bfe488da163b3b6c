"""``backend="onnx"``: the transformer as an ONNX graph on ONNX Runtime (``pip install 'bgem3[onnx]'``)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._base import GraphBackend, missing_extra
from ._inputs import check_inputs, feeds, pick_hidden_output


class OnnxBackend(GraphBackend):
    """An ``onnxruntime.InferenceSession`` on ``path``: padded ids + mask -> last hidden states.

    ``threads``: intra-op threads (the encoder passes ``torch.get_num_threads()``);
    ``provider``: an ONNX Runtime execution provider (default ``CPUExecutionProvider``).
    """

    name = "onnx"

    def __init__(self, path: str, *, threads: int = 0, provider: Optional[str] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("onnx", "onnxruntime") from None
        provider = provider or "CPUExecutionProvider"
        available = ort.get_available_providers()
        if provider not in available:
            raise ValueError(f"model_kwargs['provider']={provider!r} is not available in this onnxruntime "
                             f"(available: {available})")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.path = path
        try:
            self.session = ort.InferenceSession(path, so, providers=[provider])
        except Exception as exc:
            raise ValueError(f"ONNX Runtime cannot load {path!r} ({type(exc).__name__}: {exc})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        check_inputs(path, self.input_names)
        outs = self.session.get_outputs()
        self._out = outs[pick_hidden_output(path, [(o.name, len(o.shape or [])) for o in outs])].name

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self._out], feeds(self.input_names, input_ids, attention_mask))
        return np.asarray(out, dtype=np.float32)
