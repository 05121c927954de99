"""The codebase's own contracts: no import cycles (lazy imports included), no file over 800 lines,
the docs' solver table generated from the registry, and importing the core stays cheap."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from fewstep.core.solvers.specs import markdown_table

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted((ROOT / "packages").glob("*/src/fewstep/*"))


def _modules(pkg: Path) -> dict[str, Path]:
    src = pkg.parent.parent  # .../src
    out = {}
    for p in pkg.rglob("*.py"):
        name = ".".join(p.relative_to(src).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Modules of the same tree that ``name`` imports anywhere (top level or inside functions),
    except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(x)
        for n in ast.walk(tree)
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
        for b in n.body
        for x in ast.walk(b)
    }
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    deps = set()
    for n in ast.walk(tree):
        if id(n) in typing_only:
            continue
        if isinstance(n, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - n.level + 1] if n.level else []
            mod = ".".join(base + ([n.module] if n.module else [])) if n.level else (n.module or "")
            for a in n.names:
                deps.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod)
        elif isinstance(n, ast.Import):
            deps.update(a.name for a in n.names)
    return {d for d in deps if d in mods and d != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("pkg", PACKAGES, ids=[p.name for p in PACKAGES])
def test_no_import_cycles(pkg):
    mods = _modules(pkg)
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert _cycles(graph) == []


def test_modality_packages_never_import_each_other_and_core_imports_none():
    names = {p.name for p in PACKAGES}
    for pkg in PACKAGES:
        for path in pkg.rglob("*.py"):
            text = path.read_text()
            others = {n for n in names - {pkg.name, "core"} if f"fewstep.{n}" in text}
            if pkg.name == "core":
                others = {n for n in names - {"core"} if f"from fewstep.{n}" in text or f"import fewstep.{n}" in text}
            assert not others, f"{path} imports {others}: dependencies point modality -> core only"


def test_no_source_file_over_800_lines():
    long = [(p, n) for pkg in PACKAGES for p in pkg.rglob("*.py") if (n := len(p.read_text().splitlines())) > 800]
    assert not long, long


def test_docs_solver_table_is_the_registry():
    text = (ROOT / "docs" / "solvers.md").read_text()
    begin, end = text.index("<!-- solver-table"), text.index("<!-- /solver-table -->")
    table = text[begin:end].split("\n", 1)[1].strip()
    assert table == markdown_table(), "docs/solvers.md's table is stale: regenerate it from specs.markdown_table()"


def test_importing_the_core_loads_no_triton_and_no_modality():
    code = (
        "import sys, fewstep.core, fewstep.core.solvers, fewstep.core.distill, fewstep.core.tuning, fewstep.core.quant; "
        "bad = [m for m in sys.modules if m.startswith(('triton', 'fewstep.image', 'fewstep.timeseries'))]; "
        "import torch; assert not torch.cuda.is_initialized(); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
