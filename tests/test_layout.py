"""The package's import structure: the reports never import the engine, no module imports
another module's private name, and the registries fill without registry.py importing the
recipe and task packages back."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sweeper"
ENGINE = {"sweeper.sweep", "sweeper.trial", "sweeper.plan", "sweeper.devices.pool", "sweeper.devices.worker",
          "sweeper.cli"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path):
    """Yields (imported module, [names]) for every import in the file, function-level ones
    included, relative ones resolved against the file's package."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]


def _all_modules():
    return sorted(PKG.rglob("*.py"))


def test_reports_never_import_the_engine():
    bad = []
    for path in (PKG / "reports").glob("*.py"):
        for target, names in _imports(path):
            hits = {target} | {f"{target}.{n}" for n in names}
            if hits & ENGINE:
                bad.append(f"{_module_name(path)} imports {sorted(hits & ENGINE)}")
    assert not bad, bad


def test_no_private_name_is_imported_across_modules():
    bad = []
    for path in _all_modules():
        for target, names in _imports(path):
            if not target.startswith("sweeper"):
                continue
            bad += [f"{_module_name(path)}: from {target} import {n}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_registry_does_not_import_recipes_or_tasks():
    targets = {t for t, _ in _imports(PKG / "registry.py")}
    assert not {t for t in targets if t.startswith(("sweeper.recipes", "sweeper.tasks"))}, targets


def test_no_module_imports_the_old_report_paths():
    """The reports moved into sweeper/reports/: nothing imports the old top-level modules."""
    old = {"sweeper.leaderboard", "sweeper.pareto", "sweeper.report_plot", "sweeper.wandb_report",
           "sweeper.wandb_offline", "sweeper.tracking", "sweeper.glue_report", "sweeper.baselines"}
    bad = [f"{_module_name(p)} imports {t}" for p in _all_modules() for t, names in _imports(p)
           if t in old or {f"{t}.{n}" for n in names} & old]
    assert not bad, bad
    assert not [m for m in old if (PKG / (m.split(".", 1)[1] + ".py")).exists()]

