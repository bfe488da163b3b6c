"""Encode the README's sample texts with BGE-M3 (or any local model folder).

    python examples/encode.py                    # BAAI/bge-m3 from the Hugging Face cache
    python examples/encode.py path/to/bge-m3     # a local folder
    python examples/encode.py --tiny             # a tiny random-weight checkpoint built offline
"""

from __future__ import annotations

import argparse
import tempfile

from bgem3 import Encoder
from bgem3.scoring import colbert_score, lexical_score

SENTENCES = [
    "What is BGE M3?",
    "Defination of BM25",
]
PASSAGES = [
    "BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
    "BM25 is a bag-of-words retrieval function that ranks a set of documents based on the query terms appearing in each document",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="BAAI/bge-m3", help="hub id or local folder")
    ap.add_argument("--tiny", action="store_true", help="build and use a tiny random-weight checkpoint")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    model = args.model
    if args.tiny:
        from bgem3.testing import make_m3_checkpoint

        model = make_m3_checkpoint(tempfile.mkdtemp(prefix="bgem3-tiny-"))
    enc = Encoder(model, device=args.device)
    print(enc)
    q = enc.encode_queries(SENTENCES, dense=True, sparse=True, colbert=True)
    p = enc.encode_documents(PASSAGES, dense=True, sparse=True, colbert=True)
    print("dense similarity:\n", q.dense @ p.dense.T)
    for i, s in enumerate(SENTENCES):
        for j in range(len(PASSAGES)):
            print(f"q{i} p{j}  lexical={lexical_score(q.sparse[i], p.sparse[j]):.4f}  "
                  f"colbert={colbert_score(q.colbert[i], p.colbert[j]):.4f}")
    top = sorted(p.sparse[0].items(), key=lambda kv: -kv[1])[:5]
    print("top lexical weights of passage 0:",
          [(enc.tokenizer.convert_ids_to_tokens(t), round(w, 3)) for t, w in top])


if __name__ == "__main__":
    main()
