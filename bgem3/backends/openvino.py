"""``backend="openvino"``: the transformer as an OpenVINO model on the CPU plugin (``pip install 'bgem3[openvino]'``).

OpenVINO reads its own IR (``openvino_model.xml`` + ``.bin``) and ONNX files alike. Precision is set
explicitly (``INFERENCE_PRECISION_HINT``): ``f32`` unless ``dtype="bf16"`` asks for bf16, so an
fp32 encoder never runs bf16 behind the user's back on CPUs whose plugin would default to it.

Two ways to run, picked by the number of batches in a call:

* one batch (a query, a short list): one synchronous infer request on every thread (the graph
  compiled with ``PERFORMANCE_HINT=LATENCY``, one stream);
* several batches (bulk) of a model with a hidden size up to :data:`STREAMS_MAX_HIDDEN`, on more
  than one thread: :meth:`OpenVINOBackend.hidden_states_stream` runs them on the graph
  compiled a second time in throughput mode (``PERFORMANCE_HINT=THROUGHPUT``, one stream of one
  thread per thread, as many infer requests in flight), and hands the results back in input order
  while the next batches run, so the encoder's heads overlap the inference. The second compilation
  happens on the first bulk call and holds its own copy of the packed weights (wider models run bulk
  on the single request too: their products keep every thread busy). An ``ov_config``
  that sets ``PERFORMANCE_HINT`` or ``NUM_STREAMS`` replaces both: that one compiled model runs
  everything (``{"PERFORMANCE_HINT": "LATENCY"}`` turns the streams off).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np

from ._base import GraphBackend, missing_extra
from ._inputs import check_inputs, feeds, pick_hidden_output

#: ``ov_config`` keys that decide how the graph is spread over streams: set by the user, they hold for bulk too
_STREAM_KEYS = ("PERFORMANCE_HINT", "NUM_STREAMS")
#: the widest hidden size that gets the throughput copy for bulk. Measured on 2 threads (Zen 4): hidden 384
#: (6 layers) 1.12-1.15x faster bulk with two streams; hidden 1024 (BGE-M3's shape) 1.00-1.02x, for
#: +1.75 GiB of a second packed weight copy. Between them, unmeasured: the single request, no second copy.
STREAMS_MAX_HIDDEN = 512


class OpenVINOBackend(GraphBackend):
    """An OpenVINO compiled model on ``path``: padded ids + mask -> last hidden states."""

    name = "openvino"
    #: OpenVINO prepares its kernels per new input shape (~10-15 ms the first time a length is seen): widths
    #: rounded up to 8 tokens meet 8x fewer shapes (measured: int8 query p50 6.3-7.9 -> 4.0-4.6 ms)
    width_multiple = 8

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
        user_streams = any(k in user for k in _STREAM_KEYS)
        if user_streams:  # the user's spread over streams, not ours
            props.pop("NUM_STREAMS")
        props.update(user)
        self.path = path
        self.precision = precision
        self.threads = int(threads or 0)
        self._core = core = ov.Core()
        try:
            self._model = core.read_model(path)
            self.compiled = core.compile_model(self._model, "CPU", props)
        except Exception as exc:
            raise ValueError(f"OpenVINO cannot load {path!r} ({type(exc).__name__}: {exc})") from None
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        check_inputs(path, self.input_names)
        outs = [(p.get_any_name(), p.get_partial_shape().rank.get_length()) for p in self.compiled.outputs]
        self._out_index = pick_hidden_output(path, outs)
        self._out = self.compiled.outputs[self._out_index]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one batch at a time
        #: bulk: the compiled model and how many requests it keeps in flight (None: not compiled yet;
        #: the throughput copy is compiled on the first call with several batches)
        self._bulk = self.compiled if user_streams else None
        self._bulk_props = None if user_streams else dict(
            props, PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=str(self.threads) if self.threads else "AUTO")
        self._bulk_lock = threading.Lock()
        width = self._out.get_partial_shape()[2] if self._out.get_partial_shape().rank.get_length() == 3 else None
        narrow = width is not None and width.is_static and width.get_length() <= STREAMS_MAX_HIDDEN
        if not user_streams and (self.threads == 1 or not narrow):
            # one thread (one stream), or a model wide enough that one request keeps every thread busy:
            # the latency model runs bulk too, and no second copy is compiled
            self._bulk = self.compiled

    @staticmethod
    def _requests_of(compiled) -> int:
        try:
            return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:  # pragma: no cover - every CPU plugin reports it
            return 1

    def _bulk_model(self):
        with self._bulk_lock:
            if self._bulk is None:
                try:
                    self._bulk = self._core.compile_model(self._model, "CPU", self._bulk_props)
                except Exception as exc:
                    raise ValueError(f"OpenVINO cannot compile {self.path!r} in throughput mode "
                                     f"({type(exc).__name__}: {exc}); pass model_kwargs={{'ov_config': "
                                     "{'PERFORMANCE_HINT': 'LATENCY'}} to run bulk on the latency model") from None
            return self._bulk

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with self._lock:
            res = self._request.infer(feeds(self.input_names, input_ids, attention_mask))
            return np.array(res[self._out], dtype=np.float32)  # a copy: the request reuses its buffers

    def bulk_streams(self) -> int:
        """Infer requests a bulk call keeps in flight: the throughput model's count (compiled here if need be)."""
        return self._requests_of(self._bulk_model())

    def hidden_states_stream(self, batches: Iterable) -> Iterator[np.ndarray]:
        """Each batch's hidden states in input order, several batches in flight on the throughput
        model's streams; at most (streams + 1) batches are read ahead of what was yielded."""
        compiled = self._bulk_model()
        n = self._requests_of(compiled)
        if n == 1 and compiled is self.compiled:
            yield from super().hidden_states_stream(batches)
            return
        out_port = compiled.outputs[self._out_index]
        free = [compiled.create_infer_request() for _ in range(n)]  # this call's own: no lock needed
        pending: deque = deque()

        def take():
            req = pending.popleft()
            req.wait()
            free.append(req)
            return np.array(req.get_tensor(out_port).data, dtype=np.float32)  # a copy before the request is reused

        try:
            for input_ids, attention_mask in batches:
                done = take() if not free else None
                req = free.pop()
                req.start_async(feeds(self.input_names, input_ids, attention_mask))
                pending.append(req)
                if done is not None:
                    yield done  # the next batches run while the caller applies the heads to this one
            while pending:
                yield take()
        finally:  # an error or an abandoned stream: let the requests in flight finish before they are dropped
            for req in pending:
                try:
                    req.wait()
                except Exception:  # pragma: no cover - its error is not ours to raise here
                    pass
