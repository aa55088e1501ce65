"""No import cycle inside pa_jax: every `import` / `from ... import` (module level or inside
a function) is an edge, and the graph must be acyclic.

A function-level import hides a cycle until both modules meet in one process in the wrong
order; this check finds it when it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pa_jax"


def _module_name(root: Path, path: Path) -> str:
  parts = list(path.relative_to(root.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
  """{module: modules of the package it imports}, from the AST of every file under `root`
  (the package folder). `from a.b import c` is an edge to a.b.c when that is a module,
  else to a.b; relative imports are resolved; imports of other packages are dropped."""
  files = {_module_name(root, p): p for p in sorted(root.rglob("*.py"))}
  top = root.name
  graph: dict[str, set[str]] = {m: set() for m in files}
  for mod, path in files.items():
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
          pkg = pkg[:len(pkg) - node.level + 1]
          base = ".".join(pkg + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                   for a in node.names]
      for t in targets:
        while t and t not in files:  # `import a.b.c` of a name below a module
          t = t.rpartition(".")[0]
        if t and t.split(".")[0] == top and t != mod:
          graph[mod].add(t)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), sorted."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on: set[str] = set()
  out: list[list[str]] = []

  def visit(v: str) -> None:  # recursion depth <= number of modules (~100)
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def test_pa_jax_has_no_import_cycle():
  graph = import_graph(PACKAGE)
  assert "pa_jax.data.readers" in graph and graph["pa_jax.data.readers"]  # the walk saw files
  found = cycles(graph)
  assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_check_finds_module_and_function_level_cycles(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from pkg.sub import b\nimport os\n")
  (pkg / "sub" / "b.py").write_text("def f():\n  from .. import a\n")  # lazy, relative
  (pkg / "c.py").write_text("import pkg.sub.b\nfrom pkg.a import name\n")  # into the cycle
  graph = import_graph(pkg)
  assert graph == {"pkg": set(), "pkg.sub": set(), "pkg.a": {"pkg.sub.b"},
                   "pkg.sub.b": {"pkg.a"}, "pkg.c": {"pkg.sub.b", "pkg.a"}}
  assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
  (pkg / "sub" / "b.py").write_text("def f():\n  import os\n")
  assert cycles(import_graph(pkg)) == []
