"""What a model family needs: pooling, heads, and query/passage templates.

A :class:`Profile` is a small frozen record. :func:`detect_profile` picks one for a
model folder (M3 head files -> ``m3``; a known hub id -> its profile; a
sentence-transformers pooling config -> that pooling), and :func:`get_profile`
looks one up by name.

Example::

    >>> from bgem3.profiles import get_profile
    >>> p = get_profile("e5")
    >>> p.format_query("how much protein should a female eat")
    'query: how much protein should a female eat'
    >>> p.format_passage("As a general guideline ...")
    'passage: As a general guideline ...'
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Literal, Optional

Pooling = Literal["cls", "mean", "lasttoken"]

#: Head files shipped next to BGE-M3's encoder weights.
M3_HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")

DEFAULT_E5_INSTRUCT_TASK = "Given a web search query, retrieve relevant passages that answer the query"


@dataclass(frozen=True)
class Profile:
    """How to turn a model family's hidden states into embeddings.

    Attributes:
        name: short profile name (``"m3"``, ``"e5"``, ``"e5-instruct"``, ``"bge"``, ``"st"``).
        pooling: ``"cls"``, ``"mean"`` (over the attention mask) or ``"lasttoken"``.
        normalize: L2-normalise dense vectors.
        query_template: template applied by ``encode_queries``; ``{text}`` is the query and
            ``{task}`` the instruction (e5-instruct). ``None`` means the text is used as is.
        passage_template: template applied by ``encode_documents``; ``None`` = as is.
        task: the default task for templates that contain ``{task}``.
        has_heads: the model ships BGE-M3's sparse and ColBERT heads.
    """

    name: str
    pooling: Pooling = "cls"
    normalize: bool = True
    query_template: Optional[str] = None
    passage_template: Optional[str] = None
    task: Optional[str] = None
    has_heads: bool = False

    def format_query(self, text: str, task: Optional[str] = None) -> str:
        """Apply the query template (if any) to one text."""
        return _apply(self.query_template, text, task or self.task)

    def format_passage(self, text: str) -> str:
        """Apply the passage template (if any) to one text."""
        return _apply(self.passage_template, text, self.task)

    def with_templates(self, query_template=..., passage_template=..., task=...) -> "Profile":
        """A copy with templates replaced; ``...`` keeps the current value, ``None``/``""`` turns it off."""
        changes = {}
        for key, value in (("query_template", query_template), ("passage_template", passage_template)):
            if value is ...:
                continue
            if value:
                validate_template(value, key)
            changes[key] = value or None
        if task is not ...:
            changes["task"] = task
        return replace(self, **changes)


def validate_template(template: str, name: str = "template") -> None:
    """Raise ``ValueError`` unless ``template`` contains a ``{text}`` placeholder and formats cleanly."""
    if not isinstance(template, str):
        raise TypeError(f"{name} must be a string containing '{{text}}', got {type(template).__name__}")
    if "{text}" not in template:
        raise ValueError(
            f"{name} {template!r} has no '{{text}}' placeholder; write it like 'query: {{text}}' "
            "(or pass None to apply no template)"
        )
    try:
        template.format(text="", task="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{name} {template!r} is not a valid format string ({exc}); only {{text}} and {{task}} "
            "may appear in braces (double literal braces: '{{{{' and '}}}}')"
        ) from None


def _apply(template: Optional[str], text: str, task: Optional[str]) -> str:
    if not template:
        return text
    return template.format(text=text, task=task or "")


M3 = Profile(name="m3", pooling="cls", has_heads=True)
E5 = Profile(name="e5", pooling="mean", query_template="query: {text}", passage_template="passage: {text}")
E5_INSTRUCT = Profile(
    name="e5-instruct",
    pooling="mean",
    query_template="Instruct: {task}\nQuery: {text}",
    passage_template=None,
    task=DEFAULT_E5_INSTRUCT_TASK,
)
BGE = Profile(
    name="bge",
    pooling="cls",
    query_template="Represent this sentence for searching relevant passages: {text}",
)
BGE_ZH = replace(BGE, name="bge-zh", query_template="为这个句子生成表示以用于检索相关文章：{text}")

PROFILES: dict[str, Profile] = {p.name: p for p in (M3, E5, E5_INSTRUCT, BGE, BGE_ZH)}

# Hub ids (lower-cased, without organisation where unambiguous) -> profile name.
KNOWN_MODELS: dict[str, str] = {
    "baai/bge-m3": "m3",
    "intfloat/multilingual-e5-large-instruct": "e5-instruct",
    "intfloat/e5-mistral-7b-instruct": "e5-instruct",
    "intfloat/multilingual-e5-large": "e5",
    "intfloat/multilingual-e5-base": "e5",
    "intfloat/multilingual-e5-small": "e5",
    "intfloat/e5-large-v2": "e5",
    "intfloat/e5-base-v2": "e5",
    "intfloat/e5-small-v2": "e5",
    "baai/bge-large-en-v1.5": "bge",
    "baai/bge-base-en-v1.5": "bge",
    "baai/bge-small-en-v1.5": "bge",
    "baai/bge-large-zh-v1.5": "bge-zh",
    "baai/bge-base-zh-v1.5": "bge-zh",
    "baai/bge-small-zh-v1.5": "bge-zh",
}


def get_profile(name: str) -> Profile:
    """Look a profile up by name (``m3``, ``e5``, ``e5-instruct``, ``bge``, ``bge-zh``)."""
    if isinstance(name, Profile):
        return name
    key = str(name).lower()
    if key in PROFILES:
        return PROFILES[key]
    raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)} or pass a bgem3.Profile")


def profile_for_hub_id(name: str) -> Optional[Profile]:
    """The profile of a known hub id (also matches HF cache folder names), else ``None``."""
    key = name.strip().rstrip("/").lower()
    # HF cache layout: .../models--intfloat--multilingual-e5-large/snapshots/<sha>
    for part in reversed(key.replace("\\", "/").split("/")):
        if part.startswith("models--"):
            key = part[len("models--"):].replace("--", "/")
            break
    if key in KNOWN_MODELS:
        return PROFILES[KNOWN_MODELS[key]]
    tail = key.split("/")[-1]
    for hub_id, prof in KNOWN_MODELS.items():
        if hub_id.split("/")[-1] == tail:
            return PROFILES[prof]
    return None


def read_sentence_transformers_profile(folder: str) -> Optional[Profile]:
    """Build a profile from a sentence-transformers folder (modules.json + pooling config)."""
    modules_path = os.path.join(folder, "modules.json")
    pooling_dir = None
    normalize = False
    if os.path.isfile(modules_path):
        try:
            with open(modules_path, encoding="utf-8") as fh:
                modules = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{modules_path} is not valid JSON ({exc}); fix or remove it") from None
        for mod in modules:
            kind = str(mod.get("type", ""))
            if kind.endswith("Pooling"):
                pooling_dir = os.path.join(folder, mod.get("path", ""))
            elif kind.endswith("Normalize"):
                normalize = True
    elif os.path.isfile(os.path.join(folder, "1_Pooling", "config.json")):
        pooling_dir = os.path.join(folder, "1_Pooling")
    if pooling_dir is None:
        return None
    cfg_path = os.path.join(pooling_dir, "config.json")
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the pooling config {cfg_path} ({exc})") from None
    if cfg.get("pooling_mode_cls_token"):
        pooling: Pooling = "cls"
    elif cfg.get("pooling_mode_lasttoken"):
        pooling = "lasttoken"
    elif cfg.get("pooling_mode_mean_tokens"):
        pooling = "mean"
    else:
        modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
        raise ValueError(
            f"{cfg_path} asks for pooling {modes}, which bgem3 does not support; "
            "supported: cls, mean, lasttoken"
        )
    query_t = passage_t = None
    st_cfg = os.path.join(folder, "config_sentence_transformers.json")
    if os.path.isfile(st_cfg):
        try:
            with open(st_cfg, encoding="utf-8") as fh:
                prompts = json.load(fh).get("prompts") or {}
        except (OSError, json.JSONDecodeError):
            prompts = {}
        if prompts.get("query"):
            query_t = _escape(prompts["query"]) + "{text}"
        doc_prompt = prompts.get("document") or prompts.get("passage")
        if doc_prompt:
            passage_t = _escape(doc_prompt) + "{text}"
    return Profile(name="st", pooling=pooling, normalize=normalize, query_template=query_t, passage_template=passage_t)


def _escape(s: str) -> str:
    return s.replace("{", "{{").replace("}", "}}")


def detect_profile(folder: str, name_hint: Optional[str] = None) -> Profile:
    """Pick the profile for a local model folder.

    Order: M3 head files present -> ``m3``; a known hub id (``name_hint`` or the folder's
    HF-cache name) -> its profile; a sentence-transformers pooling config -> its pooling.
    Raises ``ValueError`` naming the folder when none applies.
    """
    if all(os.path.isfile(os.path.join(folder, f)) for f in M3_HEAD_FILES):
        return M3
    for hint in (name_hint, folder):
        if hint:
            prof = profile_for_hub_id(hint)
            if prof is not None:
                return prof
    st = read_sentence_transformers_profile(folder)
    if st is not None:
        return st
    raise ValueError(
        f"cannot tell how to pool the model in {folder!r}: it has no BGE-M3 head files, no "
        "sentence-transformers pooling config, and is not a known hub id. Pass profile='m3', "
        "'e5', 'e5-instruct' or 'bge' (or a bgem3.Profile) to Encoder(...)."
    )
