"""Query instructions and templates: the frameworks' BGE query instruction, and E5's ``query: `` /
``passage: `` templates (E5-instruct's task line) as a :class:`~bgem3.profiles.Profile`."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Optional, Union

from ..encoder import resolve_model_path
from ..profiles import Profile, detect_profile, get_profile
from ..remote import is_url

#: The BGE (English, v1.5 and older) query instruction both frameworks' own classes use
#: (``langchain_community``'s ``HuggingFaceBgeEmbeddings`` and LlamaIndex's
#: ``HuggingFaceEmbedding`` for ``BAAI/bge-*-en*``). BGE's model card and bgem3's ``"bge"``
#: profile say "this sentence"; the adapters use the frameworks' wording by default so that
#: switching classes keeps the same query vectors.
FRAMEWORK_BGE_QUERY_INSTRUCTION = "Represent this question for searching relevant passages: "


def framework_query_instruction(profile: Profile, query_instruction: Optional[str]) -> Optional[str]:
    """``query_instruction`` if set, else the frameworks' BGE instruction for an English BGE
    profile, else ``None`` (keep the profile's template)."""
    if query_instruction is not None:
        return query_instruction
    if profile.name == "bge":
        return FRAMEWORK_BGE_QUERY_INSTRUCTION
    return None


def e5_templates(profile: Profile, task: Optional[str] = None) -> Profile:
    """The profile an E5 facade applies: E5's own if the model is an E5, else E5's prefixes on top.

    ``task`` selects the e5-instruct format (``Instruct: {task}\\nQuery: {q}``, documents as
    they are). A model known as a plain (non-instruct) E5 refuses a ``task``.
    """
    if profile.name == "e5-instruct":
        return profile if task is None else replace(profile, task=task)
    if profile.name == "e5":
        if task is not None:
            raise ValueError(
                f"task={task!r} is for e5-instruct models (e.g. intfloat/multilingual-e5-large-instruct); this "
                "model is a plain E5, which takes 'query: ' / 'passage: ' prefixes and no task. "
                "Drop task=, or set query_instruction= to change the query prefix."
            )
        return profile
    if profile.name in ("m3", "bge", "bge-zh"):
        raise ValueError(
            f"this model uses the {profile.name!r} profile, not E5: use BGEM3Embeddings / BGEM3Embedding "
            "for BGE-M3, or pass an E5 model (e.g. 'intfloat/multilingual-e5-large')"
        )
    # a generic mean/CLS-pooled folder: keep its pooling, add the E5 templates
    e5 = get_profile("e5-instruct" if task is not None else "e5")
    return replace(profile, name=e5.name, query_template=e5.query_template,
                   passage_template=e5.passage_template, task=task if task is not None else e5.task)


def e5_encoder_profile(model_name_or_path: Union[str, os.PathLike], *, task: Optional[str] = None,
                       cache_dir: Optional[str] = None, revision: Optional[str] = None,
                       local_files_only: Optional[bool] = None) -> Optional[str]:
    """``None`` when the model folder tells its own pooling, else ``"e5"`` (``"e5-instruct"``
    with a ``task``), both mean pooling.

    An E5 facade passes the result as ``profile=`` so a bare E5 folder (no sentence-transformers
    config, unknown name) still loads with E5's mean pooling. A ``bgem3 serve`` URL gives ``None``:
    the server chose the pooling when it loaded the model (the facade adds E5's templates on top).
    """
    if is_url(model_name_or_path):
        return None
    path = resolve_model_path(model_name_or_path, cache_dir=cache_dir, revision=revision,
                              local_files_only=local_files_only)
    try:
        detect_profile(path, name_hint=os.fspath(model_name_or_path))
    except ValueError:
        return "e5-instruct" if task is not None else "e5"
    return None
