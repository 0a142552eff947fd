"""The import graph of ``distrib`` is one-way: no module imports, directly or through others,
one that imports it back. Imports inside functions count (a lazy import is a dependency
too); the layers themselves are import-linter's contract in pyproject.toml (``./run check``).
"""

from __future__ import annotations

import grimp


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, without
    recursion), each sorted; and any module that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, imported = work[-1]
            for other in imported:
                if other not in index:
                    index[other] = low[other] = len(index)
                    stack.append(other)
                    on_stack.add(other)
                    work.append((other, iter(sorted(graph.find_modules_directly_imported_by(
                        other)))))
                    break
                if other in on_stack:
                    low[module] = min(low[module], index[other])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1 or module in graph.find_modules_directly_imported_by(
                            module):
                        found.append(sorted(component))
    return found


def _describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    """One loop through ``component``: its modules in import order, with the lines."""
    first, members = component[0], set(component)
    nearest = min((m for m in graph.find_modules_directly_imported_by(first) if m in members),
                  default=first)
    chain = graph.find_shortest_chain(importer=nearest, imported=first) or (nearest, first)
    loop = [first, *chain]
    steps = []
    for importer, imported in zip(loop, loop[1:]):
        lines = sorted({d["line_number"] for d in graph.get_import_details(
            importer=importer, imported=imported)})
        steps.append(f"{importer} -> {imported} (line {', '.join(map(str, lines))})")
    return f"{len(component)} modules: {', '.join(component)}; for example " + "; ".join(steps)


def test_the_import_graph_has_no_cycle() -> None:
    graph = grimp.build_graph("distrib", cache_dir=None)  # (imports in functions included)
    cycles = _cycles(graph)
    assert not cycles, "import cycles among distrib's modules: " + " | ".join(
        _describe(graph, c) for c in cycles)


def test_a_cycle_is_found_and_named() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"):
        graph.add_module(module)
    for importer, imported in (("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.a"),
                               ("pkg.c", "pkg.d")):
        graph.add_import(importer=importer, imported=imported, line_number=7,
                         line_contents=f"import {imported}")
    cycles = _cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c"]]
    assert _describe(graph, cycles[0]) == (
        "3 modules: pkg.a, pkg.b, pkg.c; for example pkg.a -> pkg.b (line 7); "
        "pkg.b -> pkg.c (line 7); pkg.c -> pkg.a (line 7)")
