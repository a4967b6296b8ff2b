"""Docs sections written by the benchmark and recipe commands: one pair of markers per section,
rewritten in place however often a command runs, other sections kept."""

from __future__ import annotations

from research.sections import markers, replace_section


def test_a_section_is_rewritten_in_place_with_one_pair_of_markers(tmp_path):
    page = tmp_path / "page.md"
    start, end = markers("wsi")
    other = "<!-- other:start -->\nkept\n<!-- other:end -->"
    replace_section(page, "first", (start, end), "# Title")
    page.write_text(page.read_text() + "\n" + other + "\n")
    # A generator that writes the markers itself, run three times: still one pair.
    for k in range(3):
        replace_section(page, f"{start}\ntable {k}\n{end}", (start, end))
    text = page.read_text()
    assert text.count(start) == 1 and text.count(end) == 1
    assert "table 2" in text and "table 1" not in text and "first" not in text
    assert other in text and text.startswith("# Title")


def test_duplicated_markers_left_by_an_older_writer_are_collapsed(tmp_path):
    page = tmp_path / "page.md"
    start, end = markers("csv-export")
    page.write_text(f"# T\n\n{start}\n{start}\nold\n{end}\n{end}\n{end}\n\nafter\n")
    replace_section(page, "new", (start, end))
    text = page.read_text()
    assert text == f"# T\n\n{start}\nnew\n{end}\n\nafter\n"
