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


def test_the_map_of_the_code_names_every_module():
    """docs/how-it-works.md has a line for each module in chatbot/, before its first section."""
    page = (ROOT / "docs" / "how-it-works.md").read_text(encoding="utf-8")
    section = page.split("\n## ", 1)[0]
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


TORCH_MODULES = "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"


def output_of(code: str) -> list[str]:
    """The stdout lines of ``code`` run in a fresh Python (a clean sys.modules)."""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()


def test_answering_loads_no_pytorch(tmp_path):
    """The server answers with NumPy (chatbot/inference.py): a process that
    loaded a model and answered, from the model and from a reviewed answer
    (corrections.py's TF-IDF index), has not imported torch."""
    from helpers import tiny_model

    tiny_model(tmp_path / "models", max_steps=2)
    code = ("import sys\n"
            "from chatbot import create_app, morph\n"
            "from chatbot.database import REVIEWED, Exchange\n"
            "from chatbot.extensions import db\n"
            f"app = create_app({{'SQLALCHEMY_DATABASE_URI': 'sqlite:///{tmp_path / 'x.db'}', 'SECRET_KEY': 'x',"
            f" 'MODEL_DIR': '{tmp_path / 'models'}'}})\n"
            "import flask_migrate\n"
            "with app.app_context():\n"
            "    flask_migrate.upgrade()\n"
            "    db.session.add(Exchange(question='춘천 가는 길', question_key=morph.question_key('춘천 가는 길'), answer='x',\n"
            "                            corrected_answer='기차를 타세요.', status=REVIEWED))\n"
            "    db.session.commit()\n"
            "    responder = app.extensions['chatbot.responder']\n"
            "    print(responder.answer('배고파').route, responder.answer('춘천 가는 길').route)\n"
            + TORCH_MODULES)
    routes, modules = output_of(code)[-2:]
    assert routes.split()[1] == "memory" and routes.split()[0] in ("known", "model", "unsure")
    assert modules == "[]"


def test_the_app_and_its_commands_load_no_pytorch(tmp_path):
    """PyTorch is about 200 MB: only the trainer may load it, never flask
    retrain's runner, import-pairs or db upgrade (nor the server, above)."""

    code = ("import sys\n"
            "from chatbot import create_app, retrain\n"
            f"app = create_app({{'SQLALCHEMY_DATABASE_URI': 'sqlite:///{tmp_path / 'x.db'}', 'SECRET_KEY': 'x',"
            f" 'MODEL_DIR': '{tmp_path / 'models'}'}})\n"
            "import flask_migrate\n"
            "with app.app_context():\n"
            "    flask_migrate.upgrade()\n"
            "    from chatbot.pairs import training_pairs\n"
            "    assert training_pairs()\n"
            + TORCH_MODULES)
    assert output_of(code)[-1] == "[]"
