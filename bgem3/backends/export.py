"""Export a checkpoint's transformer to ONNX / OpenVINO, once, into a cache the user can see and delete.

The graph is the Hugging Face model's own forward (eager attention, fp32) traced from PyTorch:
inputs ``input_ids`` / ``attention_mask`` ``int64 [batch, tokens]``, output ``last_hidden_state``
``float32 [batch, tokens, hidden]``. The M3 heads, pooling and Dense modules stay outside the
graph (the encoder applies them in fp32, the same code for every backend).

Where: ``$BGEM3_CACHE_DIR/exports/<folder name>-<fingerprint>/{onnx,openvino}/`` (default
``~/.cache/bgem3``; ``$XDG_CACHE_HOME/bgem3`` when that is set). The fingerprint is
:func:`bgem3.fingerprint.model_fingerprint` of the model folder, so new weights get a new export.
Deleting the folder is always safe: the next load exports again. ``bgem3 export`` does it
explicitly (and ``--output`` writes the sentence-transformers layout into any folder).

Example::

    >>> import os
    >>> from bgem3.backends.export import cache_dir
    >>> os.path.isabs(cache_dir())  # ~/.cache/bgem3 unless $BGEM3_CACHE_DIR / $XDG_CACHE_HOME say otherwise
    True
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from typing import Optional

from ..fingerprint import model_fingerprint
from . import DEFAULT_FILES, missing_extra

logger = logging.getLogger(__name__)

__all__ = ["cache_dir", "export_dir_for", "export_graph", "cached_graph", "QUANTIZED_FILES"]

#: The file each backend's int8 export gets (sentence-transformers' names).
QUANTIZED_FILES = {"onnx": "model_qint8.onnx", "openvino": "openvino_model_qint8_quantized.xml"}
#: bump when the exported graph changes, so old cache entries are not reused
#: (2: the int8 OpenVINO graph's feed-forward blocks regrouped by activation range)
EXPORT_VERSION = "2"


def cache_dir() -> str:
    """The root of bgem3's caches: ``$BGEM3_CACHE_DIR``, else ``$XDG_CACHE_HOME/bgem3``, else ``~/.cache/bgem3``."""
    env = os.environ.get("BGEM3_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(os.path.abspath(os.path.expanduser(xdg)) if xdg else os.path.expanduser("~/.cache"), "bgem3")


def export_dir_for(model_dir: str) -> str:
    """The cache folder for ``model_dir``'s exports (by folder name and content fingerprint)."""
    fp = model_fingerprint(model_dir)
    base = os.path.basename(os.path.normpath(model_dir)) or "model"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:64]
    digest = fp.split(":")[-1][:16]
    return os.path.join(cache_dir(), "exports", f"{safe}-v{EXPORT_VERSION}-{digest}")


def cached_graph(model_dir: str, backend: str, *, quantize: Optional[str] = None,
                 trust_remote_code: bool = False) -> str:
    """The cached graph of ``model_dir`` for ``backend``, exported now if it is not there yet."""
    return export_graph(model_dir, backend, export_dir_for(model_dir), quantize=quantize, reuse=True,
                        trust_remote_code=trust_remote_code)


def export_graph(model_dir: str, backend: str, out_dir: str, *, quantize: Optional[str] = None, reuse: bool = False,
                 trust_remote_code: bool = False, calibration: Optional[str] = None) -> str:
    """Write ``model_dir``'s transformer as a ``backend`` graph under ``out_dir`` (sentence-transformers'
    layout: ``onnx/model.onnx``, ``openvino/openvino_model.xml``); the graph file's path.

    ``quantize="int8"``: also write the int8 graph and return that: for OpenVINO, NNCF's static
    quantisation calibrated on real text (``openvino/openvino_model_qint8_quantized.xml``, what
    ``dtype="int8"`` runs on VNNI CPUs; :mod:`bgem3.quant.openvino_int8`), ``calibration`` a file of
    texts (one per line) instead of the built-in set; for ONNX Runtime, its dynamic int8 graph
    (``onnx/model_qint8.onnx``, per-channel weights; it fails the fidelity gates, see
    docs/benchmarks_encode.md). ``reuse``: keep a graph already there.
    """
    if backend not in DEFAULT_FILES:
        raise ValueError(f"backend={backend!r} cannot be exported; use 'onnx' or 'openvino'")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize!r} is not supported; use 'int8' or None")
    if calibration is not None and not (quantize and backend == "openvino"):
        raise ValueError("calibration texts are for --backend openvino --quantize int8 (NNCF's static int8); "
                         "ONNX Runtime's dynamic int8 and the fp32 graphs take none")
    sub, name = DEFAULT_FILES[backend]
    final = os.path.join(out_dir, sub, QUANTIZED_FILES[backend] if quantize else name)
    if reuse and os.path.isfile(final):
        return final
    if quantize and backend == "openvino":
        from ..quant.openvino_int8 import calibration_texts, check_nncf

        check_nncf()  # before the long export
        texts = calibration_texts(calibration)  # a bad file is refused before the export too
    if backend == "onnx":
        try:
            import onnxruntime  # noqa: F401  (what runs the graph; checked before the long export)
        except ImportError:
            raise missing_extra("onnx", "onnxruntime") from None
    else:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise missing_extra("openvino", "openvino") from None
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    fp32 = os.path.join(out_dir, sub, name)
    if not (reuse and os.path.isfile(fp32)):
        with tempfile.TemporaryDirectory(dir=os.path.join(out_dir, sub), prefix=".export-") as tmp:
            logger.info("exporting %s to %s (%s); delete that folder to export again", model_dir, fp32, backend)
            if backend == "onnx":
                _export_onnx(model_dir, os.path.join(tmp, name), trust_remote_code)
            else:
                _export_openvino(model_dir, os.path.join(tmp, name), trust_remote_code)
            for f in os.listdir(tmp):  # the graph file last: its presence means the export is complete
                if f != name:
                    os.replace(os.path.join(tmp, f), os.path.join(out_dir, sub, f))
            os.replace(os.path.join(tmp, name), fp32)
    if not quantize:
        return fp32
    if backend == "openvino":
        _quantize_openvino(model_dir, fp32, final, texts, trust_remote_code)
        return final
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=os.path.join(out_dir, sub), prefix=".quant-") as tmp:
        part = os.path.join(tmp, QUANTIZED_FILES["onnx"])
        quantize_dynamic(fp32, part, weight_type=QuantType.QInt8, per_channel=True)
        os.replace(part, final)
    return final


def _quantize_openvino(model_dir: str, fp32: str, final: str, texts, trust_remote_code: bool) -> None:
    """NNCF's int8 graph of ``fp32`` into ``final`` (+ ``.bin``, and ``.json``: how it was made)."""
    import json

    from transformers import AutoConfig, AutoTokenizer

    from ..quant.openvino_int8 import quantize_openvino_graph

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    limits = [512]  # calibration texts are passages: 512 tokens is enough, and bounds the statistics' memory
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 1_000_000:
        limits.append(int(tok_max))
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos:  # RoBERTa-style positions start after the padding index
        roberta = getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert")
        limits.append(int(max_pos) - (int(getattr(config, "pad_token_id", 1) or 0) + 1 if roberta else 0))
    max_length = min(limits)
    folder = os.path.dirname(final)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".quant-") as tmp:
        part = os.path.join(tmp, os.path.basename(final))
        logger.info("quantising %s to int8 (NNCF, calibrated on %d texts) into %s; delete that file to redo it",
                    fp32, len(texts), final)
        report = quantize_openvino_graph(fp32, part, tokenizer, texts=texts, max_length=max_length,
                                         regrouped=lambda items: _grouped_openvino(model_dir, items, trust_remote_code))
        with open(part[:-4] + ".json", "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        for ext in (".json", ".bin"):  # the .xml last: its presence means the graph is complete
            os.replace(part[:-4] + ext, final[:-4] + ext)
        os.replace(part, final)


def _load_fp32(model_dir: str, trust_remote_code: bool):
    import torch
    from transformers import AutoModel

    kw = dict(dtype=torch.float32, attn_implementation="eager", trust_remote_code=trust_remote_code)
    try:
        try:
            model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False, **kw)
        except TypeError:
            model = AutoModel.from_pretrained(model_dir, **kw)
    except Exception as exc:
        raise ValueError(f"cannot export {model_dir!r}: its PyTorch weights do not load ({type(exc).__name__}: "
                         f"{str(exc)[:300]}). Exporting needs the weights (model.safetensors); or put a ready "
                         "graph in the folder (onnx/model.onnx, openvino/openvino_model.xml)") from None
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model.eval().requires_grad_(False)


def _wrapped(model):
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHidden(model)


def _example(model):
    """A traced batch of two rows, one with masked positions, so the mask path is in the graph."""
    import torch

    vocab = int(getattr(model.config, "vocab_size", 100) or 100)
    ids = torch.randint(min(5, vocab - 1), min(100, vocab), (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    return ids, mask


def _export_onnx(model_dir: str, out_file: str, trust_remote_code: bool) -> None:
    import torch

    model = _load_fp32(model_dir, trust_remote_code)
    ids, mask = _example(model)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "last_hidden_state": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(_wrapped(model), (ids, mask), out_file, input_names=["input_ids", "attention_mask"],
                              output_names=["last_hidden_state"], opset_version=17, dynamo=False, dynamic_axes=axes)
        except Exception as exc:
            raise ValueError(f"exporting {model_dir!r} ({type(model).__name__}) to ONNX failed "
                             f"({type(exc).__name__}: {str(exc)[:300]}); use backend='torch' for this model") from None


def _convert_openvino(model, what: str):
    """The OpenVINO model of ``model``'s forward (ids + mask -> last hidden states), dynamic shapes."""
    import openvino as ov
    import torch

    ids, mask = _example(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            ov_model = ov.convert_model(_wrapped(model), example_input={"input_ids": ids, "attention_mask": mask})
        except Exception as exc:
            raise ValueError(f"converting {what} ({type(model).__name__}) to OpenVINO failed "
                             f"({type(exc).__name__}: {str(exc)[:300]}); use backend='torch' for this model") from None
    for port, pname in zip(ov_model.inputs, ("input_ids", "attention_mask")):
        port.get_tensor().set_names({pname})
    ov_model.outputs[0].get_tensor().set_names({"last_hidden_state"})
    ov_model.reshape({"input_ids": [-1, -1], "attention_mask": [-1, -1]})
    return ov_model


def _export_openvino(model_dir: str, out_file: str, trust_remote_code: bool) -> None:
    import openvino as ov

    ov_model = _convert_openvino(_load_fp32(model_dir, trust_remote_code), repr(model_dir))
    ov.save_model(ov_model, out_file, compress_to_fp16=False)  # fp16 weights would not be the exact fp32 graph


def _grouped_openvino(model_dir: str, items: list, trust_remote_code: bool):
    """The fp32 OpenVINO model of ``model_dir`` with its feed-forward blocks regrouped by activation range
    over the calibration ``items`` (:mod:`bgem3.quant.ffn_channel_groups`), and how many blocks were;
    ``(None, 0)`` for a model not shaped for it (the int8 graph then keeps its down-projections whole)."""
    import torch

    from ..quant.ffn_channel_groups import RegroupMismatch, regroup_ffns

    model = _load_fp32(model_dir, trust_remote_code)
    batches = ({k: torch.from_numpy(v) for k, v in item.items()} for item in items)
    try:
        blocks = regroup_ffns(model, batches)
    except RegroupMismatch as exc:
        logger.warning("int8: %s; the down-projections stay whole (out of int8)", exc)
        return None, 0
    if not blocks:
        return None, 0
    return _convert_openvino(model, repr(model_dir)), blocks
