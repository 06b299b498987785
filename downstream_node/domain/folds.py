"""What a fold (a projection, an audit replay) does with each event type, declared once.

A fold marks its handlers with ``@handles(SomeEvent)`` and lists the types it ignores on
purpose in ``IGNORED``; the set of handled types is derived from the handlers, never kept
beside them, and ``undecided`` names every registered type a fold has not decided on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from .events import REGISTRY, DomainEvent

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__handles_events__"


def handles(*types: type[DomainEvent]) -> Callable[[F], F]:
    """Mark a fold's method (or function) as the handler of these event types."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, (*getattr(fn, _MARK, ()), *(t.type_name() for t in types)))
        return fn

    return mark


def handler_names(namespace: Any) -> dict[str, str]:
    """Event type -> name of the attribute that handles it, over a class's MRO (or a module)."""
    classes = reversed(namespace.__mro__) if isinstance(namespace, type) else (namespace,)
    table: dict[str, str] = {}
    for owner in classes:
        for name, value in vars(owner).items():
            for event_type in getattr(value, _MARK, ()):
                if table.get(event_type, name) != name:
                    raise TypeError(f"{event_type} has two handlers: {table[event_type]}, {name}")
                table[event_type] = name
    return table


class EventFold:
    """Mixin for a fold class: ``HANDLED`` (derived) and ``IGNORED`` (declared)."""

    IGNORED: ClassVar[frozenset[str]] = frozenset()
    HANDLERS: ClassVar[dict[str, str]] = {}
    HANDLED: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.HANDLERS = handler_names(cls)
        cls.HANDLED = frozenset(cls.HANDLERS)
        both = cls.HANDLED & cls.IGNORED
        if both:
            raise TypeError(f"{cls.__name__} both handles and ignores {sorted(both)}")

    def bound_handlers(self) -> dict[str, Callable[..., Any]]:
        """Event type -> this instance's bound handler."""
        return {event_type: getattr(self, name) for event_type, name in self.HANDLERS.items()}


def ignoring(*types: type[DomainEvent]) -> frozenset[str]:
    return frozenset(t.type_name() for t in types)


def undecided(handled: frozenset[str], ignored: frozenset[str]) -> list[str]:
    """Registered event types a fold neither handles nor ignores on purpose."""
    return sorted(set(REGISTRY) - handled - ignored)
