"""The layer order (README, "Layout"): each module imports the project's modules only
from its own layer or the layers below, at module level and inside functions alike, and
no two modules import each other in a circle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "worldsim", "agents", "training")

# Lowest first. A module belongs to the longest prefix that names it.
LAYERS = (
    ("envs",),  # the games
    ("worldsim",),  # the core: data, tokenizer, dynamics, memory, world model, dream env
    ("agents.policies", "agents.controller", "agents.sb3_vec_env"),  # acting in an env or a dream
    ("training",),  # collection and the training pipelines
    ("agents.imagine", "agents.dream_loop"),  # agents trained in the dream, the collect/imagine loop
    ("worldsim.probes",),  # the probes: they script the real games with the explore policy
    ("worldsim.cli",),  # the command line, the single top: nothing imports it
)


def layer_of(module: str) -> int:
    matches = [(len(prefix), i) for i, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS and README's layer order"
    return max(matches)[1] + 1  # numbered from 1, as README lists them


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, package: str = "") -> set[str]:
    """Every project module `path` imports, wherever the import statement sits; relative
    imports are resolved against `package`, the package `path` is in."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from worldsim import probes` imports the module worldsim.probes
            found |= {f"{module}.{a.name}" if module_exists(f"{module}.{a.name}") else module for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def module_exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): project_imports(p, package_of(p))
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
            for src, dsts in graph.items() for dst in sorted(dsts) if layer_of(dst) > layer_of(src)]


def test_every_import_points_down_or_sideways():
    found = upward(import_graph())
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_no_import_cycles():
    graph = import_graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            nxt = nxt if nxt in graph else nxt.rsplit(".", 1)[0]  # an attribute import names its module
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path):
    module = tmp_path / "envs_module.py"
    module.write_text("import numpy\nfrom envs import rooms\nfrom . import wrappers\n\n\n"
                      "def f():\n    from worldsim.cli import main\n    return main\n")
    graph = {"envs.some_game": project_imports(module, "envs")}
    assert graph["envs.some_game"] == {"envs.rooms", "envs.wrappers", "worldsim.cli"}
    assert project_imports(module, "worldsim.probes") >= {"worldsim.probes"}  # `from . import` of a package's own
    assert upward(graph) == ["envs.some_game (layer 1) imports worldsim.cli (layer 7)"]
