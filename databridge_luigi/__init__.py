"""databridge-luigi: publish a city's datasets to CARTO or PostGIS on schedule, with Luigi.

``luigi --module databridge_luigi PublishAll`` finds the tasks re-exported here.
"""
import logging

from .connections import install_log_redaction

install_log_redaction()

from .luigi_defaults import apply_retcodes, install_one_line_errors  # noqa: E402

install_one_line_errors()  # a user's error is one or two lines in luigi's log (DATABRIDGE_DEBUG=1: tracebacks)
apply_retcodes()  # failures exit non-zero wherever the command runs (luigi.cfg is read from the working directory)


class _ToLuigiInterface(logging.Handler):
    """Show our log lines wherever luigi shows its own (luigi configures only the 'luigi-interface'
    logger); stands aside as soon as the application configures the root logger itself."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            logging.getLogger("luigi-interface").handle(record)


_log = logging.getLogger("databridge_luigi")
_log.setLevel(logging.INFO)
_log.addHandler(_ToLuigiInterface())

from .tasks import Extract, Load, Publish, PublishAll, databridge  # noqa: E402
from . import task_events  # noqa: E402,F401  (registers the tasks' failure and success handlers)

__all__ = ["Extract", "Load", "Publish", "PublishAll", "databridge"]
