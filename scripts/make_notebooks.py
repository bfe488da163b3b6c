"""Generate the tutorial notebooks in notebooks/ (run: python scripts/make_notebooks.py).

Edit the cells here, not the .ipynb files: they are written without outputs. The test suite
(tests/test_notebooks.py) executes every notebook top to bottom with a tiny offline checkpoint.
"""

from __future__ import annotations

import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "notebooks")


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


SETUP_NOTE = """
> **Running this notebook.** It downloads `BAAI/bge-m3` (about 2.3 GB) the first time, unless it
> is in your Hugging Face cache. To use a local copy, or another model, set environment variables
> before starting Jupyter: `BGEM3_MODEL=/path/to/bge-m3`, `BGEM3_E5_MODEL=/path/to/multilingual-e5-large`
> (or `intfloat/multilingual-e5-large-instruct`), `BGEM3_RERANKER_MODEL=/path/to/bge-reranker-v2-m3` (the
> cross-encoder of the reranking sections of the LangChain and LlamaIndex notebooks; else it is downloaded,
> about 2.3 GB), and optionally `BGEM3_DEVICE=cuda`.
> The test suite runs this notebook with a tiny random-weight model, so any numbers you see in a
> copy produced by the tests are meaningless; with the real models they are the real scores.
"""

CORPUS = '''
corpus = [
    "BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
    "BM25 is a bag-of-words retrieval function that ranks documents by term frequency.",
    "LangChain is a framework for developing applications powered by large language models.",
    "LlamaIndex is a data framework for connecting custom data sources to large language models.",
    "Qdrant is a vector similarity search engine with extended filtering support.",
    "Paris is the capital and most populous city of France.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "서울은 대한민국의 수도이다.",
    "北京是中华人民共和国的首都。",
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Hybrid retrieval fuses dense, sparse and late-interaction scores.",
]
topics = ["ml", "ir", "ml", "ml", "ir", "geo", "geo", "geo", "geo", "bio", "bio", "ir"]
'''

ENV = '''
import os

MODEL = os.environ.get("BGEM3_MODEL", "BAAI/bge-m3")
E5_MODEL = os.environ.get("BGEM3_E5_MODEL", "intfloat/multilingual-e5-large")
DEVICE = os.environ.get("BGEM3_DEVICE") or None  # None: cuda > mps > cpu
print("BGE-M3 model:", MODEL, "| E5 model:", E5_MODEL)
'''


# --------------------------------------------------------------------------- 01 LangChain

def langchain_notebook():
    cells = [
        md("""
# BGE-M3 and multilingual E5 in LangChain

[BGE-M3](https://huggingface.co/BAAI/bge-m3) turns a text into three things at once:

| output | what it is | good at |
|---|---|---|
| **dense** | one 1024-number vector per text | meaning: paraphrases, other languages, questions vs. answers |
| **lexical (sparse)** | a weight per token that occurs in the text | exact words: names, codes, rare terms, numbers |
| **ColBERT (multi-vector)** | one vector per token | fine-grained matching: every query token finds its best partner in the document |

`langchain_bgem3` gives you all three in LangChain, plus a retriever that fuses them and a
reranker. This notebook covers: dense embeddings, lexical weights, ColBERT vectors, the hybrid
retriever, a RAG chain, reranking another retriever's results, and multilingual E5.
""" + SETUP_NOTE),
        code(ENV),
        code(CORPUS),
        md("""
## 1. Dense embeddings: `BGEM3Embeddings`

A drop-in `Embeddings` class (the fields follow `langchain_huggingface.HuggingFaceEmbeddings`).
Vectors are L2-normalised, so the dot product is the cosine similarity. BGE-M3 needs no query
prefix.
"""),
        code("""
import numpy as np
from langchain_bgem3 import BGEM3Embeddings

embeddings = BGEM3Embeddings(model_name=MODEL, model_kwargs={"device": DEVICE} if DEVICE else {})
doc_vectors = np.array(embeddings.embed_documents(corpus))
query = "Which city is the capital of France?"
query_vector = np.array(embeddings.embed_query(query))
print("vectors:", doc_vectors.shape)

similarity = doc_vectors @ query_vector
for i in np.argsort(-similarity)[:3]:
    print(f"{similarity[i]:.3f}  {corpus[i]}")
"""),
        md("""
Dense vectors go into any LangChain vector store. Here the in-memory one:
"""),
        code("""
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

documents = [Document(page_content=t, metadata={"topic": topic}, id=str(i))
             for i, (t, topic) in enumerate(zip(corpus, topics))]
dense_store = InMemoryVectorStore.from_documents(documents, embeddings)
for doc in dense_store.similarity_search("What does a vector database do?", k=2):
    print(doc.id, doc.page_content)
"""),
        md("""
## 2. Lexical weights: `BGEM3SparseEmbeddings`

Each token of the text gets a learned weight (like a BM25 term weight, but predicted by the model).
Two texts score by the sum, over the tokens they share, of the products of their weights. Use it when
exact terms matter: product codes, people's names, error messages. The class implements
langchain-qdrant's `SparseEmbeddings`, so `QdrantVectorStore(..., sparse_embedding=...)` can use it
for Qdrant's own hybrid mode. Pass `encoder=embeddings.encoder` to share the loaded model.
"""),
        code("""
from langchain_bgem3 import BGEM3SparseEmbeddings

sparse = BGEM3SparseEmbeddings(encoder=embeddings.encoder)
sv = sparse.embed_query(query)
tokenizer = embeddings.encoder.tokenizer
weights = sorted(zip(sv.values, tokenizer.convert_ids_to_tokens(sv.indices)), reverse=True)
print("query token weights:", [(tok, round(w, 3)) for w, tok in weights[:8]])
"""),
        code("""
from bgem3 import scoring

doc_sparse = sparse.embed_documents(corpus)
lexical = [scoring.lexical_score(dict(zip(sv.indices, sv.values)), dict(zip(d.indices, d.values))) for d in doc_sparse]
for i in np.argsort(lexical)[::-1][:3]:
    print(f"{lexical[i]:.3f}  {corpus[i]}")
"""),
        md("""
## 3. ColBERT vectors

LangChain has no interface for multi-vector embeddings, so they come straight from
`bgem3.Encoder` (the same object the LangChain classes use). The ColBERT score of a document is the
mean, over the query's tokens, of each token's best similarity with any document token. It is the
most precise of the three and the most expensive to store (one vector per token), which is why
the hybrid retriever below uses it to score a candidate pool rather than the whole corpus.
"""),
        code("""
encoder = embeddings.encoder
q = encoder.encode_queries([query], dense=False, colbert=True)
d = encoder.encode_documents(corpus, dense=False, colbert=True)
print("query token vectors:", q.colbert[0].shape, "| first document:", d.colbert[0].shape)
colbert = scoring.colbert_scores(q.colbert[0], d.colbert)
for i in np.argsort(-colbert)[:3]:
    print(f"{colbert[i]:.3f}  {corpus[i]}")
"""),
        md("""
## 4. The hybrid retriever: `BGEM3HybridRetriever`

It keeps the three representations of every document in a `bgem3.HybridIndex`, takes candidates
from the dense and the lexical top-N, scores each candidate on all three channels and ranks them by
`(0.4·dense + 0.2·lexical + 0.4·colbert) / 1.0` (the BGE-M3 paper's weights). Every returned
`Document` carries the fused and the per-channel scores in its metadata.
"""),
        code("""
from langchain_bgem3 import BGEM3HybridRetriever

retriever = BGEM3HybridRetriever.from_texts(corpus, encoder, metadatas=[{"topic": t} for t in topics], k=3)
for doc in retriever.invoke(query):
    m = doc.metadata
    print(f"{m['score']:.3f} (dense {m['dense_score']:.3f}, lexical {m['sparse_score']:.3f}, "
          f"colbert {m['colbert_score']:.3f})  {doc.page_content}")
"""),
        md("""
Per-call options: `k`, `weights`, `filter` (exact metadata match), `mode="rrf"` for
reciprocal-rank fusion. Lexical-heavy weights help for keyword queries, dense-heavy ones for
questions phrased unlike the documents.
"""),
        code("""
print([d.page_content[:40] for d in retriever.invoke("search engine", k=2, filter={"topic": "ir"})])
print([d.page_content[:40] for d in retriever.invoke("search engine", k=2, weights=(0.1, 0.8, 0.1))])
print([round(d.metadata["score"], 4) for d in retriever.invoke("search engine", k=2, mode="rrf")])
"""),
        md("""
## 5. In a RAG chain

The retriever is a `Runnable`, so it slots into LCEL. To keep this notebook runnable offline, the
"LLM" is `ParrotFakeChatModel`, which answers with the prompt it was given, so you can see exactly
what your model would receive. **Swap in your own chat model** (`ChatOpenAI`, `ChatOllama`,
`ChatAnthropic`, ...) on the marked line.
"""),
        code("""
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

llm = ParrotFakeChatModel()  # <- replace with your chat model

prompt = ChatPromptTemplate.from_template(
    "Answer the question using only this context.\\n\\nContext:\\n{context}\\n\\nQuestion: {question}"
)

def format_docs(docs):
    return "\\n".join(f"- {d.page_content}" for d in docs)

rag_chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
print(rag_chain.invoke("What is BGE M3?"))
"""),
        md("""
## 6. Reranking another retriever's results: `BGEM3Reranker`

Already have a retriever (a dense vector store, BM25, a web search)? `BGEM3Reranker` is a
`BaseDocumentCompressor`: it re-scores whatever documents it gets with all three channels and keeps
the `top_n`. Use it directly, or inside `ContextualCompressionRetriever`
(from `langchain_classic.retrievers`).
"""),
        code("""
from langchain_bgem3 import BGEM3Reranker

reranker = BGEM3Reranker(encoder=encoder, top_n=2)
candidates = dense_store.as_retriever(search_kwargs={"k": 6}).invoke(query)
for doc in reranker.compress_documents(candidates, query):
    print(f"{doc.metadata['score']:.3f}  {doc.page_content}")
"""),
        md("""
### A BGE cross-encoder: `BGECrossEncoderReranker`

A cross-encoder reads the query and each candidate *together*: slower than the channels above, sharper.
`BGECrossEncoderReranker` runs `BAAI/bge-reranker-v2-m3` (or `-large`, `-base`, the LLM reranker
`bge-reranker-v2-gemma`) with the scores FlagEmbedding's `FlagReranker` computes, and writes each kept
document's score into `metadata["relevance_score"]`. `BGERerankerCrossEncoder` is the same model as a
LangChain `BaseCrossEncoder`, for `CrossEncoderReranker(model=..., top_n=...)`; the hybrid retriever takes
`reranker=` too. More: `docs/rerank.md`.
"""),
        code("""
from langchain_bgem3 import BGECrossEncoderReranker

RERANKER_MODEL = os.environ.get("BGEM3_RERANKER_MODEL", "BAAI/bge-reranker-v2-m3")
cross = BGECrossEncoderReranker(model_name=RERANKER_MODEL, model_kwargs={"device": DEVICE}, top_n=2)
for doc in cross.compress_documents(candidates, query):
    print(f"cross-encoder {doc.metadata['relevance_score']:.3f}  {doc.page_content}")
"""),
        md("""
## 7. Multilingual E5: `E5Embeddings`

`intfloat/multilingual-e5-large` was trained with prefixes: `"query: "` before questions and
`"passage: "` before documents; leaving them out costs retrieval quality. `E5Embeddings` adds them
for you. For `intfloat/multilingual-e5-large-instruct`, queries become
`"Instruct: <task>\\nQuery: <text>"` and documents are left bare; set `task=` to describe your
search. E5 models give dense vectors only (no lexical or ColBERT heads).
"""),
        code("""
from langchain_bgem3 import E5Embeddings

from bgem3 import get_profile

e5 = E5Embeddings(model_name=E5_MODEL, model_kwargs={"device": DEVICE} if DEVICE else {})
e5_format = get_profile("e5-instruct" if "instruct" in E5_MODEL else "e5")
question = "Which city is the capital of France?"
print("queries are encoded as: ", repr(e5_format.format_query(question, None)))
print("passages are encoded as:", repr(e5_format.format_passage("Paris is the capital of France.")))
same = np.allclose(e5.embed_query(question), e5.encoder.encode([e5_format.format_query(question, None)]).dense[0], atol=1e-5)
print("embed_query(question) is the encoding of that string:", same)
e5_store = InMemoryVectorStore.from_documents(documents, e5)
for doc in e5_store.similarity_search("Which city is the capital of France?", k=2):
    print(doc.page_content)
"""),
        md("""
## Where next

* `03_hybrid_retrieval.ipynb`: the index itself, score fusion, pictures of per-channel scores and
  of ColBERT token matching.
* From the shell: `bgem3 index ./docs --index ./idx` then `bgem3 search "question" --index ./idx --explain`.
"""),
    ]
    return cells


# --------------------------------------------------------------------------- 02 LlamaIndex

def llamaindex_notebook():
    cells = [
        md("""
# BGE-M3 and multilingual E5 in LlamaIndex

BGE-M3 produces a **dense** vector (meaning), **lexical** token weights (exact terms) and
**ColBERT** token vectors (fine-grained matching) for every text. `llama_index_bgem3` brings them
to LlamaIndex: embedding classes for `Settings.embed_model`, a sparse embedding class, a hybrid
retriever that fuses all three scores, and a node postprocessor that reranks with them.
This notebook walks through each and ends with a query engine.
""" + SETUP_NOTE),
        code(ENV),
        code(CORPUS),
        md("""
## 1. Dense embeddings: `BGEM3Embedding`

A `BaseEmbedding`, usable as `Settings.embed_model` or passed to `VectorStoreIndex`.
Vectors are L2-normalised; BGE-M3 needs no query instruction.
"""),
        code("""
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index_bgem3 import BGEM3Embedding

embed_model = BGEM3Embedding(model_name=MODEL, device=DEVICE)
Settings.embed_model = embed_model
Settings.llm = MockLLM()  # offline stand-in; see section 5

query = "Which city is the capital of France?"
q = embed_model.get_query_embedding(query)
print(len(q), "numbers; similarity to two documents:",
      [round(embed_model.similarity(q, embed_model.get_text_embedding(t)), 3) for t in corpus[5:7]])
"""),
        code("""
documents = [Document(text=t, metadata={"topic": topic}, id_=f"doc{i}")
             for i, (t, topic) in enumerate(zip(corpus, topics))]
dense_index = VectorStoreIndex.from_documents(documents)
for hit in dense_index.as_retriever(similarity_top_k=2).retrieve("What does a vector database do?"):
    print(f"{hit.score:.3f}  {hit.node.get_content()}")
"""),
        md("""
## 2. Lexical weights: `BGEM3SparseEmbedding`

Token id -> weight dictionaries, the LlamaIndex `BaseSparseEmbedding` interface. Good for exact
terms (names, codes, rare words) that dense vectors can blur. `qdrant_sparse_fns()` returns the
`sparse_doc_fn` / `sparse_query_fn` pair that LlamaIndex's `QdrantVectorStore(enable_hybrid=True)`
takes, so Qdrant can do its own hybrid search with BGE-M3 weights.
"""),
        code("""
from llama_index_bgem3 import BGEM3SparseEmbedding

sparse_model = BGEM3SparseEmbedding(encoder=embed_model.encoder)  # shares the loaded weights
weights = sparse_model.get_query_embedding(query)
tokenizer = embed_model.encoder.tokenizer
top = sorted(weights.items(), key=lambda kv: -kv[1])[:8]
print([(tokenizer.convert_ids_to_tokens(t), round(w, 3)) for t, w in top])
"""),
        md("""
## 3. ColBERT vectors

One vector per token, from `bgem3.Encoder` (LlamaIndex has no multi-vector embedding interface).
A document's ColBERT score is the mean over query tokens of their best match among the document's
tokens. Precise, but large: use it on candidates, as the retriever below does.
"""),
        code("""
from bgem3 import scoring

encoder = embed_model.encoder
qc = encoder.encode_queries([query], dense=False, colbert=True).colbert[0]
dc = encoder.encode_documents(corpus, dense=False, colbert=True).colbert
scores = scoring.colbert_scores(qc, dc)
best = scores.argsort()[::-1][:3]
print("query tokens x dim:", qc.shape)
for i in best:
    print(f"{scores[i]:.3f}  {corpus[i]}")
"""),
        md("""
## 4. The hybrid retriever: `BGEM3HybridRetriever`

Built from documents (split into nodes like `VectorStoreIndex.from_documents` does) or nodes. It
stores all three representations in a `bgem3.HybridIndex`, takes candidates from the dense and the
lexical top-N, and ranks them by `0.4·dense + 0.2·lexical + 0.4·colbert` (the BGE-M3 paper's
weights). `NodeWithScore.score` is the fused score; the channel scores are in the node metadata,
excluded from what the LLM sees.
"""),
        code("""
from llama_index_bgem3 import BGEM3HybridRetriever

retriever = BGEM3HybridRetriever.from_documents(documents, encoder, similarity_top_k=3)
for hit in retriever.retrieve(query):
    m = hit.node.metadata
    print(f"{hit.score:.3f} (dense {m['dense_score']:.3f}, lexical {m['sparse_score']:.3f}, "
          f"colbert {m['colbert_score']:.3f})  {hit.node.get_content()}")
"""),
        md("""
Metadata filters (exact match, `EQ` / `IN`) are applied before candidates are chosen:
"""),
        code("""
from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters

geo = BGEM3HybridRetriever(retriever.store, similarity_top_k=5,
                           filters=MetadataFilters(filters=[ExactMatchFilter(key="topic", value="geo")]))
print([hit.node.metadata["topic"] for hit in geo.retrieve("capital city")])
"""),
        md("""
## 5. In a query engine (RAG)

`Settings.llm = MockLLM()` above echoes the prompt instead of answering, so this runs offline and
shows what your LLM would be sent. **Put your own LLM there** (`OpenAI`, `Ollama`, `Anthropic`, ...).
`BGEM3Reranker` can rerank any retriever's nodes; here it narrows the hybrid retriever's top 3 to 2.
"""),
        code("""
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index_bgem3 import BGEM3Reranker

reranker = BGEM3Reranker(encoder=encoder, top_n=2)
query_engine = RetrieverQueryEngine.from_args(retriever, node_postprocessors=[reranker])
response = query_engine.query("What is BGE M3?")
print(str(response)[:600])
print("sources:", [n.node.get_content()[:40] for n in response.source_nodes])
"""),
        md("""
The reranker also improves a plain dense index: retrieve generously, rerank with all three
channels, keep the best.
"""),
        code("""
dense_engine = dense_index.as_query_engine(similarity_top_k=6, node_postprocessors=[BGEM3Reranker(encoder=encoder, top_n=2)])
print([n.node.get_content()[:50] for n in dense_engine.query(query).source_nodes])
"""),
        md("""
Or rerank with a BGE cross-encoder, which reads the question and each node together: `BGERerank` runs
`BAAI/bge-reranker-v2-m3` (FlagEmbedding's `FlagReranker` scores) and takes the argument names of
LlamaIndex's `FlagEmbeddingReranker` and `SentenceTransformerRerank` (`model`, `top_n`, `use_fp16`, `device`,
`keep_retrieval_score`). More: `docs/rerank.md`.
"""),
        code("""
from llama_index_bgem3 import BGERerank

RERANKER_MODEL = os.environ.get("BGEM3_RERANKER_MODEL", "BAAI/bge-reranker-v2-m3")
cross = BGERerank(model=RERANKER_MODEL, top_n=2, device=DEVICE, keep_retrieval_score=True)
cross_engine = dense_index.as_query_engine(similarity_top_k=6, node_postprocessors=[cross])
for n in cross_engine.query(query).source_nodes:
    print(f"cross-encoder {n.score:.3f} (retrieval {n.node.metadata['retrieval_score']:.3f})  {n.node.get_content()[:50]}")
"""),
        md("""
## 6. Multilingual E5: `E5Embedding`

E5 models expect `"query: "` before queries and `"passage: "` before documents (for
`multilingual-e5-large-instruct`: `"Instruct: <task>\\nQuery: "` before queries, nothing before
documents; set `task=`). `E5Embedding` applies them, so nothing else in your pipeline changes.
E5 gives dense vectors only.
"""),
        code("""
from llama_index_bgem3 import E5Embedding

import numpy as np
from bgem3 import get_profile

e5 = E5Embedding(model_name=E5_MODEL, device=DEVICE)
e5_format = get_profile("e5-instruct" if "instruct" in E5_MODEL else "e5")
print("queries are encoded as: ", repr(e5_format.format_query(query, None)))
print("passages are encoded as:", repr(e5_format.format_passage(corpus[5])))
same = np.allclose(e5.get_query_embedding(query), e5.encoder.encode([e5_format.format_query(query, None)]).dense[0], atol=1e-5)
print("get_query_embedding(query) is the encoding of that string:", same)
e5_index = VectorStoreIndex.from_documents(documents, embed_model=e5)
print([hit.node.get_content()[:50] for hit in e5_index.as_retriever(similarity_top_k=2).retrieve(query)])
"""),
    ]
    return cells


# --------------------------------------------------------------------------- 03 hybrid retrieval

def hybrid_notebook():
    cells = [
        md("""
# Hybrid retrieval with BGE-M3, and what each channel sees

This notebook works with `bgem3` directly (no framework): the `Encoder`, the embedded
`HybridIndex`, score fusion, and `bgem3.explain`. It draws two pictures:

1. the dense, lexical and ColBERT scores of a query's hits, side by side;
2. a ColBERT heatmap: every query token against every document token.
""" + SETUP_NOTE),
        code(ENV + '''
import matplotlib
matplotlib.use("Agg")  # render to images; works the same in Jupyter and in scripts
import matplotlib.pyplot as plt
from io import BytesIO
from IPython.display import Image, display

def show(fig):
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    display(Image(buf.getvalue()))
'''),
        code(CORPUS),
        md("""
## 1. One encoder, three outputs

`Encoder` loads the model once (GPU with fp16 if there is one, fp32 on CPU) and computes only what
you ask for. Its numbers match FlagEmbedding's `BGEM3FlagModel` in fp32.
"""),
        code("""
from bgem3 import Encoder, HybridIndex, scoring

encoder = Encoder(MODEL, device=DEVICE)
out = encoder.encode(corpus[:2], dense=True, sparse=True, colbert=True)
print(encoder)
print("dense:", out.dense.shape, "| lexical weights of text 0:", len(out.sparse[0]), "tokens",
      "| ColBERT of text 0:", out.colbert[0].shape)
"""),
        md("""
## 2. The index

`HybridIndex` stores dense vectors as one matrix, lexical weights as a sparse (CSR) matrix and all
ColBERT vectors in one fp16 array. `search` takes the dense top-N and the lexical top-N as
candidates (`candidates=100` by default), scores every candidate on all three channels and ranks by
the weighted mean. Ids and metadata are yours; adding an existing id replaces it.
"""),
        code("""
index = HybridIndex(encoder)
index.add(corpus, ids=[f"doc{i}" for i in range(len(corpus))], metadatas=[{"topic": t} for t in topics])
query = "Which city is the capital of France?"
hits = index.search(query, k=5)
for h in hits:
    print(f"{h.id:6} {h.score:.3f}  dense {h.dense_score:.3f}  lexical {h.sparse_score:.3f}  "
          f"colbert {h.colbert_score:.3f}  {h.text[:50]}")
"""),
        md("""
### Picture 1: per-channel scores of the hits

Dense and ColBERT scores are cosine similarities (at most 1); the lexical score is a sum of weight
products and has its own scale, which is one reason the fusion weights matter.
"""),
        code("""
import numpy as np

labels = [f"{h.id}: {h.text[:28]}…" for h in hits]
channels = {"dense": [h.dense_score for h in hits], "lexical": [h.sparse_score for h in hits],
            "ColBERT": [h.colbert_score for h in hits], "fused": [h.score for h in hits]}
fig, ax = plt.subplots(figsize=(9, 4))
width = 0.2
x = np.arange(len(hits))
for j, (name, values) in enumerate(channels.items()):
    ax.bar(x + (j - 1.5) * width, values, width, label=name)
ax.set_xticks(x, labels, rotation=20, ha="right")
ax.set_ylabel("score")
ax.set_title(f"Hits for: {query!r}")
ax.legend()
show(fig)
"""),
        md("""
## 3. Choosing the fusion

* `weights=(dense, lexical, colbert)`: the default `(0.4, 0.2, 0.4)` is the BGE-M3 paper's. Raise
  the lexical weight for keyword-like queries (part numbers, names), the dense weight for questions
  worded differently from the documents.
* `mode="rrf"`: reciprocal-rank fusion, `Σ w / (60 + rank)`, ignores the score scales altogether.
* `exhaustive=True` scores every document instead of the candidates (for checking; slower).
"""),
        code("""
for weights in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.4, 0.2, 0.4)]:
    print(weights, [h.id for h in index.search(query, k=3, weights=weights)])
print("rrf", [h.id for h in index.search(query, k=3, mode="rrf")])
exact = [h.id for h in index.search(query, k=3, exhaustive=True)]
print("candidates agree with exhaustive scoring:", exact == [h.id for h in index.search(query, k=3)])
"""),
        md("""
## 4. Why did it match? `bgem3.explain`

`explain(encoder, query, text)` recomputes a pair's scores token by token: the shared tokens and
their contribution to the lexical score, and, for each query token, the document token it matched
best in ColBERT. `bgem3 search --explain` prints the same from the shell.
"""),
        code("""
from bgem3.explain import display_token, explain

top = hits[0]
ex = explain(encoder, query, top.text)
print("lexical score", round(ex.sparse_score, 4), "=", " + ".join(
    f"{display_token(m.token)} {m.contribution:.3f}" for m in ex.top_lexical(5)), "+ …" if len(ex.lexical) > 5 else "")
print("ColBERT score", round(ex.colbert_score, 4), "= mean of",
      [(display_token(m.query_token), display_token(m.doc_token), round(m.similarity, 2)) for m in ex.colbert])
"""),
        md("""
### Picture 2: ColBERT query-token x document-token similarities

Each row is a query token, each column a document token; the boxed cell in each row is the match
that counts (the row maximum). The ColBERT score is the mean of the boxed values.
"""),
        code("""
from matplotlib.patches import Rectangle

sim = ex.similarity
fig, ax = plt.subplots(figsize=(max(6, 0.45 * sim.shape[1]), max(3, 0.4 * sim.shape[0])))
im = ax.imshow(sim, cmap="viridis", vmin=min(0.0, float(sim.min())), vmax=1.0, aspect="auto")
ax.set_xticks(range(len(ex.doc_tokens)), [display_token(t) for t in ex.doc_tokens], rotation=60, ha="right")
ax.set_yticks(range(len(ex.query_tokens)), [display_token(t) for t in ex.query_tokens])
for m in ex.colbert:
    ax.add_patch(Rectangle((m.doc_position - 0.5, m.query_position - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
ax.set_xlabel("document tokens")
ax.set_ylabel("query tokens")
ax.set_title(f"ColBERT similarities, {top.id} (score {ex.colbert_score:.3f})")
fig.colorbar(im, ax=ax, fraction=0.03)
show(fig)
"""),
        md("""
## 5. Filters, updates and persistence

Filters match metadata exactly (a list means "any of"). `delete` removes documents; `save` writes
numpy arrays and JSON (no pickle) atomically, and `load` refuses an index built with a different
model.
"""),
        code("""
import tempfile

print([h.id for h in index.search("capital", k=3, filter={"topic": "geo"})])
index.add(["Madrid is the capital of Spain."], ids=["doc-madrid"], metadatas=[{"topic": "geo"}])
index.delete(["doc6"])
folder = tempfile.mkdtemp()
index.save(folder)
reloaded = HybridIndex.load(folder, encoder=encoder)
print(len(reloaded), "documents;", "doc-madrid" in reloaded, "doc6" in reloaded)
print([h.id for h in reloaded.search(query, k=3)] == [h.id for h in index.search(query, k=3)])
"""),
        md("""
## 6. In a RAG pipeline

The index is framework-free; a RAG step is "retrieve, then put the texts in the prompt". With
LangChain or LlamaIndex use `BGEM3HybridRetriever` (see notebooks 01 and 02); by hand:
"""),
        code("""
def build_prompt(question: str, k: int = 3) -> str:
    context = "\\n".join(f"- {h.text}" for h in index.search(question, k=k))
    return f"Answer using only this context.\\n\\nContext:\\n{context}\\n\\nQuestion: {question}"

def llm(prompt: str) -> str:  # an echo stand-in: replace with a call to your LLM
    return prompt

print(llm(build_prompt("What is BGE M3?")))
"""),
    ]
    return cells


NOTEBOOKS = {
    "01_langchain.ipynb": langchain_notebook,
    "02_llamaindex.ipynb": llamaindex_notebook,
    "03_hybrid_retrieval.ipynb": hybrid_notebook,
}


def build(name: str):
    nb = new_notebook(cells=NOTEBOOKS[name]())
    stem = name.split("_")[0]
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives identical files
        cell["id"] = f"nb{stem}-{i:02d}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main(out_dir: str = OUT) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name in NOTEBOOKS:
        nb = build(name)
        nbformat.validate(nb)
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as fh:
            nbformat.write(nb, fh)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in main(sys.argv[1] if len(sys.argv) > 1 else OUT):
        print("wrote", p)
