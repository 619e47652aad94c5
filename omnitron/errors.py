"""The base of every error the omnitron daemon, client and CLI raise.

Each subsystem defines its errors next to its code, deriving from
:class:`OmnitronError` (and from the matching builtin where one fits).
"""

from __future__ import annotations


class OmnitronError(Exception):
    """Base class of every omnitron error. ``str(err)`` is a one-line, secret-free reason."""
