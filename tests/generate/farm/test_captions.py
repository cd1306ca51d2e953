import json

import pytest

pa = pytest.importorskip("pyarrow", reason="parquet caption files need pyarrow: pip install 'stablerep_fast[generate]'")
pq = pytest.importorskip("pyarrow.parquet")

from stablerep_fast.generate import GenerateError, read_captions  # noqa: E402

CAPTIONS = ["a red star", "two  dogs,\tplaying", "a red star", "a café"]
CLEAN = ["a red star", "two dogs, playing", "a red star", "a café"]


def _write_all(tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(["", CAPTIONS[0], "  ", *CAPTIONS[1:], ""]), encoding="utf-8")
    (tmp_path / "c.csv").write_text(
        "id,caption\n" + "".join(f'{i},"{c}"\n' for i, c in enumerate(CAPTIONS)) + "9,\n", encoding="utf-8"
    )
    (tmp_path / "c.tsv").write_text("text\n" + "".join(f"{c.replace(chr(9), ' ')}\n" for c in CAPTIONS), encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"url": "x", "caption": c}) + "\n" for c in CAPTIONS))
    pq.write_table(pa.table({"prompt": CAPTIONS, "n": list(range(4))}), tmp_path / "c.parquet")
    return ["c.txt", "c.csv", "c.tsv", "c.jsonl", "c.parquet"]


def test_every_format_gives_the_same_captions(tmp_path):
    results = [read_captions(tmp_path / name) for name in _write_all(tmp_path)]
    for captions in results:
        assert captions.texts == CLEAN
        assert captions.duplicates == 1
        assert captions.sha256 == results[0].sha256
    assert [c.blanks for c in results] == [2, 1, 0, 0, 0]  # txt: two blank lines; csv: one empty field


def test_jsonl_of_strings_and_named_column(tmp_path):
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CAPTIONS))
    assert read_captions(tmp_path / "s.jsonl").texts == CLEAN
    (tmp_path / "t.csv").write_text("a,b\nx,y\n")
    assert read_captions(tmp_path / "t.csv", column="b").texts == ["y"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "\n \n", "holds no caption"),
        ("missing.txt", None, "cannot read"),
        ("c.doc", "x", "unknown type"),
        ("two.csv", "a,b\nx,y\n", "no caption column"),
        ("bad.jsonl", "{not json\n", "line 1: not JSON"),
        ("bin.txt", b"\xff\xfe\x00", "cannot read"),
    ],
)
def test_bad_caption_files(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(GenerateError, match=message):
        read_captions(path)


def test_null_and_blank_captions_are_counted(tmp_path):
    pq.write_table(pa.table({"caption": ["a", None, "b", "  ", None]}), tmp_path / "n.parquet")
    captions = read_captions(tmp_path / "n.parquet")
    assert captions.texts == ["a", "b"] and captions.blanks == 3
    (tmp_path / "n.jsonl").write_text('{"caption": "a"}\n{"caption": null}\n\n{"caption": "b"}\n')
    assert read_captions(tmp_path / "n.jsonl").blanks == 1


def test_a_bad_jsonl_line_is_named(tmp_path):
    lines = [json.dumps({"caption": c}) for c in "abc"] + ['{"caption": "d",,}']
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(GenerateError, match="c.jsonl, line 4: not JSON"):
        read_captions(tmp_path / "c.jsonl")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("list.jsonl", '{"caption": "a"}\n\n{"caption": ["a", "b"]}\n', r"list.jsonl, line 3: the caption is list \"\['a', 'b'\]\""),
        ("number.jsonl", '"a"\n42\n', "number.jsonl, line 2: the caption is int '42', not text"),
        ("flag.jsonl", '{"text": true}\n', "flag.jsonl, line 1: the caption is bool"),
        ("open.csv", 'caption\na red star\n"a blue circle\na green square\n', "open.csv, line 3: broken quoting"),
        ("closed_late.csv", 'id,caption\n1,"a red star\n2,a blue circle"x\n3,c\n', "closed_late.csv, line 2: broken quoting"),
        ("open.tsv", 'n\tcaption\n1\ta\n2\t"b\n3\tc\n', "open.tsv, line 3: broken quoting"),
        ("comma.csv", "caption\na red star\na big, blue circle\n", "comma.csv, line 3: 2 fields, the header has 1; quote captions"),
    ],
)
def test_captions_that_are_not_text_or_rows_that_run_together_are_refused_by_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GenerateError, match=message):
        read_captions(path)


def test_a_parquet_column_of_numbers_is_refused_by_row(tmp_path):
    pq.write_table(pa.table({"caption": ["a", None, "b"]}), tmp_path / "ok.parquet")
    assert read_captions(tmp_path / "ok.parquet").texts == ["a", "b"]
    pq.write_table(pa.table({"caption": [1.5, None, 2.0]}), tmp_path / "n.parquet")
    with pytest.raises(GenerateError, match="n.parquet, row 1 of column 'caption': the caption is float '1.5'"):
        read_captions(tmp_path / "n.parquet")


def test_a_byte_order_mark_is_not_part_of_the_first_caption(tmp_path):
    """Files saved by Windows editors start with U+FEFF; every reader drops it, so the captions
    (and their hash, recorded in dataset.json) are those of the same file without it."""
    for name in _write_all(tmp_path):
        path = tmp_path / name
        if path.suffix == ".parquet":
            continue
        plain = read_captions(path)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        marked = read_captions(path)
        assert marked.texts == plain.texts == CLEAN and marked.sha256 == plain.sha256, name
