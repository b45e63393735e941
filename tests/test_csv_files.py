"""The CSV module (chatbot/pairs_csv.py): no Flask for the trainer, one writer, no formulas."""
import csv
import subprocess
import sys
import textwrap

from chatbot.config import PROJECT_ROOT
from chatbot.database import REVIEWED, Exchange
from chatbot.extensions import db
from chatbot.pairs_csv import Pair, read_pairs_csv, write_pairs_csv



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


# -- formula injection: the one writer neutralises, the reader undoes it -------------

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NASTY = ["=1+1", '=HYPERLINK("http://example.com","클릭")', "+82 10-1234-5678", "-5도", "@멘션", "\tx", "\rx",
         "=", "-", "'", "''", "'=x", "'+x", "'@x", "''=x", "'quoted", "'\tx", "안녕하세요, 반가워요.",
         "줄이\n두 줄", 'say "hi"', "1+1=2", "x=1", "a'b"]


def written_cells(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [cell for row in csv.reader(f) for cell in row]


def write_nasty(path, label=None):
    pairs = [Pair(text, f"답 {text}" if i % 2 else text, label) for i, text in enumerate(NASTY)]
    with open(path, "w", encoding="utf-8", newline="") as f:
        write_pairs_csv(f, pairs)
    return pairs


def test_written_cells_never_start_a_formula(tmp_path):
    write_nasty(tmp_path / "out.csv", label=-3)
    cells = written_cells(tmp_path / "out.csv")
    assert cells[:3] == ["Q", "A", "label"]
    for cell in cells:
        assert not cell.startswith(FORMULA_START), cell
    assert "'=1+1" in cells and "'-5도" in cells and "'@멘션" in cells and "'\tx" in cells and "'-3" in cells
    assert "''quoted" in cells and "'''=x" in cells  # a leading quote is doubled: see write_pairs_csv
    assert "안녕하세요, 반가워요." in cells and "x=1" in cells  # the rest is as it was


def test_reading_what_we_wrote_gives_back_exactly_the_text(tmp_path):
    pairs = write_nasty(tmp_path / "out.csv", label=-3)
    read, errors = read_pairs_csv(tmp_path / "out.csv")
    assert errors == []
    assert [(p.question, p.answer, p.label) for p in read] == [(p.question, p.answer, -3) for p in pairs]


def test_a_quote_before_ordinary_text_in_a_hand_made_file_is_kept(tmp_path):
    path = tmp_path / "hand.csv"
    path.write_text("Q,A\n'quoted,'=1+1\n'안녕,''\n", encoding="utf-8")
    pairs, errors = read_pairs_csv(path)
    assert errors == []
    assert [(p.question, p.answer) for p in pairs] == [("'quoted", "=1+1"), ("'안녕", "'")]


def test_admin_export_is_neutralised_and_imports_back_unchanged(app, logged_in, tmp_path):
    client = logged_in
    with app.app_context():
        for i, text in enumerate(NASTY):
            db.session.add(Exchange(question=f"{text}", question_key=f"k{i}", answer=f"답{i}",
                                    corrected_answer=text, status=REVIEWED))
        db.session.commit()
    export = client.get("/admin/queue/export.csv")
    assert export.status_code == 200
    path = tmp_path / "export.csv"
    path.write_bytes(export.get_data())
    assert export.get_data().startswith("\ufeff".encode())
    for cell in written_cells(path):
        assert not cell.startswith(FORMULA_START), cell
    pairs, errors = read_pairs_csv(path)
    assert errors == [] and [(p.question, p.answer) for p in pairs] == [(text, text) for text in NASTY]
