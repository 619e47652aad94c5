"""The daemon's error hierarchy: one base, distinct names, wire codes unchanged."""

from __future__ import annotations

import pytest

import omnitron.rpc
from omnitron.daemon._errors import (
    DOMAIN_ERRORS,
    AppNotFound,
    AppStartFailed,
    ConfigInvalid,
    DaemonBusy,
    DaemonError,
    RequestRefused,
    UnsupportedApp,
)
from omnitron.errors import OmnitronError


@pytest.mark.parametrize(
    ("error", "wire", "code"),
    [
        (AppNotFound, omnitron.rpc.NotFound, "NOT_FOUND"),
        (DaemonBusy, omnitron.rpc.Busy, "BUSY"),
        (RequestRefused, omnitron.rpc.InvalidParams, "INVALID_PARAMS"),
        (AppStartFailed, omnitron.rpc.RemoteError, "START_FAILED"),
        (ConfigInvalid, omnitron.rpc.RemoteError, "CONFIG_INVALID"),
    ],
)
def test_every_daemon_error_has_one_base_and_keeps_its_wire_code(
    error: type[omnitron.rpc.RemoteError], wire: type[Exception], code: str
) -> None:
    assert issubclass(error, DaemonError)
    assert issubclass(error, wire)
    assert error.code == code


def test_a_refused_request_is_not_the_protocols_invalid_request() -> None:
    """INVALID_REQUEST is a malformed message; a refusal is INVALID_PARAMS, a distinct name."""
    assert not issubclass(RequestRefused, omnitron.rpc.InvalidRequest)
    assert omnitron.rpc.InvalidRequest.code == "INVALID_REQUEST"
    err = RequestRefused("instances must be within 1..1024, got 0")
    assert err.code == "INVALID_PARAMS"


def test_unsupported_app_is_inside_the_hierarchy() -> None:
    assert issubclass(UnsupportedApp, DaemonError)
    assert issubclass(UnsupportedApp, OmnitronError)
    assert issubclass(UnsupportedApp, ValueError)
    from omnitron.daemon import _tree

    assert _tree.UnsupportedApp is UnsupportedApp


def test_domain_codes_are_registered_unchanged() -> None:
    assert {e.code for e in DOMAIN_ERRORS} == {"START_FAILED", "CONFIG_INVALID"}
