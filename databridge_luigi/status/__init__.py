"""The morning view: every dataset's state, from the destinations' marker tables, the run records in staging
(``runs.py``) and, when given, luigid.

    databridge-luigi status [ID…] [--json] [--html FILE] [--luigid URL]
    databridge-luigi history ID
    databridge-luigi serve [--host 127.0.0.1] [--port 8090]

States, worst first: ``broken config`` (the file does not validate), ``failing`` (the last run failed after the
last success), ``unknown`` (the destination could not be asked), ``due`` (the due version is not published),
``fresh`` (it is), ``stage-only`` (``upload_to_carto: false``), ``manual`` (no schedule), ``disabled``.
It only reads (``write_page`` writes the page file); every error text passes ``connections.redact``.

The package is split by concept, each module importing only those before it:

* ``model``   — the states, ``DatasetStatus`` and ``Failure``, ``sort_key``; raw values → fields;
* ``markers`` — the destinations' marker rows, read once per destination (``Markers``);
* ``luigid``  — luigid's running and failed tasks, its task history, links into its visualiser;
* ``collect`` — each dataset's state now (``collect``) and one dataset's past (``history``);
* ``cells``   — how a time, a duration or a yes/no reads in a cell, in the terminal and on the page;
* ``text``    — the terminal tables and the JSON (``text_table``, ``history_table``, ``as_json``);
* ``page``    — the HTML page (``html_page``, ``COLOURS``) and ``write_page``.

Every public name is importable from ``databridge_luigi.status``; no module of the package imports the package.
"""
from __future__ import annotations

from .model import ALARMING, STATES, DatasetStatus, Failure, sort_key
from .markers import Markers
from .luigid import history_url, task_link
from .collect import collect, history
from .text import as_json, history_table, text_table
from .page import COLOURS, html_page, write_page

__all__ = [
    "ALARMING", "COLOURS", "STATES", "DatasetStatus", "Failure", "Markers", "as_json", "collect", "history",
    "history_table", "history_url", "html_page", "sort_key", "task_link", "text_table", "write_page",
]
