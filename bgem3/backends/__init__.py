"""Forward backends: what turns a batch of token ids into the transformer's last hidden states.

The :class:`~bgem3.Encoder` does everything else once, whatever the backend: templates,
tokenisation, length-sorted batching, pooling, the M3 heads (``sparse_linear``,
``colbert_linear``, applied in fp32 after the graph) and the Dense / Normalize modules.

* ``"torch"`` (the default): PyTorch, exact; the unpadded (packed) path for BERT / XLM-R encoders.
* ``"onnx"``: ONNX Runtime on the folder's ``onnx/model.onnx`` (or ``model_kwargs={"file_name": ...}``),
  else on a graph exported once into :func:`~bgem3.backends.export.cache_dir` (``pip install 'bgem3[onnx]'``).
* ``"openvino"``: OpenVINO on the folder's ``openvino/openvino_model.xml`` (or ``file_name``), else on
  an export in the same cache (``pip install 'bgem3[openvino]'``).

``model_kwargs`` takes the keys sentence-transformers takes for these backends: ``file_name``,
``subfolder``, ``export``, ``provider`` (ONNX Runtime), ``ov_config`` (OpenVINO).

Example::

    >>> from bgem3.backends import check_backend
    >>> check_backend("onnx")
    'onnx'
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

# what the runtime plug-ins (onnx.py, openvino.py) share lives in a leaf, so that a plug-in never
# imports this package back
from ._base import EXTRAS, GraphBackend, missing_extra

__all__ = ["BACKENDS", "EXTRAS", "BACKEND_OPTIONS", "check_backend", "check_backend_options", "missing_extra",
           "GraphBackend", "load_graph_backend", "find_graph_file"]

#: The forward backends, the default first.
BACKENDS = ("torch", "onnx", "openvino")
#: ``model_kwargs`` keys each backend takes (sentence-transformers' names).
BACKEND_OPTIONS = {
    "torch": (),
    "onnx": ("file_name", "subfolder", "export", "provider"),
    "openvino": ("file_name", "subfolder", "export", "ov_config"),
}
#: Where sentence-transformers (and BGE-M3's hub repository) keep each backend's graph.
DEFAULT_FILES = {"onnx": ("onnx", "model.onnx"), "openvino": ("openvino", "openvino_model.xml")}


def check_backend(backend: Any) -> str:
    """``backend`` as one of :data:`BACKENDS`, or a ``ValueError`` naming the choices."""
    if backend is None:
        return "torch"
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {list(BACKENDS)}; 'torch' is the exact default, "
                         "'onnx' (ONNX Runtime) and 'openvino' run an exported graph on CPU")
    return backend.lower()


def check_backend_options(backend: str, options: Optional[Mapping[str, Any]]) -> dict:
    """Check ``model_kwargs`` for ``backend``: known keys with values of the right type; a copy."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"model_kwargs must be a dict; got {type(options).__name__}")
    allowed = BACKEND_OPTIONS[backend]
    out = dict(options)
    unknown = sorted(set(out) - set(allowed))
    if unknown:
        if backend == "torch":
            raise ValueError(f"model_kwargs {unknown} are options of backend='onnx' / 'openvino'; backend='torch' takes "
                             "none (set backend='onnx' or 'openvino' to use them)")
        raise ValueError(f"model_kwargs has {unknown}, which backend={backend!r} does not take; it takes {list(allowed)}")
    for key in ("file_name", "subfolder", "provider"):
        if key in out and out[key] is not None and not isinstance(out[key], str):
            raise TypeError(f"model_kwargs[{key!r}] must be a string; got {type(out[key]).__name__}")
    if "export" in out and out["export"] is not None and not isinstance(out["export"], bool):
        raise TypeError(f"model_kwargs['export'] must be True, False or None; got {out['export']!r}")
    if "ov_config" in out and out["ov_config"] is not None:
        cfg = out["ov_config"]
        if isinstance(cfg, (str, os.PathLike)):  # sentence-transformers also takes a path to a JSON file
            try:
                with open(cfg, encoding="utf-8") as fh:
                    cfg = json.load(fh)
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"model_kwargs['ov_config']={out['ov_config']!r} is neither a dict nor a readable "
                                 f"JSON file ({type(exc).__name__}: {exc})") from None
        if not isinstance(cfg, Mapping) or not all(isinstance(k, str) for k in cfg):
            raise TypeError("model_kwargs['ov_config'] must be a dict of OpenVINO properties (or a JSON file of one)")
        out["ov_config"] = {k: str(v) for k, v in cfg.items()}
    return out


def find_graph_file(folder: str, backend: str, options: Mapping[str, Any], *, also: Sequence[str] = ()) -> Optional[str]:
    """The graph file the user named or the folder ships for ``backend``; ``None`` when there is none.

    ``file_name`` may include its folder (``"onnx/model_qint8_avx512_vnni.onnx"``) or be given with
    ``subfolder``; without ``file_name``, ``<backend>/<default name>`` then ``<default name>`` are tried.
    ``also``: further folders searched for a named ``file_name`` (bgem3's export cache). A
    ``file_name`` found nowhere is an error (never a silent export of something else).
    """
    sub_default, name_default = DEFAULT_FILES[backend]
    file_name, subfolder = options.get("file_name"), options.get("subfolder")
    if file_name:
        if os.path.isabs(file_name) or ".." in file_name.replace("\\", "/").split("/"):
            raise ValueError(f"model_kwargs['file_name']={file_name!r} must be a path inside the model folder")
        tries = [os.path.join(subfolder, file_name)] if subfolder else [file_name, os.path.join(sub_default, file_name)]
        for root in (folder, *also):
            for rel in tries:
                if os.path.isfile(os.path.join(root, rel)):
                    return os.path.join(root, rel)
        where = " or ".join(repr(r) for r in (folder, *also))
        raise ValueError(f"model_kwargs['file_name']={file_name!r}: no such file in {where} (looked for "
                         f"{', '.join(tries)}); drop file_name to use or export the default {sub_default}/{name_default}")
    tries = [os.path.join(subfolder, name_default)] if subfolder else [os.path.join(sub_default, name_default), name_default]
    for rel in tries:
        if os.path.isfile(os.path.join(folder, rel)):
            return os.path.join(folder, rel)
    return None


def load_graph_backend(backend: str, graph_file: str, *, threads: int, options: Mapping[str, Any],
                       precision: str = "fp32") -> GraphBackend:
    """Open ``graph_file`` with ``backend``'s runtime (``precision``: ``"fp32"``, or ``"bf16"`` on OpenVINO)."""
    if backend == "onnx":
        from .onnx import OnnxBackend

        if precision != "fp32":
            raise ValueError(f"backend='onnx' runs the graph's own precision; dtype={precision!r} is not an ONNX Runtime "
                             "option (use backend='openvino' for bf16, or a quantised graph via model_kwargs['file_name'])")
        return OnnxBackend(graph_file, threads=threads, provider=options.get("provider"))
    if backend == "openvino":
        from .openvino import OpenVINOBackend

        return OpenVINOBackend(graph_file, threads=threads, config=options.get("ov_config"), precision=precision)
    raise ValueError(f"backend={backend!r} has no graph runtime")  # pragma: no cover - checked before
