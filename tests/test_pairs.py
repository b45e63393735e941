"""CSV import and export of training pairs, and the create-admin command."""
import sqlalchemy as sa

from chatbot.database import NEEDS_DELETION, REVIEWED, ROUTE_IMPORT, Exchange, Reviewer
from chatbot.extensions import db
from chatbot.pairs import training_pairs
from chatbot.pairs_csv import read_pairs_csv
from helpers import SHARED_DATA


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_reads_chatbotdata_format_with_bom_crlf_and_quotes(tmp_path):
    path = write(tmp_path / "p.csv",
                 '\ufeffQ,A,label\r\n안녕,"안녕하세요, 반가워요.",0\r\n"줄이\n두 줄",네,1\r\n'.encode())
    pairs, errors = read_pairs_csv(path)
    assert errors == []
    assert [(p.question, p.answer, p.label) for p in pairs] == [
        ("안녕", "안녕하세요, 반가워요.", 0), ("줄이\n두 줄", "네", 1)]


def test_reads_without_header_or_label(tmp_path):
    pairs, errors = read_pairs_csv(write(tmp_path / "p.csv", "뭐해,그냥 있어요\n".encode()))
    assert errors == [] and [(p.question, p.answer, p.label) for p in pairs] == [("뭐해", "그냥 있어요", None)]


def test_bad_rows_are_reported_with_line_numbers(tmp_path):
    data = "Q,A,label\n좋아,좋아요,0\n한 칸만\n,빈 질문,0\n질문,답,라벨\n너무,많은,칸,이에요\n마지막,정상,2\n"
    pairs, errors = read_pairs_csv(write(tmp_path / "p.csv", data.encode()))
    assert [p.question for p in pairs] == ["좋아", "마지막"]
    assert [line for line, _ in errors] == [3, 4, 5, 6]


def test_cli_import_skips_bad_rows_and_duplicates(app, tmp_path):
    path = write(tmp_path / "p.csv", "Q,A\n안녕,안녕하세요\n없음\n뭐해,쉬고 있어요\n안녕,안녕하세요\n".encode())
    runner = app.test_cli_runner()
    result = runner.invoke(args=["import-pairs", str(path)])
    assert result.exit_code == 0, result.output
    assert "line 3: skipped" in result.output
    assert "imported 2 pairs" in result.output
    again = runner.invoke(args=["import-pairs", str(path)])
    assert "imported 0 pairs" in again.output
    with app.app_context():
        rows = db.session.execute(sa.select(Exchange)).scalars().all()
        assert len(rows) == 2
        assert all(r.status == REVIEWED and r.route == ROUTE_IMPORT for r in rows)


def test_cli_import_of_unreadable_file_imports_nothing(app, tmp_path):
    runner = app.test_cli_runner()
    latin1 = write(tmp_path / "bad.csv", "Q,A\n안녕,안녕하세요\n".encode("utf-16"))
    for path in (latin1, tmp_path / "missing.csv"):
        result = runner.invoke(args=["import-pairs", str(path)])
        assert result.exit_code != 0
        assert "nothing was imported" in result.output
    with app.app_context():
        assert db.session.execute(sa.select(sa.func.count(Exchange.id))).scalar() == 0


def test_cli_import_real_chatbotdata(app, tmp_path):
    lines = SHARED_DATA.read_text(encoding="utf-8").splitlines()[:201]
    path = write(tmp_path / "part.csv", ("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["import-pairs", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output == f"imported 200 pairs from {path}; 0 bad rows skipped; 0 already present\n"
    again = runner.invoke(args=["import-pairs", str(path)])
    assert again.output == f"imported 0 pairs from {path}; 0 bad rows skipped; 200 already present\n"
    with app.app_context():
        assert db.session.execute(sa.select(sa.func.count(Exchange.id))).scalar() == 200


def test_export_writes_reviewed_pairs_with_corrections(app, tmp_path):
    with app.app_context():
        db.session.add_all([
            Exchange(question="안녕", question_key="안녕", answer="틀린 답", corrected_answer="안녕하세요!",
                     status=REVIEWED),
            Exchange(question="지워", question_key="지우", answer="나쁜 답", status=NEEDS_DELETION),
            Exchange(question="아직", question_key="아직", answer="미검토"),
        ])
        db.session.commit()
    out = tmp_path / "out.csv"
    result = app.test_cli_runner().invoke(args=["export-pairs", str(out)])
    assert result.exit_code == 0, result.output
    pairs, errors = read_pairs_csv(out)
    assert errors == [] and [(p.question, p.answer) for p in pairs] == [("안녕", "안녕하세요!")]


def test_training_pairs_are_starter_plus_reviewed_without_deleted(app):
    with app.app_context():
        starter = training_pairs()
        assert len(starter) >= 300
        db.session.add_all([
            Exchange(question="새 질문", question_key="새 질문", answer="새 답", status=REVIEWED),
            Exchange(question="나쁜 질문", question_key="나쁜 질문", answer="나쁜 답", status=NEEDS_DELETION),
        ])
        db.session.commit()
        pairs = training_pairs()
    assert ("새 질문", "새 답") in pairs
    assert not any(q == "나쁜 질문" for q, _ in pairs)
    assert len(pairs) == len(starter) + 1


def test_create_admin_from_environment(app, monkeypatch):
    monkeypatch.setenv("CHATBOT_ADMIN_PASSWORD", "a long enough password")
    result = app.test_cli_runner().invoke(args=["create-admin", "minji"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        reviewer = db.session.execute(sa.select(Reviewer).filter_by(username="minji")).scalar_one()
        assert reviewer.password_hash != "a long enough password"
        assert reviewer.check_password("a long enough password")


def test_create_admin_prompts_and_rejects_short_passwords(app, monkeypatch):
    monkeypatch.delenv("CHATBOT_ADMIN_PASSWORD", raising=False)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-admin", "minji"], input="short\nshort\n")
    assert result.exit_code != 0 and "at least 8" in result.output
    result = runner.invoke(args=["create-admin", "minji"], input="secret-password\nsecret-password\n")
    assert result.exit_code == 0, result.output
