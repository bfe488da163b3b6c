"""``backend="openvino"``: the transformer as an OpenVINO model on the CPU plugin (``pip install 'bgem3[openvino]'``).

OpenVINO reads its own IR (``openvino_model.xml`` + ``.bin``) and ONNX files alike. Precision is set
explicitly (``INFERENCE_PRECISION_HINT``): ``f32`` unless ``dtype="bf16"`` asks for bf16, so an
fp32 encoder never runs bf16 behind the user's back on CPUs whose plugin would default to it.
"""

from __future__ import annotations

import threading
from typing import Mapping, Optional

import numpy as np

from ._base import GraphBackend, missing_extra
from ._inputs import check_inputs, feeds, pick_hidden_output


class OpenVINOBackend(GraphBackend):
    """An OpenVINO compiled model on ``path``: padded ids + mask -> last hidden states."""

    name = "openvino"

    def __init__(self, path: str, *, threads: int = 0, config: Optional[Mapping[str, str]] = None,
                 precision: str = "fp32") -> None:
        try:
            import openvino as ov
        except ImportError:
            raise missing_extra("openvino", "openvino") from None
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"backend='openvino' runs fp32 or bf16; dtype={precision!r} is not one of them")
        props = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
                 "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads:
            props["INFERENCE_NUM_THREADS"] = str(int(threads))
        user = dict(config or {})
        if "INFERENCE_PRECISION_HINT" in user and user["INFERENCE_PRECISION_HINT"].lower() != props["INFERENCE_PRECISION_HINT"]:
            raise ValueError(f"ov_config's INFERENCE_PRECISION_HINT={user['INFERENCE_PRECISION_HINT']!r} disagrees with "
                             f"dtype={precision!r}; set the precision with dtype= ('fp32' or 'bf16')")
        props.update(user)
        self.path = path
        self.precision = precision
        core = ov.Core()
        try:
            model = core.read_model(path)
            self.compiled = core.compile_model(model, "CPU", props)
        except Exception as exc:
            raise ValueError(f"OpenVINO cannot load {path!r} ({type(exc).__name__}: {exc})") from None
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        check_inputs(path, self.input_names)
        outs = [(p.get_any_name(), p.get_partial_shape().rank.get_length()) for p in self.compiled.outputs]
        self._out = self.compiled.outputs[pick_hidden_output(path, outs)]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one batch at a time

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with self._lock:
            res = self._request.infer(feeds(self.input_names, input_ids, attention_mask))
            return np.array(res[self._out], dtype=np.float32)  # a copy: the request reuses its buffers
