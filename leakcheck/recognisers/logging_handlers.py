"""logging: a handler left on a logger, reached from every logger through `Logger.manager`.

The documented release is `logger.removeHandler(handler); handler.close()`; never
`logging.Logger.manager = None`, which breaks logging for the whole process.
"""

from __future__ import annotations

import logging
from typing import cast

from leakcheck.engine.release import Release
from leakcheck.engine.safe_read import exact_str, instance_dict, instance_of, items_of, str_entry
from leakcheck.recognisers import Recogniser, Remedy


def loggers_holding(handler: object) -> list[logging.Logger]:
    """Loggers whose `handlers` list holds `handler` (read from their dicts: no user code)."""
    manager = logging.Logger.manager
    candidates: list[object] = [logging.root]
    loggers = instance_dict(manager)
    table = str_entry(loggers, "loggerDict") if loggers is not None else None
    if isinstance(table, dict):
        candidates.extend(value for _, value in items_of(table))
    found: list[logging.Logger] = []
    for logger in candidates:
        if not instance_of(logger, logging.Logger):
            continue
        namespace = instance_dict(logger)
        handlers = str_entry(namespace, "handlers") if namespace is not None else None
        if type(handlers) is list and any(h is handler for h in handlers):
            found.append(cast(logging.Logger, logger))  # instance_of checked above
    return found


def _getter(logger: logging.Logger) -> str:
    if logger is logging.root:
        return "logging.getLogger()"
    name = exact_str(str_entry(instance_dict(logger) or {}, "name"))
    return f"logging.getLogger({name!r})"


def _detach(handler: logging.Handler, *loggers: logging.Logger) -> None:
    for logger in loggers:
        logger.removeHandler(handler)
    handler.close()


class LoggingHandlers(Recogniser):
    name = "logging"

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        if not instance_of(obj, logging.Handler):
            return None
        loggers = loggers_holding(obj)
        if not loggers:
            return None
        removals = "; ".join(f"{_getter(logger)}.removeHandler(handler)" for logger in loggers)
        return Remedy(
            label=path,
            fix=f"handler = {path}; {removals}; handler.close()",
            release=Release.call(_detach, obj, *loggers),
            detail=(
                f"a {type(obj).__name__} on {len(loggers)} logger(s); "
                "every logger reaches it through Logger.manager"
            ),
            recogniser=self.name,
        )


RECOGNISER = LoggingHandlers()
