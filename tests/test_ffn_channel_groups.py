"""Feed-forward blocks regrouped by activation range (bgem3.quant.ffn_channel_groups): the rewrite is
exact, only BERT / XLM-R-shaped blocks are touched, and the int8 OpenVINO graph keeps only the
outlier columns of the down-projection out of int8."""

import copy

import pytest
import torch

from bgem3.quant.ffn_channel_groups import (GROUPS, OUTLIER_MODULE, GroupedDown, GroupedUp, ffn_blocks,
                                            group_channels, regroup_ffns)
from bgem3.testing import make_bert_checkpoint, make_decoder_checkpoint, make_m3_checkpoint


def test_group_channels_partitions_every_channel_once_the_largest_first():
    ranges = torch.tensor([0.5, 9.0, 0.1, 3.0, 7.0, 0.2, 0.3, 2.0, 1.0, 0.05, 6.0, 0.4])
    parts = group_channels(ranges, outlier_share=1 / 6, groups=3)
    assert [p.tolist() for p in parts][0] == [1, 4]  # the two largest ranges
    flat = torch.cat(parts).tolist()
    assert sorted(flat) == list(range(12)) and len(flat) == 12
    maxes = [float(ranges[p].max()) for p in parts]
    mins = [float(ranges[p].min()) for p in parts]
    assert all(mins[i] >= maxes[i + 1] for i in range(len(parts) - 1))  # groups of similar range, in order
    assert all(p.tolist() == sorted(p.tolist()) for p in parts)


def _inputs(model, rows=3, width=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (rows, width), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("make", [make_m3_checkpoint, make_bert_checkpoint], ids=["xlmr", "bert"])
def test_regrouped_blocks_compute_the_same_hidden_states(make, tmp_path):
    from transformers import AutoModel

    folder = make(str(tmp_path / "m"), intermediate_size=96) if make is make_bert_checkpoint else make(str(tmp_path / "m"))
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    ref_model = copy.deepcopy(model)
    calib = [_inputs(model, seed=s) for s in range(3)]
    assert regroup_ffns(model, calib) == model.config.num_hidden_layers
    layer = model.encoder.layer[0]
    assert isinstance(layer.intermediate, GroupedUp) and isinstance(layer.output.dense, GroupedDown)
    width = model.config.intermediate_size
    kept = getattr(layer.output.dense, OUTLIER_MODULE)
    assert kept.in_features == max(1, round(width / 24)) and len(layer.output.dense.rest) == GROUPS
    assert kept.in_features + sum(lin.in_features for lin in layer.output.dense.rest) == width
    x = _inputs(model, seed=7)
    with torch.no_grad():
        ref = ref_model(**x).last_hidden_state
        got = model(**x).last_hidden_state
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert ffn_blocks(model) is None  # rewritten blocks are not taken for plain ones a second time


def test_models_not_shaped_like_bert_are_left_whole(tmp_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(make_decoder_checkpoint(str(tmp_path / "dec"))).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert ffn_blocks(model) is None and regroup_ffns(model, []) == 0
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_non_finite_calibration_activations_are_refused(tmp_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(make_m3_checkpoint(str(tmp_path / "m")), attn_implementation="eager").eval()
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.bias[3] = float("nan")
    with pytest.raises(ValueError, match="non-finite feed-forward activations"):
        regroup_ffns(model, [_inputs(model)])
    assert isinstance(model.encoder.layer[0].output.dense, torch.nn.Linear)  # nothing half-rewritten


def test_int8_graph_keeps_only_the_outlier_columns_out_of_int8(m3_path, tmp_path):
    """The int8 export of a BERT / XLM-R model regroups its blocks: per block, the attention output
    projection and the down-projection's outlier columns stay out of int8, the other groups are int8."""
    pytest.importorskip("nncf")
    import json
    import os

    import openvino as ov

    from bgem3 import Encoder
    from bgem3.backends.export import export_graph

    import shutil

    folder = shutil.copytree(m3_path, str(tmp_path / "m3"))
    graph = export_graph(folder, "openvino", folder, quantize="int8")
    with open(graph[:-4] + ".json", encoding="utf-8") as fh:
        made = json.load(fh)
    assert made["ffn_channel_groups"] == {"blocks": 2, "outlier_share": 1 / 24, "groups": GROUPS}
    kept = made["kept_out_of_int8"]
    assert len(kept) == 4 and sum(f".{OUTLIER_MODULE}/" in k for k in kept) == 2
    model = ov.Core().read_model(graph)
    fq_fed = {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
              and any(op.input_value(i).get_node().get_type_name() == "FakeQuantize" for i in range(2))}
    assert sum(".output.dense.rest." in n for n in fq_fed) == 2 * GROUPS  # every other group in int8
    assert not fq_fed & set(kept)
    enc = Encoder(folder, backend="openvino", dtype="int8", model_kwargs={"file_name": os.path.relpath(graph, folder)})
    assert enc.graph.path == graph and enc.quantization["ffn_channel_groups"]["blocks"] == 2
    ref = Encoder(folder).encode(["a short text", "and a second, longer one to encode here"])
    got = enc.encode(["a short text", "and a second, longer one to encode here"])
    assert ((got.dense * ref.dense).sum(1)).min() > 0.9
    assert os.path.isfile(graph[:-4] + ".bin")


def test_a_layer_that_does_not_take_the_groups_is_put_back_and_refused(tmp_path):
    """A remote-code layer that calls its up-projection directly (not ``intermediate(x)``): the check
    after the rewrite fails, the original modules are put back, and RegroupMismatch says why."""
    import types

    from transformers import AutoModel

    from bgem3.quant.ffn_channel_groups import RegroupMismatch

    model = AutoModel.from_pretrained(make_bert_checkpoint(str(tmp_path / "m"), intermediate_size=96),
                                      attn_implementation="eager").eval()
    layer = model.encoder.layer[0]

    def own_ffn(self, x):  # not BERT's output(intermediate(x), x)
        return self.output(self.intermediate.intermediate_act_fn(self.intermediate.dense(x)), x)

    layer.feed_forward_chunk = types.MethodType(own_ffn, layer)
    x = _inputs(model, seed=3)
    with torch.no_grad():
        ref = model(**x).last_hidden_state
    inter, dense = layer.intermediate, layer.output.dense
    with pytest.raises(RegroupMismatch, match="do not compute the original model"):
        regroup_ffns(model, [_inputs(model, seed=s) for s in range(2)])
    assert layer.intermediate is inter and layer.output.dense is dense
    assert isinstance(model.encoder.layer[1].output.dense, torch.nn.Linear)  # every block put back
    with torch.no_grad():
        torch.testing.assert_close(model(**x).last_hidden_state, ref, atol=0, rtol=0)


def test_int8_export_falls_back_to_whole_down_projections_when_regrouping_is_refused(m3_path, tmp_path, monkeypatch, caplog):
    pytest.importorskip("nncf")
    import json
    import logging
    import shutil

    import bgem3.quant.ffn_channel_groups as groups_mod
    from bgem3.backends.export import export_graph

    def refuse(model, batches, **kw):
        raise groups_mod.RegroupMismatch("the regrouped feed-forward blocks do not compute the original model (test)")

    monkeypatch.setattr(groups_mod, "regroup_ffns", refuse)
    folder = shutil.copytree(m3_path, str(tmp_path / "m3"))
    with caplog.at_level(logging.WARNING, logger="bgem3.backends.export"):
        graph = export_graph(folder, "openvino", folder, quantize="int8")
    assert "the down-projections stay whole" in caplog.text
    with open(graph[:-4] + ".json", encoding="utf-8") as fh:
        made = json.load(fh)
    assert "ffn_channel_groups" not in made and len(made["kept_out_of_int8"]) == 4
    assert not any(f".{OUTLIER_MODULE}/" in k for k in made["kept_out_of_int8"])
