"""Caption files: .txt (one per line), .csv/.tsv and .parquet (a caption column), .jsonl.

Blank and null captions are skipped and counted, duplicates are kept and counted; a caption's index is its
position after the blanks are removed. That index names the sample, seeds its noise and is
the label the loader gives its images. Text files may start with a UTF-8 byte-order mark (it is
not part of the first caption); a caption that is not text (a number, a list) and a CSV quote
left open are refused, naming the line.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from stablerep_fast.errors import GenerateError

# Column (or JSON key) names tried, in order, when a file has several and none is named.
CAPTION_COLUMNS = ("caption", "text", "prompt", "title")
SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Captions:
    texts: list[str]
    duplicates: int  # captions equal to an earlier one (kept, each with its own index)
    blanks: int  # blank or null entries of the file, skipped
    sha256: str  # of the captions themselves, so a moved or re-encoded file still matches

    def __len__(self) -> int:
        return len(self.texts)


def read_captions(path: str | Path, column: str | None = None) -> Captions:
    """The captions of ``path``; ``column`` names the caption column of a table (default:
    the only column, else the first of CAPTION_COLUMNS present). Raises GenerateError when the
    file is missing, unreadable, of an unknown type or holds no caption."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise GenerateError(f"captions file {path}: unknown type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        raw = _READERS[path.suffix.lower()](path, column)
    except GenerateError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise GenerateError(f"cannot read captions file {path}: {exc}") from exc
    texts = [" ".join(text.split()) for text in raw if text is not None]
    texts = [text for text in texts if text]
    if not texts:
        raise GenerateError(f"captions file {path} holds no caption")
    duplicates = sum(count - 1 for count in Counter(texts).values())
    sha256 = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    return Captions(texts, duplicates, len(raw) - len(texts), sha256)


def _pick_column(names: list[str], column: str | None, path: Path) -> str:
    if column is not None:
        if column not in names:
            raise GenerateError(f"captions file {path}: no column {column!r} (columns: {names})")
        return column
    if len(names) == 1:
        return names[0]
    for name in CAPTION_COLUMNS:
        if name in names:
            return name
    raise GenerateError(f"captions file {path}: no caption column among {names}; name one of {list(CAPTION_COLUMNS)}")


def _text(value, path: Path, where: str) -> str | None:
    """``value`` if it is a caption (text) or None (a blank); else GenerateError naming ``where``."""
    if value is None or isinstance(value, str):
        return value
    raise GenerateError(f"captions file {path}, {where}: the caption is {type(value).__name__} {str(value)[:40]!r}, "
                        "not text; write captions as strings")  # fmt: skip


def _read_txt(path: Path, column: str | None) -> list[str]:
    return path.read_text(encoding="utf-8-sig").splitlines()


def _read_table(path: Path, column: str | None) -> list[str]:
    tsv = path.suffix.lower() == ".tsv"
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t" if tsv else ",", strict=True)
        names = list(reader.fieldnames or [])
        name = _pick_column(names, column, path)
        texts, line = [], reader.line_num  # a row starts on the line after the previous row's last
        try:
            for row in reader:
                if None in row:  # more fields than the header names
                    raise GenerateError(f"captions file {path}, line {line + 1}: {len(names) + len(row[None])} fields, the "
                                        f"header has {len(names)}; quote captions that hold {'tabs' if tsv else 'commas'}")  # fmt: skip
                texts.append(row[name])
                line = reader.line_num
        except csv.Error as exc:
            raise GenerateError(f"captions file {path}, line {line + 1}: broken quoting ({exc}); close the quote that "
                                "opens there, or double a quote inside a quoted caption (\"\")") from None  # fmt: skip
        return texts


def _read_jsonl(path: Path, column: str | None) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GenerateError(f"captions file {path}, line {number}: not JSON ({exc.msg}, column {exc.colno})") from None
        value = record[_pick_column(list(record), column, path)] if isinstance(record, dict) else record
        texts.append(_text(value, path, f"line {number}"))
    return texts


def _read_parquet(path: Path, column: str | None) -> list[str]:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    name = _pick_column(names, column, path)
    values = pq.read_table(path, columns=[name]).column(name).to_pylist()
    return [_text(value, path, f"row {row} of column {name!r}") for row, value in enumerate(values, start=1)]


_READERS = {
    ".txt": _read_txt,
    ".csv": _read_table,
    ".tsv": _read_table,
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}
