"""Dependency graph helpers: cycles, reported the way a person reads them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["find_cycles"]


def find_cycles(graph: Mapping[str, Sequence[str]], order: Sequence[str]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, each as
    ``[a, b, ..., a]`` starting from the component's first node in ``order``.

    Iterative Tarjan, so deep chains cannot exhaust the stack.
    """
    rank = {name: position for position, name in enumerate(order)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in order:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            edges = graph[node]
            if child < len(edges):
                work.append((node, child + 1))
                target = edges[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    cycles = []
    for component in sorted(components, key=lambda c: min(rank[n] for n in c)):
        members = set(component)
        start = min(component, key=rank.__getitem__)
        cycles.append(_cycle_from(graph, start, members))
    return cycles


def _cycle_from(graph: Mapping[str, Sequence[str]], start: str, members: set[str]) -> list[str]:
    """The shortest path ``start -> ... -> start`` inside one component (BFS)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in graph[node]:
                if target not in members:
                    continue
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError("a strongly connected component always has a cycle")
