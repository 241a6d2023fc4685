"""Features that live in extras (`pip install 'activitybi[snowflake]'`): their modules are
imported when the feature is used, and a missing one says in one line which extra to
install, instead of a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """A feature was used whose extra is not installed."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Imports ``module``, or raises `MissingExtra` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"{feature} needs the {extra} extra: pip install 'activitybi[{extra}]' (missing module {e.name})"
        ) from None
