"""The daemon hands the C heap's free pages back to the system (``trim_heap``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from omnitron.daemon import _heap

# A fresh interpreter leaves 200 free chunks of 64 KiB between live ones: glibc
# keeps their pages until malloc_trim, since no free space borders the heap's top.
_HOLES = textwrap.dedent(
    """
    import sys

    from omnitron.daemon._heap import trim_heap

    def heap_kib():
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                if "-" in line.split(" ", 1)[0]:
                    inside = line.rstrip().endswith("[heap]")
                elif inside and line.startswith("Rss:"):
                    return int(line.split()[1])
        return 0

    pairs = [(bytes(64 * 1024), bytes(600)) for _ in range(200)]
    holes = [keeper for _, keeper in pairs]
    del pairs
    before = heap_kib()
    trimmed = trim_heap()
    after = heap_kib()
    print(trimmed, before, after)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_free_pages_between_live_chunks_go_back_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _HOLES], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    trimmed, before, after = out[0] == "True", int(out[1]), int(out[2])
    assert trimmed
    # 200 holes of 64 KiB (12.5 MiB): most of their pages go.
    assert before - after >= 8 * 1024, (before, after)


def test_without_malloc_trim_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    _heap._malloc_trim.cache_clear()
    monkeypatch.setattr(_heap.sys, "platform", "darwin")
    try:
        assert _heap.trim_heap() is False
    finally:
        monkeypatch.undo()
        _heap._malloc_trim.cache_clear()
    assert _heap.trim_heap() is sys.platform.startswith("linux")
