"""Question-answer pairs in and out: CSV files and the training set.

The CSV format is that of ChatbotData: ``Q,A[,label]``, UTF-8 with or without
a BOM, an optional header row, CRLF or LF line ends, quoted fields.
"""
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from flask import current_app

from .database import REVIEWED, Exchange
from .extensions import db

HEADER = ("Q", "A", "label")


class PairsFileError(Exception):
    """The whole file cannot be read: nothing from it may be used."""


@dataclass
class Pair:
    question: str
    answer: str
    label: int | None = None


def _is_header(row) -> bool:
    return [c.strip().lower() for c in row[:2]] == ["q", "a"]


def read_pairs_csv(path, max_chars=None):
    """Read a Q,A[,label] CSV.

    Returns ``(pairs, errors)`` where ``errors`` lists ``(line_number, reason)``
    for each bad row, which is skipped.  Raises PairsFileError when the file
    cannot be read at all (missing, not UTF-8, not CSV), so a caller imports
    all of the good rows or nothing.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise PairsFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PairsFileError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV") from exc
    if "\x00" in text:
        raise PairsFileError(f"{path} contains NUL bytes: it is not a CSV text file")

    pairs, errors = [], []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if line == 1 and _is_header(row):
                continue
            if len(row) < 2:
                errors.append((line, "needs at least two columns: Q,A"))
                continue
            if len(row) > 3:
                errors.append((line, f"has {len(row)} columns; expected Q,A or Q,A,label"))
                continue
            question, answer = row[0].strip(), row[1].strip()
            if not question or not answer:
                errors.append((line, "empty question or answer"))
                continue
            if max_chars and (len(question) > max_chars or len(answer) > max_chars):
                errors.append((line, f"longer than {max_chars} characters"))
                continue
            label = None
            if len(row) == 3 and row[2].strip():
                try:
                    label = int(row[2])
                except ValueError:
                    errors.append((line, f"label {row[2]!r} is not a whole number"))
                    continue
            pairs.append(Pair(question, answer, label))
    except csv.Error as exc:
        raise PairsFileError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from exc
    return pairs, errors


def write_pairs_csv(path, pairs):
    """Write pairs as a ChatbotData-style CSV (UTF-8, header, LF)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)
        for pair in pairs:
            writer.writerow([pair.question, pair.answer, "" if pair.label is None else pair.label])


def starter_pairs():
    """The pairs shipped with the project, so a fresh install can talk."""
    pairs, errors = read_pairs_csv(current_app.config["STARTER_PAIRS"])
    if errors:
        line, reason = errors[0]
        raise PairsFileError(f"starter pairs line {line}: {reason}")
    return pairs


def reviewed_pairs():
    """Reviewed exchanges and imported pairs, oldest first, as Pairs."""
    rows = db.session.execute(
        sa.select(Exchange).where(Exchange.status == REVIEWED).order_by(Exchange.id)
    ).scalars()
    return [Pair(row.question, row.final_answer) for row in rows]


def training_pairs():
    """Everything the model learns from: starter plus reviewed pairs.

    Rows marked needs-deletion are never included (their status is not
    reviewed); duplicates are dropped, keeping the first.
    """
    seen, result = set(), []
    for pair in starter_pairs() + reviewed_pairs():
        key = (pair.question, pair.answer)
        if key not in seen:
            seen.add(key)
            result.append(key)
    return result

