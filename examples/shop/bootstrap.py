"""The shop's processes: two `users` workers, and `billing`, which calls them."""

from omnitron import Process, define_system

system = define_system(
    name="shop",
    version="1.0",
    processes=[
        # Listed first or not, providers start before the processes that access them.
        Process(name="billing", module="shop.billing", topology={"access": ["users"]}),
        Process(name="users", module="shop.users", instances=2, topology={"expose": True}),
    ],
)
