"""A tiny name -> object registry, the one way uqflow names its parts: models
(``models.registry``), datasets (``data``), generation engines (``generation.ENGINES``),
correctness judges (``scoring.judges.JUDGES``), entailment judges (``scoring.semantic.ENTAILMENT_JUDGES``)
and uncertainty measures (``scoring.measures.MEASURES``). The CLI's help and the checks before a
run read the names from there, and an unknown name is explained the same way everywhere.

A registry may also hold name patterns, a prefix with a free part (``llm:<model>``, any registered
model asked as a judge), shown in its list of names in that form."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from uqflow.errors import UnknownName, short

T = TypeVar("T")


@dataclass(frozen=True)
class Pattern(Generic[T]):
    """Names ``prefix`` + a free part that ``accepts`` (by default any non-empty one), shown as ``shape``."""

    prefix: str
    shape: str
    item: T
    accepts: Callable[[str], bool] = bool

    def matches(self, name: str) -> bool:
        return name.startswith(self.prefix) and self.accepts(name[len(self.prefix):])


class Registry(Generic[T]):
    """A dict that refuses duplicate names and explains unknown ones.

    ``error`` is the exception class raised by :meth:`get` for an unknown name, so that each
    registry reports its own kind of mistake (``UnknownModel``, ``UnknownDataset``...).
    """

    def __init__(self, kind: str, error: type[UnknownName] = UnknownName):
        self.kind = kind
        self.error = error
        self._items: dict[str, T] = {}
        self._patterns: list[Pattern[T]] = []

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def add_pattern(self, prefix: str, shape: str, item: T, accepts: Callable[[str], bool] = bool) -> T:
        """Register every name ``prefix`` + a free part that ``accepts`` (see :class:`Pattern`)."""
        if any(p.prefix == prefix for p in self._patterns):
            raise ValueError(f"{self.kind} pattern {shape!r} is registered twice")
        self._patterns.append(Pattern(prefix, shape, item, accepts))
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(item: T) -> T:
            return self.add(name, item)

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            pattern = self._pattern(name)
            if pattern is None:
                raise self.error(self.unknown_message(name)) from None
            return pattern.item

    def _pattern(self, name: str) -> Pattern[T] | None:
        return next((p for p in self._patterns if p.matches(name)), None)

    def unknown_message(self, name: str) -> str:
        lower = {n.lower(): n for n in self.names()}
        probe = name[:200].lower()  # a name from a user's file may be long; suggestions need only its start
        prefixed = [n for n in self.names() if n.lower().startswith(probe)] if name else []
        close = prefixed[:3] or [lower[m] for m in difflib.get_close_matches(probe, lower, n=3, cutoff=0.5)]
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.kind} {short(name)}.{hint} Known: {', '.join(self.names())}"

    def names(self) -> list[str]:
        """The registered names, then the patterns' shapes (``llm:<model>``)."""
        return [*self._items, *(p.shape for p in self._patterns)]

    def __contains__(self, name: object) -> bool:
        return name in self._items or (isinstance(name, str) and self._pattern(name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self):
        return self._items.items()
