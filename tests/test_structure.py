"""The code's shape, checked by tools: the import contracts in .importlinter."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    """No import cycle between chatbot's modules (import-linter's acyclic_siblings)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_the_readme_map_names_every_module():
    """README "How it works" has a line for each module in chatbot/."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How it works", 1)[1].split("\n## ", 1)[0]
    modules = sorted(path.name for path in (ROOT / "chatbot").glob("*.py"))
    assert len(modules) > 20
    missing = [name for name in modules if f"`chatbot/{name}`" not in section]
    assert missing == []


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py, shared helpers in tests/helpers.py."""
    test_modules = {path.stem for path in (ROOT / "tests").glob("test_*.py")}
    importing = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            importing += [(path.name, name) for name in names if name in test_modules]
    assert len(test_modules) > 20
    assert importing == []
