"""The built-in calibration set and the activation statistics int8 smoothing is computed from.

``CALIBRATION_TEXTS`` is a few dozen short passages in several languages and scripts (English,
German, French, Spanish, Russian, Chinese, Japanese, Korean, Arabic, Hindi, code, numbers).
:func:`collect_input_absmax` runs them through the fp32 model once and records, for every
``nn.Linear`` in the transformer, the largest absolute value each *input channel* takes: the
per-channel ranges SmoothQuant balances against the weights.

Example::

    >>> from bgem3.quant.calibration import CALIBRATION_TEXTS
    >>> len(CALIBRATION_TEXTS) >= 30
    True
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

#: Multilingual calibration passages (short and long, prose, lists, code, numbers).
CALIBRATION_TEXTS: tuple[str, ...] = (
    "Dense retrieval maps queries and passages into one vector space, so that relevant passages lie close to the question.",
    "BM25 ranks documents by how often the query terms occur in them, discounted by how common each term is in the whole collection.",
    "What is the capital of Australia?",
    "how do I reset my password",
    "The mitochondrion is the organelle in which cellular respiration takes place; it produces most of the cell's supply of ATP.",
    "In 1969 the Apollo 11 mission landed the first humans on the Moon: Neil Armstrong and Buzz Aldrin spent 21 hours on the surface.",
    "Install the package with pip, then create an index, add your documents and call search with a query string.",
    "Returns the number of items in a container. The argument may be a sequence (such as a string, bytes, tuple, list, or range) "
    "or a collection (such as a dictionary, set, or frozen set).",
    "Terms and conditions: the customer may cancel the subscription at any time; fees already paid are not refunded.",
    "Photosynthesis converts light energy into chemical energy, releasing oxygen as a by-product of splitting water.",
    "Die Bundesrepublik Deutschland ist ein demokratischer und sozialer Bundesstaat. Berlin ist die Hauptstadt.",
    "Wie funktioniert eine hybride Suche aus dichten Vektoren und lexikalischen Gewichten?",
    "La recherche d'information consiste à retrouver, dans une grande collection, les documents qui répondent à un besoin.",
    "Quelle est la différence entre un modèle d'embedding dense et un modèle lexical ?",
    "El aprendizaje automático es una rama de la inteligencia artificial que permite a los sistemas aprender de los datos.",
    "¿Cuántos habitantes tiene la ciudad de México?",
    "Москва — столица России, крупнейший по численности населения город страны.",
    "Модель эмбеддингов преобразует текст в векторы фиксированной размерности.",
    "北京是中华人民共和国的首都，也是全国的政治、文化和国际交往中心。",
    "向量检索使用嵌入模型把文本转换为向量，再按相似度排序。",
    "東京は日本の首都であり、世界有数の大都市圏を形成している。",
    "埋め込みモデルは文章をベクトルに変換し、意味の近さを距離で表します。",
    "서울은 대한민국의 수도이며 가장 큰 도시이다.",
    "임베딩 모델은 문장을 벡터로 변환하여 의미 검색을 가능하게 합니다.",
    "القاهرة هي عاصمة مصر وأكبر مدنها، وتقع على ضفاف نهر النيل.",
    "नई दिल्ली भारत की राजधानी है और यह देश का राजनीतिक केंद्र है।",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και μία από τις αρχαιότερες πόλεις του κόσμου.",
    "def cosine(a, b):\n    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))",
    "SELECT id, title FROM documents WHERE score > 0.5 ORDER BY score DESC LIMIT 10;",
    "Error 404: the requested URL /api/v2/items?id=1234&sort=desc was not found on this server.",
    "Invoice #2024-0831 — total 1,299.00 EUR, VAT 19 %, due 30/09/2024; IBAN DE89 3704 0044 0532 0130 00.",
    "π ≈ 3.14159, e ≈ 2.71828, √2 ≈ 1.41421; 10^6 = 1 000 000.",
    "a",
    "OK",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Retrieval-augmented generation first retrieves passages relevant to a question and then lets a language model answer "
    "from them. Its quality depends on the retriever: a passage that is not retrieved cannot be used, and a wrong passage "
    "near the top misleads the model. Hybrid retrieval combines a dense score, which captures meaning, with a lexical score, "
    "which rewards exact terms such as names, codes and numbers, and a late-interaction score that matches token by token. "
    "Fusing the three ranks is more robust than any single channel on unfamiliar domains.",
    "Der Vertrag tritt am ersten Tag des Monats in Kraft, der auf die Unterzeichnung folgt. Änderungen bedürfen der Schriftform. "
    "Sollte eine Bestimmung unwirksam sein, bleibt die Wirksamkeit der übrigen Bestimmungen unberührt.",
    "Les index inversés associent à chaque terme la liste des documents où il apparaît ; ils rendent la recherche lexicale "
    "rapide même sur des millions de documents, et se combinent bien avec un index de vecteurs denses.",
)


def collect_input_absmax(model: torch.nn.Module, run: Callable[[Sequence[str]], object],
                         texts: Sequence[str] = CALIBRATION_TEXTS) -> dict[str, torch.Tensor]:
    """Per-input-channel ``max |x|`` of every ``nn.Linear`` in ``model`` while ``run(texts)`` runs.

    ``run`` is whatever drives the model (e.g. ``lambda t: encoder.encode(t)``). Returns
    ``{module name: float32 [in_features]}`` for the linear layers that saw input.

    Example::

        >>> import torch
        >>> from bgem3.quant.calibration import collect_input_absmax
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 2))
        >>> stats = collect_input_absmax(m, lambda t: m(torch.tensor([[1.0, -3.0, 0.5, 2.0]])), ["x"])
        >>> stats["0"].tolist()
        [1.0, 3.0, 0.5, 2.0]
    """
    stats: dict[str, torch.Tensor] = {}
    hooks = []

    def make_hook(name: str):
        def hook(_mod, inputs, _out):
            x = inputs[0].detach()
            cur = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            stats[name] = torch.maximum(stats[name], cur) if name in stats else cur
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(make_hook(name)))
    try:
        run(list(texts))
    finally:
        for h in hooks:
            h.remove()
    return stats
