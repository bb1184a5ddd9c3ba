"""A tiny name -> object registry: the models (``models.registry``) and datasets (``data``) are
registered in one. Engines (``generation.ENGINES``), judges (``scoring.judges.JUDGES``) and scores
(``scoring.uncertainty.SCORES``) are declared beside their code; the CLI's help and the checks
before a run read the names from there."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from uqflow.errors import UnknownName, short

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict that refuses duplicate names and explains unknown ones.

    ``error`` is the exception class raised by :meth:`get` for an unknown name, so that each
    registry reports its own kind of mistake (``UnknownModel``, ``UnknownDataset``...).
    """

    def __init__(self, kind: str, error: type[UnknownName] = UnknownName):
        self.kind = kind
        self.error = error
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
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
            raise self.error(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        lower = {n.lower(): n for n in self._items}
        probe = name[:200].lower()  # a name from a user's file may be long; suggestions need only its start
        prefixed = [n for n in self._items if n.lower().startswith(probe)] if name else []
        close = prefixed[:3] or [lower[m] for m in difflib.get_close_matches(probe, lower, n=3, cutoff=0.5)]
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.kind} {short(name)}.{hint} Known: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self):
        return self._items.items()
