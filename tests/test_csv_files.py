"""The CSV module (chatbot/pairs_csv.py): no Flask for the trainer, one writer."""
import subprocess
import sys
import textwrap

from chatbot.config import PROJECT_ROOT


def run_python(code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(PROJECT_ROOT),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_csv_module_imports_no_flask_or_database():
    out = run_python("""
        import sys
        import chatbot.pairs_csv
        print(sorted(m for m in ("flask", "sqlalchemy", "flask_sqlalchemy") if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_the_trainer_reads_a_pairs_file_without_flask(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("Q,A\n안녕,안녕하세요\n뭐해,쉬고 있어요\n", encoding="utf-8")
    out = run_python(f"""
        import sys
        from chatbot import train

        def fake_training(pairs, models_root, **overrides):
            print(pairs)
        train.run_training = fake_training
        assert train.main(["--pairs", {str(pairs)!r}, "--models-dir", {str(tmp_path / "models")!r}]) == 0
        print(sorted(m for m in ("flask", "sqlalchemy") if m in sys.modules))
    """)
    assert out.splitlines() == ["[('안녕', '안녕하세요'), ('뭐해', '쉬고 있어요')]", "[]"]
