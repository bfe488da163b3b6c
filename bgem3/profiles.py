"""What a model family needs: pooling, heads, and query/passage templates.

A :class:`Profile` is a small frozen record. :func:`detect_profile` picks one for a model folder
(M3 head files -> ``m3``; what a sentence-transformers folder declares wins; the family named by
the hub id, folder name, ``config.json`` or model card fills in templates; see
:mod:`bgem3.families` for the name table), and :func:`get_profile` looks one up by profile name,
pooling name (``"cls"``, ``"mean"``, ``"lasttoken"``) or known model name.

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
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Literal, Optional, Union

from .families import FAMILIES, family_for_name
from .st_pipeline import read_st_pipeline

logger = logging.getLogger(__name__)

Pooling = Literal["cls", "mean", "lasttoken", "max", "mean_sqrt_len_tokens"]

#: Head files shipped next to BGE-M3's encoder weights.
M3_HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")

DEFAULT_E5_INSTRUCT_TASK = "Given a web search query, retrieve relevant passages that answer the query"

#: LLM-Embedder's instructions per task: (query instruction, key instruction), from its model card.
LLM_EMBEDDER_INSTRUCTIONS: dict[str, tuple[str, str]] = {
    "qa": ("Represent this query for retrieving relevant documents: ", "Represent this document for retrieval: "),
    "convsearch": ("Encode this query and context for searching relevant passages: ",
                   "Encode this passage for retrieval: "),
    "chat": ("Embed this dialogue to find useful historical dialogues: ", "Embed this historical dialogue for retrieval: "),
    "lrlm": ("Embed this text chunk for finding useful historical chunks: ",
             "Embed this historical text chunk for retrieval: "),
    "icl": ("Convert this example into vector to look for useful examples: ",
            "Convert this example into vector for retrieval: "),
    "tool": ("Transform this user request for fetching helpful tool descriptions: ",
             "Transform this tool description for retrieval: "),
}

#: FlagICLModel's defaults for bge-en-icl.
ICL_EXAMPLE_TEMPLATE = "<instruct>{task}\n<query>{query}\n<response>{response}"
ICL_SUFFIX = "\n<response>"


@dataclass(frozen=True)
class Profile:
    """How to turn a model family's hidden states into embeddings.

    Attributes:
        name: short profile name (``"m3"``, ``"e5"``, ``"e5-instruct"``, ``"bge"``, ``"llm-instruct"``, ...).
        pooling: ``"cls"``, ``"mean"`` (over the attention mask), ``"lasttoken"``, ``"max"`` or
            ``"mean_sqrt_len_tokens"`` (the last two only from a sentence-transformers folder).
        normalize: L2-normalise dense vectors.
        query_template: template applied by ``encode_queries``; ``{text}`` is the query and
            ``{task}`` the instruction. ``None`` means the text is used as is.
        passage_template: template applied by ``encode_documents``; ``None`` = as is.
        task: the default task for templates that contain ``{task}`` (for ``llm-embedder``: one of
            the task names of :data:`LLM_EMBEDDER_INSTRUCTIONS`).
        has_heads: the model ships BGE-M3's sparse and ColBERT heads.
        include_prompt: pool the template's prefix tokens too (``False``: sentence-transformers'
            ``include_prompt=False``, the prefix is masked out of pooling).
        task_instructions: per-task ``(query, key)`` instructions selectable per call (LLM-Embedder).
        icl: queries carry few-shot examples (bge-en-icl, FlagICLModel's format).
        examples: default few-shot examples, dicts with ``query``, ``response`` and optionally ``instruct``.
        default_max_length: truncation length when none is given (FlagEmbedding's 512 for the
            decoder-only families); ``None`` = the model's own limit.
    """

    name: str
    pooling: Pooling = "cls"
    normalize: bool = True
    query_template: Optional[str] = None
    passage_template: Optional[str] = None
    task: Optional[str] = None
    has_heads: bool = False
    include_prompt: bool = True
    task_instructions: Optional[dict] = field(default=None, compare=False)
    icl: bool = False
    examples: Optional[tuple] = None
    default_max_length: Optional[int] = None

    def format_query(self, text: str, task: Optional[str] = None) -> str:
        """Apply the query template (if any) to one text; a text that already starts with the
        template's prefix is left as is (no ``query: query: ...``)."""
        if self.task_instructions is not None:
            return _prefix_once(self._instruction(task)[0], text)
        return _apply(self.query_template, text, task or self.task)

    def format_passage(self, text: str, task: Optional[str] = None) -> str:
        """Apply the passage template (if any) to one text, with the same no-double-prefix rule."""
        if self.task_instructions is not None:
            return _prefix_once(self._instruction(task)[1], text)
        if task is not None and (not self.passage_template or "{task}" not in self.passage_template):
            raise ValueError(
                f"the {self.name!r} profile's passage template takes no task (got task={task!r}); "
                "tasks apply to queries: encode_queries(texts, task=...)"
            )
        return _apply(self.passage_template, text, task or self.task)

    def query_prefix(self, task: Optional[str] = None) -> str:
        """The literal text the query template puts before ``{text}`` (``""`` if none)."""
        if self.task_instructions is not None:
            return self._instruction(task)[0]
        return _prefix(self.query_template, task or self.task)

    def passage_prefix(self, task: Optional[str] = None) -> str:
        """The literal text the passage template puts before ``{text}`` (``""`` if none)."""
        if self.task_instructions is not None:
            return self._instruction(task)[1]
        return _prefix(self.passage_template, task or self.task)

    def _instruction(self, task: Optional[str]) -> tuple[str, str]:
        key = task or self.task or "qa"
        assert self.task_instructions is not None
        if key not in self.task_instructions:
            raise ValueError(
                f"unknown task {key!r} for the {self.name!r} profile; choose one of "
                f"{sorted(self.task_instructions)}"
            )
        return self.task_instructions[key]

    def with_templates(self, query_template=..., passage_template=..., task=...) -> "Profile":
        """A copy with templates replaced; ``...`` keeps the current value, ``None``/``""`` turns it off.

        On a profile with per-task instructions (LLM-Embedder), an explicit template fixes both
        sides to plain templates (the other side keeps the current task's instruction).
        """
        base = self
        if self.task_instructions is not None and (query_template is not ... or passage_template is not ...):
            if task is not ... and task is not None:
                base = replace(base, task=task)
            q, k = base._instruction(None)
            base = replace(base, task_instructions=None, task=None,
                           query_template=_escape(q) + "{text}", passage_template=_escape(k) + "{text}")
            task = ...
        changes: dict = {}
        for key, value in (("query_template", query_template), ("passage_template", passage_template)):
            if value is ...:
                continue
            if value:
                validate_template(value, key)
            changes[key] = value or None
        if task is not ...:
            if task is not None and base.task_instructions is not None and task not in base.task_instructions:
                raise ValueError(f"unknown task {task!r} for the {base.name!r} profile; choose one of "
                                 f"{sorted(base.task_instructions)}")
            changes["task"] = task
        return replace(base, **changes)


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


def _prefix(template: Optional[str], task: Optional[str]) -> str:
    if not template:
        return ""
    return template.split("{text}", 1)[0].format(task=task or "")


def _prefix_once(prefix: str, text: str) -> str:
    return text if (prefix and text.startswith(prefix)) else prefix + text


def _apply(template: Optional[str], text: str, task: Optional[str]) -> str:
    """Format ``template`` with ``text``; a text that already starts with the template's prefix
    (``query: `` for E5) is returned unchanged, so prefixes are never doubled."""
    if not template:
        return text
    prefix = _prefix(template, task)
    if prefix and text.startswith(prefix) and template.endswith("{text}"):
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
LLM_EMBEDDER = Profile(name="llm-embedder", pooling="cls", task="qa", task_instructions=LLM_EMBEDDER_INSTRUCTIONS)
#: e5-mistral, SFR, Linq, gte-Qwen2/Qwen1.5, bge-reasoner: FlagLLMModel's "Instruct: {}\nQuery: {}".
LLM_INSTRUCT = Profile(name="llm-instruct", pooling="lasttoken", query_template="Instruct: {task}\nQuery: {text}",
                       task=DEFAULT_E5_INSTRUCT_TASK, default_max_length=512)
#: Qwen3-Embedding: "Instruct: {}\nQuery:{}" (no space after "Query:").
QWEN3_EMBEDDING = replace(LLM_INSTRUCT, name="qwen3-embedding", query_template="Instruct: {task}\nQuery:{text}")
#: bge-multilingual-gemma2, bge-code-v1: "<instruct>{}\n<query>{}".
BGE_LLM = replace(LLM_INSTRUCT, name="bge-llm", query_template="<instruct>{task}\n<query>{text}")
#: bge-en-icl: FlagICLModel, few-shot examples before the query.
BGE_EN_ICL = replace(BGE_LLM, name="bge-en-icl", icl=True)
#: Pooling-only profiles (no templates), also selectable as ``profile="lasttoken"`` etc.
CLS = Profile(name="cls", pooling="cls")
MEAN = Profile(name="mean", pooling="mean")
LASTTOKEN = Profile(name="lasttoken", pooling="lasttoken", default_max_length=512)

PROFILES: dict[str, Profile] = {p.name: p for p in (
    M3, E5, E5_INSTRUCT, BGE, BGE_ZH, LLM_EMBEDDER, LLM_INSTRUCT, QWEN3_EMBEDDING, BGE_LLM, BGE_EN_ICL,
    CLS, MEAN, LASTTOKEN,
)}

#: Hub ids (lower-cased) -> profile name, for every name of :data:`bgem3.families.FAMILIES`
#: that has a fixed profile (the plain sentence-transformers models take theirs from the folder).
KNOWN_MODELS: dict[str, str] = {f.hub_id.lower(): f.profile for f in FAMILIES.values() if f.profile in PROFILES}


def get_profile(name: Union[str, Profile]) -> Profile:
    """Look a profile up by name (``m3``, ``e5``, ``e5-instruct``, ``bge``, ``bge-zh``, ``llm-embedder``,
    ``llm-instruct``, ``qwen3-embedding``, ``bge-llm``, ``bge-en-icl``, or a pooling: ``cls``,
    ``mean``, ``lasttoken``), or by a known model name (``"intfloat/e5-mistral-7b-instruct"``)."""
    if isinstance(name, Profile):
        return name
    if not isinstance(name, str):
        raise TypeError(f"profile must be a profile name or a bgem3.Profile, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    aliases = {"last-token": "lasttoken", "last_token": "lasttoken", "mean-tokens": "mean", "cls-token": "cls"}
    key = aliases.get(key, key)
    if key in PROFILES:
        return PROFILES[key]
    prof = profile_for_hub_id(name)
    if prof is not None:
        return prof
    raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}, a known model name, "
                     "or pass a bgem3.Profile")


def profile_for_hub_id(name: str) -> Optional[Profile]:
    """The profile of a known hub id (also matches HF cache folder names and folders named like
    one), else ``None``. Plain sentence-transformers models have no fixed profile (``None``)."""
    fam = family_for_name(name)
    if fam is None or fam.profile not in PROFILES:
        return None
    return PROFILES[fam.profile]


def read_sentence_transformers_profile(folder: str) -> Optional[Profile]:
    """Build a profile from a sentence-transformers folder (pooling, Normalize, include_prompt, prompts)."""
    st = read_st_pipeline(folder)
    if st is None:
        return None
    return Profile(name="st", pooling=st.pooling, normalize=st.normalize, include_prompt=st.include_prompt,  # type: ignore[arg-type]
                   query_template=_escape(st.query_prompt) + "{text}" if st.query_prompt else None,
                   passage_template=_escape(st.document_prompt) + "{text}" if st.document_prompt else None)


def _escape(s: str) -> str:
    return s.replace("{", "{{").replace("}", "}}")


def folder_name_hints(folder: str) -> list[str]:
    """Names a folder gives itself: its path, config.json's ``_name_or_path``, and its model card's
    ``base_model`` / ``model-index`` names and first heading (how a fine-tuned E5 is recognised)."""
    hints = [folder]
    cfg = os.path.join(folder, "config.json")
    if os.path.isfile(cfg):
        try:
            with open(cfg, encoding="utf-8") as fh:
                val = json.load(fh).get("_name_or_path")
            if isinstance(val, str) and val:
                hints.append(val)
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    readme = os.path.join(folder, "README.md")
    if os.path.isfile(readme):
        try:
            with open(readme, encoding="utf-8", errors="replace") as fh:
                text = fh.read(200_000)
        except OSError:
            text = ""
        hints.extend(_model_card_names(text))
    return hints


def _model_card_names(text: str) -> list[str]:
    names: list[str] = []
    lines = text.splitlines()
    body_start = 0
    if lines and lines[0].strip() == "---":
        key = None
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() == "---":
                body_start = i + 1
                break
            stripped = line.strip()
            if not line.startswith((" ", "-", "\t")) and ":" in line:
                key, _, value = line.partition(":")
                key = key.strip()
                value = value.strip().strip("'\"")
                if key == "base_model" and value:
                    names.append(value)
            elif key == "base_model" and stripped.startswith("- "):
                names.append(stripped[2:].strip().strip("'\""))
            elif key == "model-index" and stripped.startswith("- name:"):
                names.append(stripped.split(":", 1)[1].strip().strip("'\""))
    for line in lines[body_start:]:
        if line.startswith("#"):
            names.append(line.lstrip("#").strip())
            break
    return [n for n in names if n]


_warned_unknown: set = set()


def detect_profile(folder: str, name_hint: Optional[str] = None, *, warn_unknown: bool = True) -> Profile:
    """Pick the profile for a local model folder.

    Order: M3 head files present -> ``m3``. Otherwise what the folder itself declares (a
    sentence-transformers pipeline: pooling in any of its formats, ``include_prompt``,
    ``Normalize``, prompts) wins; the family named by ``name_hint``, the folder's name, its
    config's ``_name_or_path`` or its model card fills in only what the folder does not say
    (templates, task, per-task instructions, examples). A folder that declares nothing takes
    its family's profile. Raises ``ValueError`` naming the folder when neither applies (never
    guesses a pooling); logs one warning when a sentence-transformers folder's family cannot be told
    (``warn_unknown=False``: a caller that sets templates itself, like the E5 facades).
    """
    if all(os.path.isfile(os.path.join(folder, f)) for f in M3_HEAD_FILES):
        return M3
    named: Optional[Profile] = None
    known_plain = False
    hints = [name_hint] if name_hint else []
    hints += folder_name_hints(folder)
    for hint in hints:
        fam = family_for_name(hint)
        if fam is not None:
            if fam.profile in PROFILES:
                named = PROFILES[fam.profile]
            else:
                known_plain = True
            break
    st = read_st_pipeline(folder)
    if st is None:
        if named is not None:
            return named
        raise ValueError(
            f"cannot tell how to pool the model in {folder!r}: it has no BGE-M3 head files, no "
            "sentence-transformers pooling config, and is not a known model name. Pass profile='m3', "
            "'e5', 'e5-instruct', 'bge', 'llm-instruct', 'lasttoken', 'cls' or 'mean' (or a bgem3.Profile) "
            "to Encoder(...)."
        )
    base = named or Profile(name="st")
    if named is not None and named.pooling != st.pooling:
        logger.info("%s: the folder's pooling config says %r, the %r family uses %r; the folder wins",
                    folder, st.pooling, named.name, named.pooling)
    query_prompt = st.query_prompt
    if named is not None and query_prompt and named.query_template and "{task}" in named.query_template \
            and named.query_template.endswith("{text}") and query_prompt == named.query_prefix():
        query_prompt = None  # the family's own template with its default task: keep {task} selectable
    prof = replace(
        base, pooling=st.pooling, normalize=st.normalize, include_prompt=st.include_prompt,  # type: ignore[arg-type]
        query_template=(_escape(query_prompt) + "{text}") if query_prompt else base.query_template,
        passage_template=(_escape(st.document_prompt) + "{text}") if st.document_prompt else base.passage_template,
    )
    if st.query_prompt or st.document_prompt:
        prof = replace(prof, task_instructions=None) if prof.task_instructions is not None else prof
    if warn_unknown and named is None and not known_plain and not (st.query_prompt or st.document_prompt):
        key = os.path.abspath(folder)
        if key not in _warned_unknown:
            _warned_unknown.add(key)
            logger.warning(
                "bgem3 could not tell which model family %s is (no known model name in its path, "
                "config.json or model card, no prompts in config_sentence_transformers.json): queries and "
                "documents are encoded without prefixes. If it is an E5 model pass profile='e5' (adds "
                "'query: ' / 'passage: '), for e5-instruct profile='e5-instruct'; or set "
                "query_template= / passage_template= yourself.", folder)
    return prof
