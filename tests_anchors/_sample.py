"""The real-text sample the anchors suite encodes (shipped in this repository)."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _paragraphs(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # prose only: no code blocks
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if len(para) < 80 or para.startswith(("|", "#", "<", "!")):
            continue
        out.append(para)  # newlines kept: the anchors replace them by spaces (LangChain) or not (LlamaIndex)
    return out


def sample_passages(n: int = 40) -> list[str]:
    """Real English prose shipped in this repository (README and docs paragraphs, code removed), plus a
    few non-English lines and one passage longer than MiniLM's 256-token limit."""
    paras: list[str] = []
    for name in ("README.md", "docs/why.md", "docs/index.md", "docs/encoder.md", "docs/cli.md"):
        paras += _paragraphs(os.path.join(ROOT, name))
    paras = paras[: n - 4]
    paras += [
        "Der Eiffelturm ist ein 330 Meter hoher Turm aus Schmiedeeisen in Paris.",
        "La fotosíntesis convierte la luz del sol, el agua y el dióxido de carbono en azúcar.",
        "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
        " ".join(paras[:6]),  # > 256 tokens: truncation must agree
    ]
    return paras


QUERIES = [
    "how does hybrid retrieval fuse dense and lexical scores?",
    "which command indexes a folder of documents?",
    "can I use E5 models with query and passage prefixes?",
    "Wo steht der Eiffelturm?",
    "is the saved index safe to load, does it use pickle?",
]
