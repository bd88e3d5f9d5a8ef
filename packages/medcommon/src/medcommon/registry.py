"""A small name -> object registry that refuses duplicates and lists valid names."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from medcommon.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries (methods, models, strategies), looked up by the CLI's ``--method``.

    Example::

        METHODS = Registry("method")

        @METHODS.register("erm")
        class ERM: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @classmethod
    def of(cls, names: Iterable[str], kind: str) -> Registry[str]:
        """A registry whose entries are the names themselves (for plain lists of choices)."""
        reg: Registry[str] = cls(kind)
        for name in names:
            reg.register(name)(name)
        return reg

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a second entry of that name is an error."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Return the entry, or raise :class:`InputError` naming the valid choices."""
        try:
            return self._entries[name]
        except KeyError:
            raise InputError(
                f"--{self.kind}",
                f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}",
            ) from None

    def describe(self, name: str) -> str:
        """One line about an entry: its ``description`` attribute, else its docstring's first line."""
        obj = self.get(name)
        text = getattr(obj, "description", None) or (getattr(obj, "__doc__", None) or "")
        lines = [line.strip() for line in str(text).strip().splitlines()]
        return lines[0] if lines else ""

    def help(self) -> str:
        """``name: description`` for every entry, for ``--help`` texts."""
        return "; ".join(
            f"{n}: {self.describe(n)}" if self.describe(n) else n for n in self.names()
        )

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
