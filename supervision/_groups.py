"""Exception groups at the edge of the library's public context managers."""

from __future__ import annotations

from typing import Any, NoReturn

import trio

__all__ = ["collapse", "raise_collapsed"]


def collapse(group: BaseExceptionGroup[Any]) -> BaseException:
    """The single meaningful exception of a nursery's group, else the group.

    ``Cancelled`` siblings are dropped when one other exception remains; a group
    of only ``Cancelled`` becomes its first ``Cancelled`` (so callers see a plain
    cancellation, not an ``ExceptionGroup``).
    """
    _, rest = group.split(trio.Cancelled)
    if rest is None:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        return leaf
    while isinstance(rest, BaseExceptionGroup) and len(rest.exceptions) == 1:
        rest = rest.exceptions[0]
    return group if isinstance(rest, BaseExceptionGroup) else rest


def raise_collapsed(group: BaseExceptionGroup[Any]) -> NoReturn:
    """Raise :func:`collapse` of ``group``, keeping the raised exception's own context."""
    exc = collapse(group)
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
