"""Shortened text in messages and tables: the limit is exact and the cut is marked."""

from __future__ import annotations

from rpq.text import clip, one_line


def test_clip_keeps_text_that_fits_and_marks_a_cut() -> None:
    assert clip("abcde", 5) == "abcde"
    assert clip("abcdef", 5) == "abcd…"
    assert len(clip("x" * 1000, 200)) == 200


def test_one_line_folds_white_space_before_clipping() -> None:
    assert one_line("  Traceback:\n\tline 1\r\n  boom  ", 100) == "Traceback: line 1 boom"
    assert one_line("a\n\n\nb c d e f", 6) == "a b c…"
