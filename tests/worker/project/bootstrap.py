"""A module-worker system used by the worker tests (real processes, real sockets)."""

from omnitron import Process, define_system

system = define_system(
    name="lab",
    version="1.0",
    processes=[
        Process(
            name="calc",
            module="calc.service",
            instances=2,
            topology={"expose": True},
            hooks={
                "before_start": "calc.hooks:process_before_start",
                "after_start": "calc.hooks:process_after_start",
                "before_stop": "calc.hooks:process_before_stop",
                "after_stop": "calc.hooks:process_after_stop",
            },
            env={"CALC_GREETING": "hello"},
        ),
        Process(name="broken", module="calc.broken", topology={"access": ["calc"]}),
        Process(name="missing", module="calc.does_not_exist"),
    ],
    hooks={
        "before_start": "calc.hooks:system_before_start",
        "after_start": "calc.hooks:system_after_start",
        "before_stop": "calc.hooks:system_before_stop",
        "after_stop": "calc.hooks:system_after_stop",
        "on_health_check": "calc.hooks:system_health",
    },
)
