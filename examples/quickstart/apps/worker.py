"""A background worker: does a unit of work every few seconds."""

import os
import time

from _notify import notify


def main() -> None:
    instance = os.environ.get("OMNITRON_INSTANCE", "?")
    notify("READY=1")
    done = 0
    while True:
        time.sleep(3)
        done += 1
        print(f"worker {instance}: finished job {done}")


if __name__ == "__main__":
    main()
