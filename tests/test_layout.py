"""What depends on what, read from the source with `ast` (nothing is imported): every import at any depth counts
(inside functions, methods, `if TYPE_CHECKING:` blocks), and so do lazy "module" / "module:attr" registry strings.

- The core of `mllm` imports nothing from `mllm.samples`, `data_builders`, `train`, `serve` or `eval`. Outside the
  core: the sample makers (`mllm/samples/`), the dispatcher `mllm/cli.py` (it names every subcommand) and
  `mllm/doctor.py` (a command that encodes a sample clip to check the media stack).
- `data_builders` (the writer and reader of datasets) imports nothing from `train`, `serve` or `eval`.
- No project module imports, at any depth, one that imports it back (the whole graph is acyclic)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mllm", "data_builders", "train", "serve", "eval")
OUTSIDE_CORE = ("mllm.samples", "mllm.cli", "mllm.doctor")
FORBIDDEN = {
    "the core of mllm": ("mllm.samples", "data_builders", "train", "serve", "eval"),
    "data_builders": ("train", "serve", "eval"),
}
_REGISTRY_STRING = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+(?::\w+)?$")


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported_names(source: str, module: str, is_package: bool = False, known=None) -> set[str]:
    """Every dotted name `source` imports, at any depth: `import a.b`, `from a import b` (as `a.b`, and `a`),
    relative imports resolved against `module`, and registry strings such as "data_builders.abaw:build" (those
    naming one of `known` modules, when given: "train.jsonl" is a file name)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _REGISTRY_STRING.match(node.value):
            name = node.value.split(":")[0]
            if known is None or name in known:
                names.add(name)
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` names (its longest prefix that is one), or None for a third-party name."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (its own ancestor packages left out: importing a module runs them
    whatever it imports)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_names(path.read_text(), module, path.name == "__init__.py", modules):
            target = _resolve(name, modules)
            if target and target != module and not module.startswith(target + "."):
                edges.add(target)
        graph[module] = edges
    return graph


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_checker_sees_imports_at_any_depth():
    source = (
        "import os\nfrom mllm.media import load_video\n"
        "def f():\n    if True:\n        from data_builders.images import RAFDB_CODES\n"
        "class C:\n    def g(self):\n        import train.data\n        from . import sibling\n"
        "REGISTRY = {'x': 'serve.api:run'}\n"
    )
    names = imported_names(source, "mllm.face.align")
    assert {"mllm.media", "data_builders.images", "train.data", "mllm.face.sibling", "serve.api"} <= names


@pytest.mark.parametrize("who", sorted(FORBIDDEN))
def test_packages_import_only_what_they_may(who):
    graph = import_graph()
    if who == "the core of mllm":
        importers = [m for m in graph if _within(m, ["mllm"]) and not _within(m, OUTSIDE_CORE)]
        assert "mllm.model.modeling" in importers and "mllm.processor" in importers
    else:
        importers = [m for m in graph if _within(m, [who])]
    wrong = sorted(f"{m} imports {t}" for m in importers for t in graph[m] if _within(t, FORBIDDEN[who]))
    assert not wrong, f"{who} may not import {', '.join(FORBIDDEN[who])}: " + "; ".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    # The circles there were once, named so that a regression reads plainly.
    assert "mllm.export" not in graph["mllm.model.modeling"] or "mllm.model" not in graph["mllm.export"]
    assert "serve.api" not in graph["serve.demo"] and "serve.demo" not in graph["serve.live_demo"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
