"""Are the random-weight checkpoints' score moves float rounding? Each pair alone: bgem3's unpadded path (oneDNN / MKL),
the Hugging Face fp32 forward, the same with 3 masked pad columns, all against the HF forward in float64."""
import sys, numpy as np, torch
import os; sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
torch.set_num_threads(2)
from benchmarks.rerank import workload
import bgem3._cpu_linear as cl
from bgem3 import Reranker
for size in ("small", "full"):
    rr = Reranker(fos.path.join(os.environ.get("BENCH_MODELS", ".bench_models"), f"reranker-{size}"), device="cpu", max_length=512)
    q, c = workload(1, 5, 600, rr.tokenizer)
    pairs = [(q[0], x) for x in c[0]]
    ids, tts = rr.tokenize_pairs(pairs)
    un = np.array([rr.compute_score([pr])[0] for pr in pairs])
    cl.ONEDNN = False
    un_mkl = np.array([rr.compute_score([pr])[0] for pr in pairs])
    cl.ONEDNN = None
    rr._packed = None
    hf = np.array([rr.compute_score([pr])[0] for pr in pairs])
    # HF with one extra padded (masked) column: same maths, other kernel shapes
    hf_pad = []
    with torch.inference_mode():
        for row in ids:
            x = torch.tensor([row + [rr.pad_token_id] * 3]); m = torch.tensor([[1] * len(row) + [0] * 3])
            hf_pad.append(float(rr.model(input_ids=x, attention_mask=m).logits.view(-1)[0]))
    hf_pad = np.array(hf_pad)
    with torch.inference_mode():
        hf64 = []
        m64 = rr.model.double()
        for row in ids:
            hf64.append(float(m64(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long)).logits.view(-1)[0]))
        rr.model.float()
    hf64 = np.array(hf64)
    print(size, "scores(fp64)", np.round(hf64, 3))
    print(size, "|unpadded-oneDNN - fp64|", np.round(np.abs(un - hf64), 4), "|unpadded-MKL - fp64|", np.round(np.abs(un_mkl - hf64), 4))
    print(size, "|HF fp32 - fp64|", np.round(np.abs(hf - hf64), 4), "|HF +3 pads - fp64|", np.round(np.abs(hf_pad - hf64), 4))
