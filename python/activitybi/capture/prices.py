"""Cost of a model call from a dated price table.

Transcripts carry token counts but no cost, so the importer (in the Rust core) computes the
cost of a call from a snapshot of the published prices shipped with the package
(`prices.json`) or a file named by `ACTIVITYBI_PRICES`. Every figure computed this way says
where it came from
(`cost_source = "price_table:<snapshot date>"`), so a reader can tell it from a billed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from activitybi import config

SHIPPED = Path(__file__).with_name("prices.json")
RATES = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
"""US dollars per million tokens, per model."""


class PriceTableError(ValueError):
    """The price table file is not the documented shape."""


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float


@dataclass(frozen=True)
class PriceTable:
    snapshot: str
    source: str
    note: str
    models: dict[str, Price]
    path: Path

    @property
    def cost_source(self) -> str:
        """What `feature_json.cost_source` says of a cost computed from this table."""
        return f"price_table:{self.snapshot}"

    def rates(self) -> list[tuple[str, tuple[float, float, float, float, float]]]:
        """Each model prefix with its rates in `RATES` order, for the importer (in the Rust
        core): a model's price is that of the longest prefix its name starts with, a provider
        prefix ignored (`us.anthropic.claude-…`, `claude-…@vertex`); an unknown model has no cost."""
        return [
            (name, (p.input, p.output, p.cache_write_5m, p.cache_write_1h, p.cache_read))
            for name, p in self.models.items()
        ]


def _parse(raw: bytes, path: Path) -> PriceTable:
    try:
        data = orjson.loads(raw)
        models = data["models"]
        if not isinstance(models, dict) or not models:
            raise PriceTableError(f"{path}: 'models' must be a non-empty object")
        table = {str(name): Price(**{r: float(rates[r]) for r in RATES}) for name, rates in models.items()}
        return PriceTable(
            str(data["snapshot"]), str(data.get("source", "")), str(data.get("note", "")), table, path
        )
    except PriceTableError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise PriceTableError(
            f"{path}: not a price table ({type(e).__name__}: {e}); expected "
            '{"snapshot": "YYYY-MM-DD", "models": {"<model prefix>": {'
            + ", ".join(f'"{r}": …' for r in RATES)
            + "}}}"
        ) from None


def load(path: Path | None = None) -> PriceTable:
    """`path`, else `ACTIVITYBI_PRICES`, else the shipped snapshot."""
    if path is None:
        override = config.settings().prices
        path = Path(override).expanduser() if override else SHIPPED
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PriceTableError(f"cannot read the price table {path}: {e.strerror}") from None
    return _parse(raw, path)


def as_rows(table: PriceTable) -> list[dict[str, Any]]:
    """The table as rows, by model name, for printing."""
    return [{"model": name, **vars(table.models[name])} for name in sorted(table.models)]
