"""The import rule of the layers (docs/results/layout.md), read from the source with ast:
no import circles, no library module importing a command, no command importing another
command, the library never importing benchmarks/, and project imports at the top of
files but for a short list of reasons."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Folders whose modules are imported under another name (pyproject's package-dir).
MAPPED_FOLDERS = {"experiments": "fer_jax.experiments", "release": "fer_jax.released"}
SCANNED = ("fer_jax", "benchmarks", *MAPPED_FOLDERS)


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] in MAPPED_FOLDERS:
        parts[:1] = MAPPED_FOLDERS[parts[0]].split(".")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    return {module_name(path, root): path for folder in SCANNED for path in sorted((root / folder).rglob("*.py"))}


def imported_modules(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The project modules that NAME imports anywhere in its source (inside functions too:
    an import deferred into a function still depends on the module; importlib.import_module
    of a literal name too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        found |= node_targets(node, name, path, known)
    found.discard(name)
    return found


def node_targets(node: ast.AST, name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The project modules (of KNOWN) that the import statement NODE of module NAME imports;
    empty when NODE imports none or is no import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if isinstance(node, ast.Import):
        candidates = [[alias.name] for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        # `from a import b` imports the module a.b when there is one, else a name of a.
        candidates = [[f"{base}.{alias.name}", base] for alias in node.names]
    elif _is_import_module_call(node):
        candidates = [[node.args[0].value]]
    else:
        return set()
    found = set()
    for options in candidates:
        for option in options:
            target = next((m for m in _prefixes(option) if m in known), None)
            if target is not None:
                found.add(target)
                break
    return found


def _is_import_module_call(node: ast.AST) -> bool:
    """importlib.import_module("a.literal.name"): an import all the same."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return False
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return called == "import_module" and isinstance(node.args[0].value, str)


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def is_command(name: str, path: pathlib.Path) -> bool:
    """fer_jax.cli.*, the entry modules that run them, and any other module that is run as
    a program (a top-level main() behind an `if __name__ == "__main__"` guard)."""
    if name.startswith("fer_jax.cli.") or name == "fer_jax.cli":
        return name != "fer_jax.cli"
    tree = ast.parse(path.read_text(), str(path))
    has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    runs_as_program = any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)
    imports_main = any(isinstance(n, ast.ImportFrom) and any(a.name == "main" for a in n.names) for n in tree.body)
    return runs_as_program and (has_main or imports_main)


def entry_target(name: str) -> str | None:
    """fer_jax.cli.NAME for the entry module fer_jax.NAME (`python -m fer_jax.NAME`)."""
    parts = name.split(".")
    return f"fer_jax.cli.{parts[1]}" if len(parts) == 2 and parts[0] == "fer_jax" else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(start: str) -> None:
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def layout_problems(root: pathlib.Path = ROOT) -> list[str]:
    modules = project_modules(root)
    graph = import_graph(root)
    commands = {name for name, path in modules.items() if is_command(name, path)}
    problems = [f"import circle: {' <-> '.join(c)}" for c in cycles(graph)]
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            if not name.startswith("fer_jax"):
                continue
            if target.startswith("benchmarks"):
                problems.append(f"the library imports benchmarks: {name} -> {target}")
            elif target in commands and name not in commands:
                problems.append(f"a library module imports a command: {name} -> {target}")
            elif target in commands and target != entry_target(name):
                problems.append(f"a command imports another command: {name} -> {target}")
    return problems


def write_tree(root: pathlib.Path, files: dict[str, str]) -> None:
    """A synthetic checkout for the rule tests: the scanned folders and FILES (path: text)."""
    for folder in SCANNED:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)


def test_the_layers_keep_the_import_rule():
    assert layout_problems() == []


# The layers of BUILD_NOTES' picture, lowest first: a package or top-level module may import
# its own layer and those below, never one above. Inside a layer the modules may import each
# other (the circle check above still holds between modules).
LAYERS = (
    ("base", {"errors", "runtime", "checkout_packages", "timing", "device_peak"}),
    ("data", {"data"}),
    ("config and figures", {"config", "metrics", "plots", "explore_figures", "gradcam"}),
    ("models", {"kernels", "models"}),
    ("engine", {"engine", "transfer"}),
    ("inference", {"inference", "faces", "onnx_model", "serving"}),
    ("command libraries", {"study_runs", "ensemble_runs", "distillation", "model_release", "model_figures",
                           "exploration", "benchmarking", "torch_reference", "predictor"}),
)
COMMANDS_LAYER = len(LAYERS)  # fer_jax.cli, the entry modules and experiments/ import anything


def layer_of(name: str, commands: set[str]) -> int | None:
    """The layer of a fer_jax module (None: not a layered module)."""
    parts = name.split(".")
    if parts[0] != "fer_jax" or len(parts) == 1:
        return None
    if name in commands or parts[1] in ("cli", "experiments", "released"):
        return COMMANDS_LAYER
    for rank, (_, members) in enumerate(LAYERS):
        if parts[1] in members:
            return rank
    return -1


def layer_problems(root: pathlib.Path = ROOT) -> list[str]:
    modules = project_modules(root)
    commands = {name for name, path in modules.items() if is_command(name, path)}
    problems = []
    for name, targets in sorted(import_graph(root).items()):
        rank = layer_of(name, commands)
        if rank == -1:
            problems.append(f"{name} is in no layer: add it to tests/test_layout.py LAYERS")
        if rank is None or rank < 0:
            continue
        for target in sorted(targets):
            target_rank = layer_of(target, commands)
            if target_rank is not None and target_rank > rank:
                problems.append(f"{name} ({LAYERS[rank][0]}) imports {target} "
                                f"({LAYERS[target_rank][0] if target_rank < COMMANDS_LAYER else 'commands'}), "
                                "a higher layer")
    return problems


def test_each_layer_imports_only_itself_and_the_layers_below():
    assert layer_problems() == []


def test_the_layer_rule_catches_an_upward_import_and_an_unplaced_module(tmp_path):
    files = {
        "fer_jax/__init__.py": "",
        "fer_jax/engine/__init__.py": "",
        "fer_jax/engine/trainer.py": "from fer_jax.inference.loading import load\n",
        "fer_jax/inference/__init__.py": "",
        "fer_jax/inference/loading.py": "from fer_jax.engine import checkpoint\n",
        "fer_jax/engine/checkpoint.py": "",
        "fer_jax/stray.py": "",
    }
    write_tree(tmp_path, files)
    assert layer_problems(tmp_path) == [
        "fer_jax.engine.trainer (engine) imports fer_jax.inference.loading (inference), a higher layer",
        "fer_jax.stray is in no layer: add it to tests/test_layout.py LAYERS",
    ]


def test_the_rule_catches_a_circle_a_command_import_and_a_benchmark_import(tmp_path):
    files = {
        "fer_jax/__init__.py": "",
        "fer_jax/cli/__init__.py": "",
        "fer_jax/cli/evaluate.py": "from fer_jax.scoring import score\ndef main(argv=None): ...\n",
        "fer_jax/cli/ensemble.py": "from fer_jax.cli import evaluate\n",
        "fer_jax/evaluate.py": "from fer_jax.cli.evaluate import main\nif __name__ == '__main__':\n    main()\n",
        "fer_jax/scoring.py": "def score():\n    from fer_jax import tta\n",
        "fer_jax/tta.py": "from fer_jax.scoring import score\n",
        "fer_jax/loading.py": "def load():\n    from fer_jax.evaluate import main\n",
        "fer_jax/speed.py": "import importlib\nprobe = importlib.import_module('benchmarks.probe')\n",
        "benchmarks/__init__.py": "",
        "benchmarks/probe.py": "from fer_jax import scoring\n",
    }
    write_tree(tmp_path, files)
    assert sorted(layout_problems(tmp_path)) == sorted([
        "import circle: fer_jax.scoring <-> fer_jax.tta",
        "a command imports another command: fer_jax.cli.ensemble -> fer_jax.cli.evaluate",
        "a library module imports a command: fer_jax.loading -> fer_jax.evaluate",
        "the library imports benchmarks: fer_jax.speed -> benchmarks.probe",
    ])


def test_from_imports_resolve_to_the_module_they_name():
    graph = import_graph()
    # `from fer_jax.data import tta` depends on the module fer_jax.data.tta.
    assert "fer_jax.data.tta" in graph["fer_jax.cli.ensemble"]
    assert "fer_jax.errors" in graph["fer_jax.data.tta"]


def test_every_package_folder_is_installed():
    """pyproject lists its packages by name: a new folder of modules must be listed, or a
    wheel ships without it while the editable install still finds it."""
    import tomllib
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {module_name(path.parent) for path in (ROOT / "fer_jax").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert folders - set(settings["packages"]) == set()
    assert set(settings["package-dir"].values()) == set(MAPPED_FOLDERS) | {"fer_jax"}


JAX_PACKAGES = ("jax", "flax", "optax", "orbax", "chex")


def top_level_imports(path: pathlib.Path) -> set[str]:
    """Every name imported when the module is imported: the module body, outside functions."""
    names = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.update([node.module] + [f"{node.module}.{alias.name}" for alias in node.names])
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []))
            elif isinstance(node, ast.ExceptHandler):
                visit(node.body)

    visit(ast.parse(path.read_text(), str(path)).body)
    return names


def imports_on_import(name: str, modules: dict[str, pathlib.Path],
                      packages: tuple[str, ...]) -> list[str]:
    """The chain of project modules by which importing NAME imports one of PACKAGES, or []."""
    seen, stack = set(), [(name, [name])]
    while stack:
        current, chain = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        imported = top_level_imports(modules[current])
        if any(n.split(".")[0] in packages for n in imported):
            return chain
        for target in imported:
            module = next((m for m in _prefixes(target) if m in modules), None)
            if module is not None:
                stack.append((module, chain + [module]))
    return []


def imports_jax_on_import(name: str, modules: dict[str, pathlib.Path]) -> list[str]:
    """The chain of project modules by which importing NAME imports jax, or []."""
    return imports_on_import(name, modules, JAX_PACKAGES)


@pytest.mark.parametrize("command", ["fer_jax.cli.train", "fer_jax.cli.study", "fer_jax.cli.bench",
                                     "fer_jax.train", "fer_jax.study", "fer_jax.bench"])
def test_the_training_commands_split_the_cpu_before_jax_is_imported(command):
    # runtime.split_cpu_into_devices only works before jax is imported.
    assert imports_jax_on_import(command, project_modules()) == []


# Project imports sit at the top of a file. The exceptions, each with its reason:
# commands that split the CPU into XLA devices, which must happen before jax is imported,
# and then import the library inside main;
SPLIT_CPU_COMMANDS = {"fer_jax.cli.train", "fer_jax.cli.study", "fer_jax.cli.bench"}
# and modules imported where they are used for the dependency they bring (the test checks
# that each still brings it): an optional extra, or JAX itself where a path runs without it.
LAZY_MODULES = {
    "fer_jax.onnx_model.export": ("onnx", "the `onnx` extra: export and --backend onnx"),
    "fer_jax.serving.app": ("starlette", "the `serve` extra: the web app"),
    "fer_jax.torch_reference.steps": ("torch", "the `bench` extra: the PyTorch comparison"),
    "fer_jax.inference.loading": ("jax", "JAX, Flax and Orbax take seconds to import: "
                                         "ExpressionPredictor on a release's ONNX file never needs them"),
}


@pytest.mark.parametrize("module", ["fer_jax.predictor", "fer_jax.predict", "fer_jax.serve"])
def test_the_onnx_path_starts_without_jax(module):
    # Why inference.loading is on LAZY_MODULES: a release's model.onnx runs without JAX.
    assert imports_jax_on_import(module, project_modules()) == []


def inner_imports(name: str, path: pathlib.Path, known: set[str]) -> list[tuple[int, str, str]]:
    """(line, function, project module) of every project import of module NAME inside a
    function or method (importlib.import_module of a literal name too); FUNCTION is the
    outermost one (Class.method for a method)."""
    found = []
    for top in ast.parse(path.read_text(), str(path)).body:
        functions = ([(top.name, top)] if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) else
                     [(f"{top.name}.{n.name}", n) for n in top.body
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                     if isinstance(top, ast.ClassDef) else [])
        for function_name, function in functions:
            for node in ast.walk(function):
                for target in sorted(node_targets(node, name, path, known) - {name}):
                    found.append((node.lineno, function_name, target))
    return found


def inner_import_problems(root: pathlib.Path = ROOT) -> list[str]:
    """Project imports inside functions of fer_jax/ that no exception above allows."""
    modules = project_modules(root)
    problems = []
    for name, path in sorted(modules.items()):
        if not name.startswith("fer_jax"):
            continue
        for line, function, target in inner_imports(name, path, set(modules)):
            if target in LAZY_MODULES or (name in SPLIT_CPU_COMMANDS and function == "main"):
                continue
            problems.append(f"{path.relative_to(root)}:{line}: {function} imports {target} inside a function")
    return problems


def test_project_imports_are_at_the_top_of_files():
    assert inner_import_problems() == []


@pytest.mark.parametrize("module", sorted(LAZY_MODULES))
def test_each_lazily_imported_module_brings_its_dependency(module):
    """A module stays on LAZY_MODULES only while importing it imports what its reason says."""
    dependency = LAZY_MODULES[module][0]
    assert imports_on_import(module, project_modules(), (dependency,)) != [], module


def test_the_inner_import_rule_catches_a_deferred_import(tmp_path):
    files = {
        "fer_jax/__init__.py": "",
        "fer_jax/scoring.py": "import importlib\ndef score():\n    from fer_jax import tta\n"
                              "class Scorer:\n    def run(self):\n"
                              "        return importlib.import_module('fer_jax.tta')\n",
        "fer_jax/tta.py": "def views():\n    import numpy\n    from fer_jax.onnx_model import export\n",
        "fer_jax/onnx_model/__init__.py": "",
        "fer_jax/onnx_model/export.py": "import onnx\n",
        "fer_jax/cli/__init__.py": "",
        "fer_jax/cli/train.py": "def main():\n    from fer_jax import scoring\n"
                                "def helper():\n    from fer_jax import scoring\n",
    }
    write_tree(tmp_path, files)
    assert inner_import_problems(tmp_path) == [
        "fer_jax/cli/train.py:4: helper imports fer_jax.scoring inside a function",
        "fer_jax/scoring.py:3: score imports fer_jax.tta inside a function",
        "fer_jax/scoring.py:6: Scorer.run imports fer_jax.tta inside a function",
    ]
