"""Tables for people: one formatter, aligned text or markdown, for the bench and the validation."""

from stablerep_fast.bench import format_table

COLUMNS = ["backend", "ms", "speedup", "error"]  # error: empty in every record, so left out


def test_text_table_is_right_aligned_with_three_digits_and_dashes():
    records = [{"backend": "reference", "ms": 1.23456, "speedup": 1.0}, {"backend": "a", "ms": 12345.6, "error": None}]
    assert format_table(records, COLUMNS).splitlines() == [
        "  backend     ms  speedup",
        "reference   1.23        1",
        "        a  12346        -",
    ]


def test_markdown_table_keeps_each_cell_on_its_line():
    records = [{"backend": "a|b", "ms": 0.5}, {"backend": "two\nlines", "speedup": 2.0}]
    assert format_table(records, COLUMNS, markdown=True).splitlines() == [
        "| backend | ms | speedup |",
        "|---|---|---|",
        "| a/b | 0.5 | - |",
        "| two lines | - | 2 |",
    ]
