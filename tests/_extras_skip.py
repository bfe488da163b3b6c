"""Skip, with the reason, a test module or test that needs an optional extra that is not installed
(``ImportError ... pip install 'bgem3[langchain-qdrant]'``, or ``No module named 'qdrant_client'``),
instead of reporting an error. Any other ImportError (a real bug) still fails.

Used by tests/conftest.py; tests/test_first_run.py checks it on a throwaway suite.
"""

from __future__ import annotations

import re
from typing import Optional

import pytest

_HINT = re.compile(r"""pip install ['"]?bgem3\[(?P<extra>[\w,.-]+)\]""")


def missing_extra(exc: BaseException) -> Optional[str]:
    """The extra whose absence ``exc`` reports, else ``None``."""
    if not isinstance(exc, ImportError):
        return None
    m = _HINT.search(str(exc))
    if m:
        return m.group("extra")
    if isinstance(exc, ModuleNotFoundError):
        from bgem3.cli import _extra_for

        return _extra_for(exc)
    return None


def _reason(extra: str) -> str:
    return f"optional extra not installed: pip install 'bgem3[{extra}]'"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.longrepr is not None:
        text = str(rep.longrepr)
        m = _HINT.search(text)
        extra = m.group("extra") if m else None
        if extra is None:
            name = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", text)
            if name:
                extra = missing_extra(ModuleNotFoundError(name=name.group(1)))
        if extra is not None and ("ImportError" in text or "ModuleNotFoundError" in text):
            rep.outcome = "skipped"
            rep.longrepr = (str(collector.path), None, "Skipped: " + _reason(extra))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if call.excinfo is not None and rep.failed and call.when in ("setup", "call"):
        extra = missing_extra(call.excinfo.value)
        if extra is not None:
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), item.location[1], "Skipped: " + _reason(extra))
