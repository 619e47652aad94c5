"""Construction-time validation, defaults and shape of the spec types.

Every bad value must fail when the spec is built, with an error that is both a
``supervision`` error and the matching builtin (``ValueError`` / ``TypeError``), and
whose message names the field, so a config loader can point at it.
"""

from __future__ import annotations

import math
import re
import signal
from typing import Any

import attrs
import pytest

from supervision import (
    AutoShutdown,
    Backoff,
    ChildSpec,
    Intensity,
    InvalidSpec,
    InvalidSpecType,
    Listen,
    Output,
    ProcessChild,
    Ready,
    Restart,
    Strategy,
    SupervisionError,
    SupervisorSpec,
    TaskChild,
)


async def idle() -> None:
    pass


def proc(**kwargs: Any) -> ProcessChild:
    return ProcessChild(["prog"], **kwargs)


def task() -> TaskChild:
    return TaskChild(idle)


def raises_value(field: str) -> pytest.RaisesExc[ValueError]:
    """Expect an InvalidSpec (a ValueError) whose message names ``field``."""
    return pytest.raises(ValueError, match=re.escape(field))


def raises_type(field: str) -> pytest.RaisesExc[TypeError]:
    """Expect an InvalidSpecType (a TypeError) whose message names ``field``."""
    return pytest.raises(TypeError, match=re.escape(field))


# --------------------------------------------------------------------------- errors


def test_errors_are_library_errors_and_builtins() -> None:
    with pytest.raises(InvalidSpec) as value_error:
        Intensity(max_restarts=-1)
    assert isinstance(value_error.value, ValueError)
    assert isinstance(value_error.value, SupervisionError)

    with pytest.raises(InvalidSpecType) as type_error:
        Intensity(max_restarts="5")  # type: ignore[arg-type]
    assert isinstance(type_error.value, TypeError)
    assert isinstance(type_error.value, SupervisionError)


# --------------------------------------------------------------------------- defaults


def test_supervisor_spec_defaults() -> None:
    spec = SupervisorSpec()
    assert spec.name == "supervisor"
    assert spec.strategy is Strategy.ONE_FOR_ONE
    assert spec.intensity == Intensity(5, 60.0)
    assert spec.backoff == Backoff(1.0, 30.0, 2.0)
    assert spec.children == ()
    assert spec.auto_shutdown is AutoShutdown.NEVER


def test_intensity_defaults() -> None:
    intensity = Intensity()
    assert (intensity.max_restarts, intensity.window) == (5, 60.0)


def test_backoff_defaults() -> None:
    backoff = Backoff()
    assert (backoff.initial, backoff.max, backoff.factor) == (1.0, 30.0, 2.0)
    assert backoff.jitter == 0.0
    assert backoff.reset_after is None  # = the supervisor's intensity window


def test_child_spec_defaults() -> None:
    child = ChildSpec("a", proc())
    assert child.restart is Restart.PERMANENT
    assert child.significant is False
    assert child.backoff is None  # = the supervisor's backoff


def test_process_child_defaults() -> None:
    child = ProcessChild(["prog", "--flag"])
    assert child.argv == ("prog", "--flag")
    assert child.env is None
    assert child.cwd is None
    assert child.ready == Ready.on_spawn()
    assert child.startup_timeout == 30.0
    assert child.stop_signal is signal.SIGTERM
    assert child.stop_timeout == 10.0
    assert child.stdout == Output.inherit()
    assert child.stderr == Output.inherit()
    assert child.listen == ()
    assert child.success_exit_codes == frozenset({0})


def test_defaults_are_not_shared_between_instances() -> None:
    a, b = SupervisorSpec(name="a"), SupervisorSpec(name="b")
    assert a.intensity == b.intensity
    assert a.backoff == b.backoff


def test_kinds() -> None:
    assert ChildSpec("p", proc()).kind == "process"
    assert ChildSpec("t", task()).kind == "task"
    assert ChildSpec("s", SupervisorSpec(name="s")).kind == "supervisor"


# --------------------------------------------------------------------------- positional


def test_child_spec_takes_name_and_child_positionally_and_the_rest_by_keyword() -> None:
    child = proc()
    assert ChildSpec("a", child) == ChildSpec(name="a", child=child)
    with pytest.raises(TypeError):
        ChildSpec("a", child, Restart.TRANSIENT)  # type: ignore[misc]
    assert ChildSpec("a", child, restart=Restart.TRANSIENT).restart is Restart.TRANSIENT


def test_process_child_takes_argv_positionally_and_the_rest_by_keyword() -> None:
    assert ProcessChild(["prog"]) == ProcessChild(argv=["prog"])
    with pytest.raises(TypeError):
        ProcessChild(["prog"], {"A": "1"})  # type: ignore[misc]
    assert ProcessChild(["prog"], env={"A": "1"}).env == {"A": "1"}


def test_supervisor_spec_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        SupervisorSpec("root")  # type: ignore[misc]


def test_small_value_types_accept_positional_arguments() -> None:
    assert Intensity(3, 10.0) == Intensity(max_restarts=3, window=10.0)
    assert Backoff(0.5, 8.0, 3.0) == Backoff(initial=0.5, max=8.0, factor=3.0)


def test_task_child_takes_the_function_and_its_arguments_positionally() -> None:
    async def work(a: int, b: str) -> None:
        pass

    child = TaskChild(work, 1, "x")
    assert child.async_fn is work
    assert child.args == (1, "x")
    assert child.uses_task_status is False


def test_task_child_detects_task_status() -> None:
    async def work(*, task_status: Any = None) -> None:
        pass

    assert TaskChild(work).uses_task_status is True


# --------------------------------------------------------------------------- frozen


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (SupervisorSpec(), "name"),
        (ChildSpec("a", ProcessChild(["prog"])), "restart"),
        (ProcessChild(["prog"]), "argv"),
        (TaskChild(idle), "args"),
        (Intensity(), "window"),
        (Backoff(), "initial"),
        (Ready.tcp(80), "port"),
        (Listen.tcp(80), "port"),
        (Output.lines(print), "max_line"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_specs_are_frozen(obj: object, field: str) -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(obj, field, getattr(obj, field))


def test_collections_are_copied_and_read_only() -> None:
    argv = ["prog", "a"]
    env = {"A": "1"}
    child = ProcessChild(argv, env=env)
    argv.append("b")
    env["B"] = "2"
    assert child.argv == ("prog", "a")
    assert child.env == {"A": "1"}
    with pytest.raises(TypeError):
        child.env["C"] = "3"  # type: ignore[index]

    children = [ChildSpec("a", proc())]
    spec = SupervisorSpec(children=children)
    children.append(ChildSpec("b", proc()))
    assert len(spec.children) == 1
    assert isinstance(spec.children, tuple)


def test_specs_are_hashable() -> None:
    spec = SupervisorSpec(
        children=[
            ChildSpec("a", ProcessChild(["prog"], env={"A": "1"})),
            ChildSpec("t", task()),
        ]
    )
    assert hash(spec) == hash(spec)


# --------------------------------------------------------------------------- Intensity


@pytest.mark.parametrize("value", [-1, -100])
def test_intensity_negative_max_restarts(value: int) -> None:
    with raises_value("Intensity.max_restarts"):
        Intensity(max_restarts=value)


def test_intensity_zero_max_restarts_is_allowed() -> None:
    assert Intensity(max_restarts=0).max_restarts == 0


@pytest.mark.parametrize("value", [1.5, "5", None, True])
def test_intensity_max_restarts_must_be_an_int(value: object) -> None:
    with raises_type("Intensity.max_restarts"):
        Intensity(max_restarts=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 0.0, -1.0, math.nan, math.inf])
def test_intensity_window_must_be_positive_and_finite(value: float) -> None:
    with raises_value("Intensity.window"):
        Intensity(window=value)


def test_intensity_window_type() -> None:
    with raises_type("Intensity.window"):
        Intensity(window="60s")  # type: ignore[arg-type]


def test_intensity_window_int_becomes_float() -> None:
    window = Intensity(window=60).window
    assert window == 60.0
    assert isinstance(window, float)


# --------------------------------------------------------------------------- Backoff


def test_backoff_max_below_initial() -> None:
    with raises_value("Backoff.max"):
        Backoff(initial=5.0, max=1.0)


@pytest.mark.parametrize("value", [0.5, 0.0, -2.0, math.inf])
def test_backoff_factor_must_be_finite_and_at_least_one(value: float) -> None:
    with raises_value("Backoff.factor"):
        Backoff(factor=value)


@pytest.mark.parametrize("value", [-0.1, 1.01, 2.0])
def test_backoff_jitter_outside_unit_interval(value: float) -> None:
    with raises_value("Backoff.jitter"):
        Backoff(jitter=value)


@pytest.mark.parametrize("value", [0.0, 0.25, 1.0])
def test_backoff_jitter_bounds_are_inclusive(value: float) -> None:
    assert Backoff(jitter=value).jitter == value


@pytest.mark.parametrize(("field", "value"), [("initial", -1.0), ("max", -1.0)])
def test_backoff_negative_delays(field: str, value: float) -> None:
    with raises_value(f"Backoff.{field}"):
        Backoff(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("initial", math.nan), ("max", math.inf)])
def test_backoff_delays_must_be_finite_numbers(field: str, value: float) -> None:
    with raises_value(f"Backoff.{field}"):
        Backoff(**{field: value})


@pytest.mark.parametrize("field", ["initial", "max", "factor", "jitter", "reset_after"])
def test_backoff_fields_must_be_numbers(field: str) -> None:
    with raises_type(f"Backoff.{field}"):
        Backoff(**{field: "1"})


@pytest.mark.parametrize("value", [0, -1.0])
def test_backoff_reset_after_must_be_positive(value: float) -> None:
    with raises_value("Backoff.reset_after"):
        Backoff(reset_after=value)


def test_backoff_none_restarts_at_once() -> None:
    none = Backoff.none()
    assert (none.initial, none.max, none.factor) == (0.0, 0.0, 1.0)
    assert [none.delay(n) for n in (1, 2, 100, 10**9)] == [0.0] * 4


def test_backoff_delay_doubles_up_to_max() -> None:
    backoff = Backoff(initial=1.0, max=30.0, factor=2.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_backoff_delay_other_factors() -> None:
    assert [Backoff(0.5, 10.0, 3.0).delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10.0]
    assert [Backoff(2.0, 10.0, 1.0).delay(n) for n in (1, 2, 50)] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("attempt", [1023, 1024, 1025, 2000, 10**6, 10**100])
def test_backoff_delay_huge_attempts_do_not_overflow(attempt: int) -> None:
    assert Backoff(initial=1.0, max=30.0, factor=2.0).delay(attempt) == 30.0
    assert Backoff(initial=1.0, max=30.0, factor=1e300).delay(attempt) == 30.0


@pytest.mark.parametrize("attempt", [1, 2, 1024, 1025, 10**6])
def test_backoff_delay_zero_initial_stays_zero(attempt: int) -> None:
    # min(max, 0 * factor**(n-1)) is 0 for every n, however large.
    assert Backoff(initial=0.0, max=5.0, factor=2.0).delay(attempt) == 0.0


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_delay_attempt_is_one_based(attempt: int) -> None:
    with pytest.raises(ValueError, match="1-based"):
        Backoff().delay(attempt)


def test_backoff_jitter_spreads_the_delay() -> None:
    backoff = Backoff(initial=4.0, max=30.0, factor=2.0, jitter=0.25)
    assert backoff.delay(1) == 4.0
    assert backoff.delay(1, spread=1.0) == 5.0
    assert backoff.delay(1, spread=-1.0) == 3.0
    assert backoff.delay(2, spread=0.5) == 9.0


# --------------------------------------------------------------------------- Ready


def test_ready_constructors() -> None:
    assert Ready.on_spawn().kind == "on_spawn"
    assert Ready.after(2).seconds == 2.0
    assert Ready.notify().watchdog is None
    assert Ready.notify(watchdog=5).watchdog == 5.0
    assert Ready.fd(3).n == 3
    tcp = Ready.tcp(8000)
    assert (tcp.port, tcp.host) == (8000, "127.0.0.1")
    assert Ready.http("http://localhost:8000/healthz").url == "http://localhost:8000/healthz"


@pytest.mark.parametrize("port", [0, -1, 65536, 100_000])
def test_ready_tcp_bad_ports(port: int) -> None:
    with raises_value("ReadyTcp.port"):
        Ready.tcp(port)


@pytest.mark.parametrize("port", ["80", 80.0, True, None])
def test_ready_tcp_port_must_be_an_int(port: object) -> None:
    with raises_type("ReadyTcp.port"):
        Ready.tcp(port)  # type: ignore[arg-type]


def test_ready_tcp_empty_host() -> None:
    with raises_value("ReadyTcp.host"):
        Ready.tcp(80, host="")


@pytest.mark.parametrize("n", [0, 1, 2, 1024, -3])
def test_ready_fd_out_of_range(n: int) -> None:
    with raises_value("ReadyFd.n"):
        Ready.fd(n)


def test_ready_fd_type() -> None:
    with raises_type("ReadyFd.n"):
        Ready.fd("3")  # type: ignore[arg-type]


def test_ready_after_negative() -> None:
    with raises_value("ReadyAfter.seconds"):
        Ready.after(-1)


@pytest.mark.parametrize("value", [0, -5.0, math.inf])
def test_ready_notify_watchdog_must_be_positive(value: float) -> None:
    with raises_value("ReadyNotify.watchdog"):
        Ready.notify(watchdog=value)


@pytest.mark.parametrize("url", ["ftp://host/x", "localhost:8000", "http://", "", "http:// x"])
def test_ready_http_bad_urls(url: str) -> None:
    with raises_value("ReadyHttp.url"):
        Ready.http(url)


# --------------------------------------------------------------------------- Output


def test_output_constructors() -> None:
    assert Output.inherit().kind == "inherit"
    assert Output.discard().kind == "discard"
    lines = Output.lines(print)
    assert (lines.kind, lines.sink, lines.max_line) == ("lines", print, 65536)


def test_output_lines_sink_must_be_callable() -> None:
    with raises_type("OutputLines.sink"):
        Output.lines("stdout.log")  # type: ignore[arg-type]


def test_output_lines_max_line() -> None:
    with raises_value("OutputLines.max_line"):
        Output.lines(print, max_line=15)
    with raises_type("OutputLines.max_line"):
        Output.lines(print, max_line=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Listen


def test_listen_constructors() -> None:
    tcp = Listen.tcp(8000)
    assert (tcp.port, tcp.host, tcp.name, tcp.backlog) == (8000, "127.0.0.1", None, 511)
    assert Listen.tcp(0).port == 0  # an ephemeral port is fine for a socket we bind
    unix = Listen.unix("/run/app.sock", name="api")
    assert (unix.path, unix.name, unix.backlog) == ("/run/app.sock", "api", 511)


@pytest.mark.parametrize("port", [-1, 65536])
def test_listen_tcp_bad_ports(port: int) -> None:
    with raises_value("ListenTcp.port"):
        Listen.tcp(port)


def test_listen_tcp_port_type() -> None:
    with raises_type("ListenTcp.port"):
        Listen.tcp("8000")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a b", "a:b", "x" * 256, "ä"])
def test_listen_bad_fd_names(name: str) -> None:
    with raises_value("ListenTcp.name"):
        Listen.tcp(8000, name=name)


@pytest.mark.parametrize("backlog", [0, -1])
def test_listen_bad_backlog(backlog: int) -> None:
    with raises_value("ListenUnix.backlog"):
        Listen.unix("/tmp/x.sock", backlog=backlog)


def test_listen_unix_bad_paths() -> None:
    with raises_value("ListenUnix.path"):
        Listen.unix("")
    with raises_value("ListenUnix.path"):
        Listen.unix("/tmp/" + "x" * 103)  # 108 bytes: one too many for AF_UNIX
    assert Listen.unix("/tmp/" + "x" * 102).path  # 107 bytes fits


# --------------------------------------------------------------------------- ProcessChild


def test_process_child_argv_as_a_string() -> None:
    with raises_type("ProcessChild.argv"):
        ProcessChild("redis-server --port 7001")  # type: ignore[arg-type]
    with raises_type("ProcessChild.argv"):
        ProcessChild(b"redis-server")  # type: ignore[arg-type]


def test_process_child_empty_argv() -> None:
    with raises_value("ProcessChild.argv"):
        ProcessChild([])
    with raises_value("ProcessChild.argv[0]"):
        ProcessChild(["", "x"])


def test_process_child_argv_items() -> None:
    with raises_type("ProcessChild.argv[1]"):
        ProcessChild(["prog", 1])  # type: ignore[list-item]
    with raises_value("ProcessChild.argv[1]"):
        ProcessChild(["prog", "a\0b"])
    with raises_type("ProcessChild.argv"):
        ProcessChild(42)  # type: ignore[arg-type]


def test_process_child_argv_accepts_any_sequence() -> None:
    assert ProcessChild(("prog", "a")).argv == ("prog", "a")


@pytest.mark.parametrize("key", ["", "A=B", "A\0"])
def test_process_child_bad_env_names(key: str) -> None:
    with raises_value("ProcessChild.env"):
        proc(env={key: "1"})


def test_process_child_bad_env_values() -> None:
    with raises_type("ProcessChild.env['A']"):
        proc(env={"A": 1})
    with raises_value("ProcessChild.env['A']"):
        proc(env={"A": "x\0y"})
    with raises_type("ProcessChild.env"):
        proc(env=[("A", "1")])


def test_process_child_bad_cwd() -> None:
    with raises_value("ProcessChild.cwd"):
        proc(cwd="")


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf])
def test_process_child_startup_timeout(value: float) -> None:
    with raises_value("ProcessChild.startup_timeout"):
        proc(startup_timeout=value)


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_process_child_stop_timeout(value: float) -> None:
    with raises_value("ProcessChild.stop_timeout"):
        proc(stop_timeout=value)


def test_process_child_zero_stop_timeout_means_kill_at_once() -> None:
    assert proc(stop_timeout=0).stop_timeout == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("SIGINT", signal.SIGINT),
        ("int", signal.SIGINT),
        ("sigquit", signal.SIGQUIT),
        (signal.SIGHUP, signal.SIGHUP),
        (int(signal.SIGUSR1), signal.SIGUSR1),
    ],
)
def test_process_child_stop_signal_spellings(value: object, expected: signal.Signals) -> None:
    assert proc(stop_signal=value).stop_signal is expected


@pytest.mark.parametrize("value", ["SIGFOO", "TERMINATE", "", 0, 9999, -15])
def test_process_child_bad_signal_names(value: object) -> None:
    with raises_value("ProcessChild.stop_signal"):
        proc(stop_signal=value)


@pytest.mark.parametrize("value", [15.0, None, True])
def test_process_child_stop_signal_type(value: object) -> None:
    with raises_type("ProcessChild.stop_signal"):
        proc(stop_signal=value)


@pytest.mark.parametrize("value", ["notify", Ready, Ready(), None])
def test_process_child_ready_type(value: object) -> None:
    with raises_type("ProcessChild.ready"):
        proc(ready=value)


@pytest.mark.parametrize("field", ["stdout", "stderr"])
@pytest.mark.parametrize("value", [print, "inherit", Output(), None])
def test_process_child_output_type(field: str, value: object) -> None:
    with raises_type(f"ProcessChild.{field}"):
        proc(**{field: value})


def test_process_child_listen_items() -> None:
    with raises_type("ProcessChild.listen[1]"):
        proc(listen=[Listen.tcp(8000), ("127.0.0.1", 8001)])


@pytest.mark.parametrize("code", [-1, 256, "0", True])
def test_process_child_success_exit_codes(code: object) -> None:
    with raises_value("ProcessChild.success_exit_codes"):
        proc(success_exit_codes=[0, code])


def test_process_child_success_exit_codes_become_a_frozenset() -> None:
    assert proc(success_exit_codes=[0, 3, 3]).success_exit_codes == frozenset({0, 3})


def test_ready_fd_collides_with_listen_sockets() -> None:
    sockets = [Listen.tcp(8000), Listen.unix("/tmp/x.sock")]  # passed at fds 3 and 4
    for n in (3, 4):
        with raises_value("ProcessChild.ready"):
            proc(ready=Ready.fd(n), listen=sockets)
    assert proc(ready=Ready.fd(5), listen=sockets).ready == Ready.fd(5)
    assert proc(ready=Ready.fd(3)).ready == Ready.fd(3)  # no sockets: fd 3 is free


# --------------------------------------------------------------------------- TaskChild


def test_task_child_needs_a_callable() -> None:
    with raises_type("TaskChild.async_fn"):
        TaskChild("ticker")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "/", "a\nb", "tab\there", "nul\0", "del\x7f", "esc\x1b[0m", ".", "..", "x" * 256],
)
def test_bad_names(name: str) -> None:
    with raises_value("ChildSpec.name"):
        ChildSpec(name, proc())
    with raises_value("SupervisorSpec.name"):
        SupervisorSpec(name=name)


@pytest.mark.parametrize("name", ["a", "api-1", "worker.2", "with space", "ünïcode", "x" * 255])
def test_good_names(name: str) -> None:
    assert ChildSpec(name, proc()).name == name
    assert SupervisorSpec(name=name).name == name


def test_name_type() -> None:
    with raises_type("ChildSpec.name"):
        ChildSpec(1, proc())  # type: ignore[arg-type]
    with raises_type("SupervisorSpec.name"):
        SupervisorSpec(name=None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ChildSpec


def test_child_spec_child_type() -> None:
    with raises_type("ChildSpec.child"):
        ChildSpec("a", ["prog"])
    with raises_type("ChildSpec.child"):
        ChildSpec("a", idle)


def test_child_spec_restart_from_string() -> None:
    assert ChildSpec("a", proc(), restart="transient").restart is Restart.TRANSIENT  # type: ignore[arg-type]
    assert ChildSpec("a", proc(), restart="TEMPORARY").restart is Restart.TEMPORARY  # type: ignore[arg-type]
    with raises_value("ChildSpec.restart"):
        ChildSpec("a", proc(), restart="sometimes")  # type: ignore[arg-type]
    with raises_type("ChildSpec.restart"):
        ChildSpec("a", proc(), restart=1)  # type: ignore[arg-type]


def test_significant_permanent_child() -> None:
    with raises_value("ChildSpec.significant"):
        ChildSpec("a", proc(), significant=True)
    with raises_value("ChildSpec.significant"):
        ChildSpec("a", proc(), restart=Restart.PERMANENT, significant=True)


@pytest.mark.parametrize("restart", [Restart.TRANSIENT, Restart.TEMPORARY])
def test_significant_transient_or_temporary_child(restart: Restart) -> None:
    assert ChildSpec("a", proc(), restart=restart, significant=True).significant


def test_significant_type() -> None:
    with raises_type("ChildSpec.significant"):
        ChildSpec("a", proc(), restart=Restart.TRANSIENT, significant=1)  # type: ignore[arg-type]


def test_child_backoff_type() -> None:
    with raises_type("ChildSpec.backoff"):
        ChildSpec("a", proc(), backoff=1.0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- SupervisorSpec


def test_duplicate_child_names() -> None:
    with raises_value("SupervisorSpec.children[2]") as info:
        SupervisorSpec(
            children=[ChildSpec("a", proc()), ChildSpec("b", task()), ChildSpec("a", task())]
        )
    assert "'a'" in str(info.value)


def test_same_names_in_different_subtrees_are_fine() -> None:
    inner = SupervisorSpec(name="inner", children=[ChildSpec("a", proc())])
    spec = SupervisorSpec(children=[ChildSpec("a", proc()), ChildSpec("inner", inner)])
    assert [c.name for c in spec.children] == ["a", "inner"]


def test_children_must_be_child_specs() -> None:
    with raises_type("SupervisorSpec.children[0]"):
        SupervisorSpec(children=[proc()])


@pytest.mark.parametrize("mode", [None, AutoShutdown.NEVER])
def test_significant_child_with_auto_shutdown_never(mode: AutoShutdown | None) -> None:
    kwargs = {} if mode is None else {"auto_shutdown": mode}
    child = ChildSpec("job", proc(), restart=Restart.TRANSIENT, significant=True)
    with raises_value("SupervisorSpec.children[0]") as info:
        SupervisorSpec(children=[child], **kwargs)
    assert "auto_shutdown" in str(info.value)


@pytest.mark.parametrize("mode", [AutoShutdown.ANY_SIGNIFICANT, AutoShutdown.ALL_SIGNIFICANT])
def test_significant_child_with_auto_shutdown(mode: AutoShutdown) -> None:
    child = ChildSpec("job", proc(), restart=Restart.TRANSIENT, significant=True)
    assert SupervisorSpec(children=[child], auto_shutdown=mode).auto_shutdown is mode


def test_check_child_applies_the_same_rule_to_dynamic_children() -> None:
    spec = SupervisorSpec()
    child = ChildSpec("job", proc(), restart=Restart.TEMPORARY, significant=True)
    with raises_value("SupervisorSpec.children"):
        spec.check_child(child)


def test_enums_from_strings() -> None:
    spec = SupervisorSpec(strategy="rest_for_one", auto_shutdown="ALL_SIGNIFICANT")  # type: ignore[arg-type]
    assert spec.strategy is Strategy.REST_FOR_ONE
    assert spec.auto_shutdown is AutoShutdown.ALL_SIGNIFICANT
    with raises_value("SupervisorSpec.strategy") as info:
        SupervisorSpec(strategy="one_for_some")  # type: ignore[arg-type]
    assert "one_for_one" in str(info.value)  # the message lists the choices
    with raises_value("SupervisorSpec.auto_shutdown"):
        SupervisorSpec(auto_shutdown="sometimes")  # type: ignore[arg-type]
    with raises_type("SupervisorSpec.strategy"):
        SupervisorSpec(strategy=Restart.PERMANENT)  # type: ignore[arg-type]


def test_supervisor_limits_types() -> None:
    with raises_type("SupervisorSpec.intensity"):
        SupervisorSpec(intensity=(5, 60.0))  # type: ignore[arg-type]
    with raises_type("SupervisorSpec.backoff"):
        SupervisorSpec(backoff=1.0)  # type: ignore[arg-type]


def test_ready_after_longer_than_the_startup_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"ProcessChild\.ready: .*startup_timeout"):
        ProcessChild(["true"], ready=Ready.after(5), startup_timeout=5)
    assert ProcessChild(["true"], ready=Ready.after(4), startup_timeout=5).startup_timeout == 5
