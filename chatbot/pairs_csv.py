"""Question-answer pairs as CSV files: the one reader and the one writer.

No Flask and no database here: the trainer reads its CSV with this module
alone.  Pairs from the database are in ``chatbot.pairs``.

The format is that of ChatbotData: ``Q,A[,label]``, UTF-8 with or without
a BOM, an optional header row, CRLF or LF line ends, quoted fields.
"""
import csv
import io
from dataclasses import dataclass
from pathlib import Path

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


def write_pairs_csv(out, pairs) -> int:
    """Write Pairs to the text stream ``out`` (opened with ``newline=""``).

    Every CSV the app writes comes from here: a BOM (so Excel reads the
    Korean as UTF-8), the Q,A,label header, LF line ends.  Returns the number
    of pairs written.
    """
    writer = csv.writer(out, lineterminator="\n")
    out.write("\ufeff")
    writer.writerow(HEADER)
    count = 0
    for pair in pairs:
        writer.writerow([pair.question, pair.answer, "" if pair.label is None else pair.label])
        count += 1
    return count
