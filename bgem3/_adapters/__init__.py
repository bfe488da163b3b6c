"""The glue the LangChain and LlamaIndex adapters share (framework-free; the adapter packages hold no logic of
their own). Each module is named by what it holds:

* :mod:`.text_encoder` -- :class:`~bgem3._adapters.text_encoder.TextEncoder`, a view of one encoder with its own
  query / document prefixes, returning what the frameworks want (dense rows, sparse dicts, Qdrant lists);
* :mod:`.options` -- the sentence-transformers option tables (``model_kwargs`` / ``encode_kwargs``);
* :mod:`.instructions` -- the frameworks' BGE query instruction and E5's templates;
* :mod:`.arguments` -- the adapters' argument checks and errors;
* :mod:`.scores` -- bgem3's scores written into a framework's metadata;
* :mod:`.retrieval` -- the retrievers over a hybrid store;
* :mod:`.rerankers` -- the rerankers' encoder and the cross-encoder step.

The process-wide encoder cache (``shared_encoder``) is :mod:`bgem3._loading`, below the stores, since the stores
load encoders too. Nothing under ``bgem3/stores`` or ``bgem3/index`` imports this package.
"""
