"""The int8 OpenVINO graph behind ``Encoder(dtype="int8")`` on VNNI CPUs: NNCF static quantisation
that keeps the fidelity gates (``pip install 'bgem3[openvino]'``, which brings NNCF).

:func:`quantize_openvino_graph` turns bgem3's fp32 OpenVINO export into an int8 one with NNCF's
post-training quantisation (``model_type=TRANSFORMER``, the ``MIXED`` preset: symmetric int8
weights per output channel, asymmetric int8 activations, SmoothQuant on the matmuls, fast bias
correction), calibrated once over real text (:func:`calibration_texts`: the built-in multilingual
set plus paragraphs of Python's reference docs that the fidelity gates do not score, or a user's
file). What stays out of int8 (:func:`kept_out_of_int8`) is where static per-tensor int8 loses the
gates: the inputs of each block's **attention output projection** (fed by the attention) and of its
feed-forward **down-projection** (fed by the GELU/SiLU) have a few channels with large outliers. With
every linear layer in int8 the dense vectors are at median cosine 0.9982 / min 0.988 on real MiniLM
(the gates ask 0.999 / 0.995); without the down-projections 0.99911 / 0.9966; without both 0.99919 /
0.9980, top-10 0.978 (docs/benchmarks_encode.md).

For BERT / XLM-RoBERTa encoders the feed-forward blocks are first rewritten, exactly, as channel
groups ranked by activation range (:mod:`bgem3.quant.ffn_channel_groups`): only the down-projection's
columns for the 1/24 most extreme channels stay out of int8, its other columns go int8 in four groups
of similar range. Real MiniLM: 0.99912 / 0.99730, top-10 0.982; the graph 9-11 % faster on bulk.
Other models keep their down-projections whole. On CPUs with native bf16 the encoder runs the layers
kept out of int8 in bf16 (OpenVINO's ``INFERENCE_PRECISION_HINT``), elsewhere in fp32.

Example::

    >>> from bgem3.quant.openvino_int8 import INT8_GRAPH_FILE
    >>> INT8_GRAPH_FILE
    'openvino_model_qint8_quantized.xml'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from .calibration import CALIBRATION_TEXTS

logger = logging.getLogger(__name__)

__all__ = ["INT8_GRAPH_FILE", "graph_report", "calibration_texts", "read_calibration_file", "quantize_openvino_graph",
           "kept_out_of_int8", "check_nncf"]

#: sentence-transformers' name for an OpenVINO int8 graph (``openvino/<this>``)
INT8_GRAPH_FILE = "openvino_model_qint8_quantized.xml"
#: real paragraphs of Python's reference docs added to the built-in calibration texts; taken from
#: index 400 on, past the fidelity gates' 300 passages and 50 queries (bgem3.quant.fidelity)
CALIBRATION_DOC_OFFSET = 400
CALIBRATION_DOC_COUNT = 260
#: the most calibration texts read from a user's file (NNCF's statistics pass runs each once)
MAX_CALIBRATION_TEXTS = 2000
#: activations whose consumer is a feed-forward down-projection
_FFN_ACTIVATIONS = ("Gelu", "Swish", "HSwish", "Mish")


def graph_report(graph_xml: str) -> dict:
    """What ``Encoder.quantization`` says for an OpenVINO int8 graph: the engine and, for bgem3's own
    export, how it was made (the ``.json`` written beside it)."""
    report = {"engine": "openvino", "graph": graph_xml}
    side = graph_xml[:-4] + ".json" if graph_xml.endswith(".xml") else None
    if side and os.path.isfile(side):
        try:
            with open(side, encoding="utf-8") as fh:
                made = json.load(fh)
            if isinstance(made, dict):
                report.update({k: v for k, v in made.items() if k not in report})
        except (OSError, ValueError):
            pass  # a damaged report does not stop the graph from running
    return report


def check_nncf():
    """Import NNCF or raise the ``ImportError`` naming the extra."""
    try:
        import nncf
    except ImportError:
        raise ImportError("the int8 OpenVINO graph is made with NNCF, which is not installed. Install the extra: "
                          "pip install 'bgem3[openvino]' (or use backend='torch' for dtype='int8')") from None
    return nncf


def read_calibration_file(path: str) -> list[str]:
    """Calibration texts from a user's file: one text per line (blank lines skipped), UTF-8; or a JSON
    list of strings when the file ends in ``.json``. At most :data:`MAX_CALIBRATION_TEXTS`."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"calibration file {path!r} cannot be read as UTF-8 text ({type(exc).__name__}: {exc})") from None
    if path.lower().endswith(".json"):
        try:
            texts = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"calibration file {path!r} is not valid JSON ({exc})") from None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"calibration file {path!r} must hold a JSON list of strings")
    else:
        texts = raw.splitlines()
    texts = [t.strip() for t in texts if t.strip()]
    if len(texts) < 16:
        raise ValueError(f"calibration file {path!r} has {len(texts)} non-empty texts; give at least 16 "
                         "(a few hundred passages like the ones you will embed is best)")
    if len(texts) > MAX_CALIBRATION_TEXTS:
        logger.warning("calibration file %s: using the first %d of %d texts", path, MAX_CALIBRATION_TEXTS, len(texts))
    return texts[:MAX_CALIBRATION_TEXTS]


def calibration_texts(path: Optional[str] = None) -> list[str]:
    """The calibration set: the user's file when ``path`` is given, else the built-in one
    (:data:`~bgem3.quant.calibration.CALIBRATION_TEXTS` plus real paragraphs the gates do not score)."""
    if path:
        return read_calibration_file(path)
    from .fidelity import real_passages

    try:
        docs = real_passages(CALIBRATION_DOC_COUNT, offset=CALIBRATION_DOC_OFFSET)
    except ImportError:  # a Python built without pydoc_data: the multilingual set alone
        docs = []
    return list(CALIBRATION_TEXTS) + docs


def _producer(node):
    """The op feeding ``node``'s first input, past the reshapes, transposes and casts between them."""
    src = node.input_value(0).get_node()
    for _ in range(4):
        if src.get_type_name() not in ("Reshape", "Transpose", "Convert"):
            break
        src = src.input_value(0).get_node()
    return src


def _is_attention(node) -> bool:
    if node.get_type_name() == "ScaledDotProductAttention":
        return True
    # an unfused attention: softmax(QK^T) @ V
    return node.get_type_name() == "MatMul" and any(
        node.input_value(i).get_node().get_type_name() == "Softmax" for i in range(2))


def kept_out_of_int8(ov_model) -> list[str]:
    """The MatMuls that stay out of int8: each block's attention output projection (fed by the attention)
    and feed-forward down-projection (fed by the GELU / SiLU, directly or through SwiGLU's gated product).
    Their inputs have the outlier channels static per-tensor int8 cannot hold. In a graph whose
    feed-forward blocks were regrouped by activation range (:mod:`bgem3.quant.ffn_channel_groups`) only
    the down-projection's outlier columns stay out (the MatMul named ``.outliers/``); its other groups
    go int8."""
    from .ffn_channel_groups import OUTLIER_MODULE

    mark = f".{OUTLIER_MODULE}/"
    matmuls = [op for op in ov_model.get_ordered_ops() if op.get_type_name() == "MatMul" and not _is_attention(op)]
    regrouped = any(mark in op.get_friendly_name() for op in matmuls)
    names = []
    for op in matmuls:
        src = _producer(op)
        ffn = src.get_type_name() in _FFN_ACTIVATIONS or (
            src.get_type_name() == "Multiply"
            and any(src.input_value(i).get_node().get_type_name() in _FFN_ACTIVATIONS for i in range(2)))
        if _is_attention(src) or (ffn and (not regrouped or mark in op.get_friendly_name())):
            names.append(op.get_friendly_name())
    return names


@contextlib.contextmanager
def _nncf_output_to_stderr():
    """NNCF's progress bars and warnings on stderr (stdout is the CLI's answer); its INFO chatter off."""
    nlog = logging.getLogger("nncf")
    level, swapped = nlog.level, []
    nlog.setLevel(logging.WARNING)
    for h in nlog.handlers:
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stdout:
            swapped.append(h)
            h.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        nlog.setLevel(level)
        for h in swapped:
            h.setStream(sys.stdout)


def quantize_openvino_graph(fp32_xml: str, out_xml: str, tokenizer, *, texts: Sequence[str], max_length: int,
                            progress: Optional[Callable[[str], None]] = None,
                            regrouped: Optional[Callable[[list], tuple]] = None) -> dict:
    """Write the int8 graph of ``fp32_xml`` to ``out_xml`` (+ ``.bin`` and a ``.json`` report); the report.

    ``tokenizer`` turns ``texts`` into the graph's inputs (each text alone, cut at ``max_length``
    tokens: no padding in the statistics). ``progress`` gets one line per step. ``regrouped``, given
    the calibration inputs, returns ``(the same model as an OpenVINO model with its feed-forward blocks
    regrouped by activation range, blocks regrouped)``, or ``(None, 0)`` where it cannot: that model is
    quantised instead of ``fp32_xml`` (:mod:`bgem3.quant.ffn_channel_groups`).
    """
    nncf = check_nncf()
    import numpy as np
    import openvino as ov

    say = progress or logger.info
    if not texts:
        raise ValueError("quantising needs calibration texts; got none")
    items = []
    for t in texts:
        enc = tokenizer(t, truncation=True, max_length=max_length, return_tensors="np")
        items.append({"input_ids": enc["input_ids"].astype(np.int64),
                      "attention_mask": enc["attention_mask"].astype(np.int64)})
    model, blocks = regrouped(items) if regrouped is not None else (None, 0)
    if model is not None:
        say(f"int8: {blocks} feed-forward blocks regrouped by activation range; their outlier channels stay "
            "out of int8")
    else:  # the fp32 graph as exported, read only when it is the one quantised
        model = ov.Core().read_model(fp32_xml)
    inputs = {p.get_any_name() for p in model.inputs}
    items = [{k: v for k, v in item.items() if k in inputs} for item in items]
    keep = kept_out_of_int8(model)
    say(f"int8: calibrating over {len(items)} texts ({sum(i['input_ids'].shape[1] for i in items)} tokens); "
        f"{len(keep)} feed-forward down-projections (or their outlier columns) and attention output projections "
        "stay out of int8")
    try:
        with _nncf_output_to_stderr():
            q = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.MIXED, subset_size=len(items),
                              ignored_scope=nncf.IgnoredScope(names=keep, validate=False))
    except Exception as exc:  # NNCF raises its own error types
        raise ValueError(f"NNCF could not quantise {fp32_xml!r} ({type(exc).__name__}: {str(exc)[:300]}); "
                         "use backend='torch' for dtype='int8'") from None
    ov.save_model(q, out_xml, compress_to_fp16=False)
    report = {"tool": f"nncf {nncf.__version__}, openvino {ov.__version__}", "preset": "MIXED",
              "model_type": "TRANSFORMER", "calibration_texts": len(items),
              "kept_out_of_int8": keep, "source": os.path.basename(fp32_xml)}
    if blocks:
        from .ffn_channel_groups import GROUPS, OUTLIER_SHARE

        report["ffn_channel_groups"] = {"blocks": blocks, "outlier_share": OUTLIER_SHARE, "groups": GROUPS}
        report["source"] = "PyTorch weights, feed-forward blocks regrouped"
    return report
