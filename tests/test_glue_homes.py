"""Issue 22: each piece of glue has one named home and each rule is written once."""

from __future__ import annotations


def test_one_rule_for_same_model():
    """A saved index, a Qdrant collection and ``model_name=`` beside an encoder compare model names by one
    function (before: the Qdrant store had its own ``_model_key`` rule, which called ``"./"`` and ``"."`` the
    same model while the index refused it)."""
    import bgem3.index.persistence as persistence
    import bgem3.stores.base as base
    import bgem3.stores.qdrant as qdrant
    from bgem3.fingerprint import same_model_name

    assert persistence.same_model_name is same_model_name
    assert qdrant.same_model_name is same_model_name and base.same_model_name is same_model_name
    assert not hasattr(qdrant, "_model_key")
    assert same_model_name("BAAI/bge-m3", "/models/BGE-M3/") and not same_model_name("BAAI/bge-m3", "bge-small")
    assert not same_model_name("./", ".") and same_model_name(".", ".")


def test_rank_lives_with_the_scores():
    import bgem3.index.search as search
    import bgem3.stores.qdrant as qdrant
    from bgem3.scoring import rank

    assert search.rank is rank and qdrant.rank is rank
