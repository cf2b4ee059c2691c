"""Pareto dashboard: an offline HTML report of a study, or a live view of a running one.

``autocompress dashboard STUDY [-o FILE.html] [--serve]``. The pieces:

- :mod:`.source` finds a study and reads it (:class:`~.data.StudyData`);
- :mod:`.data` computes every figure's data with plain functions (tables in, dicts and lists out);
- :mod:`.draw` holds the page's Plotly drawing code, :mod:`.html` the self-contained page;
- :mod:`.server` serves the page on localhost and refreshes it from the study's storage.

Names are imported lazily, so that ``autocompress --help`` (which registers the sub-command) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StudyData": "autocompress.dashboard.data",
    "dashboard_data": "autocompress.dashboard.data",
    "render_html": "autocompress.dashboard.html",
    "write_atomic": "autocompress.dashboard.html",
    "read_study": "autocompress.dashboard.source",
    "resolve": "autocompress.dashboard.source",
    "StudyRef": "autocompress.dashboard.source",
    "NothingToDrawError": "autocompress.dashboard.source",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autocompress.dashboard' has no attribute {name!r}")
