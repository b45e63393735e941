"""Question-answer pairs as CSV files: the one reader and the one writer.

No Flask and no database here: the trainer reads its CSV with this module
alone.  Pairs from the database are in ``chatbot.pairs``.

The format is that of ChatbotData: ``Q,A[,label]``, UTF-8 with or without
a BOM, an optional header row, CRLF or LF line ends, quoted fields.

Formula injection: the admin exports what chat users typed, for reviewers to
open in a spreadsheet, where a cell starting with ``= + - @``, a tab or a
carriage return is run as a formula.  The writer puts a ``'`` before such a
cell (OWASP's advice), and the reader takes it off again; see
``write_pairs_csv`` for the exact rule.
"""
import csv
import io
from dataclasses import dataclass
from pathlib import Path

HEADER = ("Q", "A", "label")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"
_ESCAPED_START = FORMULA_START + (QUOTE,)


class PairsFileError(Exception):
    """The whole file cannot be read: nothing from it may be used."""


@dataclass
class Pair:
    question: str
    answer: str
    label: int | None = None


def escape_cell(text: str) -> str:
    """``text`` with a ``'`` in front if it starts with a formula character or a ``'``."""
    return QUOTE + text if text.startswith(_ESCAPED_START) else text


def unescape_cell(cell: str) -> str:
    """Undo escape_cell: drop a ``'`` that is followed by a formula character or a ``'``."""
    return cell[1:] if cell.startswith(QUOTE) and cell[1:].startswith(_ESCAPED_START) else cell


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
            question, answer = unescape_cell(row[0].strip()), unescape_cell(row[1].strip())
            if not question or not answer:
                errors.append((line, "empty question or answer"))
                continue
            if max_chars and (len(question) > max_chars or len(answer) > max_chars):
                errors.append((line, f"longer than {max_chars} characters"))
                continue
            label = None
            if len(row) == 3 and row[2].strip():
                try:
                    label = int(unescape_cell(row[2].strip()))
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
    Korean as UTF-8), the Q,A,label header, CRLF line ends (RFC 4180; with
    LF ends Python's csv module leaves a cell holding a lone CR unquoted, and
    that CR splits the row).  Returns the number of pairs written.

    No cell starts a formula: one that starts with ``= + - @ \\t \\r`` gets
    a ``'`` in front, and so does one that already starts with ``'``.  The
    reader drops a leading ``'`` only when a formula character or another
    ``'`` follows it, so every cell reads back as exactly the text written
    (``'=x`` is written ``''=x``, ``'quoted`` is written ``''quoted``), and a
    hand-made file's ``'quoted`` or lone ``'`` stays as it is.  The reader
    strips unquoted whitespace around a cell (the quote keeps a leading tab
    or CR); the texts the app stores are stripped already.
    """
    writer = csv.writer(out, lineterminator="\r\n")
    out.write("\ufeff")
    writer.writerow(HEADER)
    count = 0
    for pair in pairs:
        label = "" if pair.label is None else str(pair.label)
        writer.writerow([escape_cell(pair.question), escape_cell(pair.answer), escape_cell(label)])
        count += 1
    return count
