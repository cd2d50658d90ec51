"""The worklist table of ``pneumoscan predict`` (:mod:`pneumoscan.cli.table`): one line per film at 80 columns, the
space used at 120, markers with their legend, nothing a reader needs cut away."""

from __future__ import annotations

import io

import pytest
from resultfactory import scored, unread
from rich.cells import cell_len
from rich.console import Console

from pneumoscan.cli.table import CAUTION_MARK, shorten_path, worklist_view
from pneumoscan.constants import CAUSE_CAVEAT, DECISION_WORDS, NOT_READ_WORDS, UNFAMILIAR_CAUTION
from pneumoscan.io import ImageContext
from pneumoscan.result import ModelIdentity, Result
from pneumoscan.worklist import worklist_rows

MODEL = ModelIdentity("efficientnet-lite0", "0123456789ab", 0.442, cause_threshold=0.5,
                      calibration="calibrated on the training hospital's validation films")
SITE = "/srv/pacs-export/site-a/2026-11/ward-3/night-shift"
LONG_REASON = ("not a pediatric frontal chest radiograph like the training films (its features lie beyond those of "
               "99.9% of the training films)")
LONG_ERROR = (f"not an image this software can read: cannot identify image file '{SITE}/scans/IMG_0001' (the content "
              "looks like text). Supported: JPEG, PNG, DICOM, BMP or TIFF")


def _film(name: str, p: float, **kwargs) -> Result:
    return Result.scored(f"{SITE}/{name}", p, MODEL, **kwargs)


def _mix() -> list[Result]:
    """A realistic batch: flagged (both causes), borderline either side of the threshold, not flagged, films scored
    with the caution, not assessed (a short and a long reason), unreadable (a long error), long nested paths."""
    return [
        _film("PNEUMONIA/person1186_bacteria_3134.jpeg", 0.97, cause_probability=0.1),
        _film("PNEUMONIA/person1180_virus_2010.jpeg", 0.81, cause_probability=0.9, scope_caution=UNFAMILIAR_CAUTION),
        _film("borderline/person23_bacteria_78.jpeg", 0.445, cause_probability=0.3),
        _film("borderline/IM-0214-0001.jpeg", 0.433),
        _film("NORMAL/NORMAL2-IM-0851-0001-0002.jpeg", 0.02),
        _film("NORMAL/IM-0282-0001.jpeg", 0.11, scope_caution=UNFAMILIAR_CAUTION),
        _film("a/very/deeply/nested/folder/of/the/archive/study-1.2.840.113619.2.55.3/IM-0001.dcm", 0.30),
        _film("other/hand.png", 0.6, in_scope=False, scope_reason="blank or uniform image"),
        _film("other/lateral.dcm", 0.2, in_scope=False, scope_reason=LONG_REASON),
        Result.unread(f"{SITE}/scans/IMG_0001", LONG_ERROR, MODEL),
        Result.unread(f"{SITE}/scans/{'x' * 120}.png", "file not found", MODEL),
    ]


def _render(view, width: int) -> tuple[list[str], str]:
    """The table's lines (header, rule, rows), and the whole view as text, at ``width`` columns."""
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(view.table)
    table = console.export_text().splitlines()
    console.print(view.renderable())
    return table, console.export_text()


def _body(lines: list[str]) -> list[str]:
    """The table's row lines: everything under the header's rule."""
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    return lines[rule + 1:]


@pytest.mark.parametrize("width", [80, 120])
def test_one_line_per_film_that_fits_the_terminal(width):
    rows = worklist_rows(_mix())
    lines, whole = _render(worklist_view(rows, width), width)
    assert all(cell_len(line) <= width for line in whole.splitlines()), whole
    body = _body(lines)
    assert len(body) == len(rows), "\n".join(lines)
    assert len(lines) == len(rows) + 2  # the header, its rule, a line per film
    for row, line in zip(rows, body):
        assert row["decision_text"] in line  # the decision in the one wording, never cut
        assert line.split()[0] == str(row["rank"]) if row["rank"] is not None else line.startswith(" ")
        if row["positive"] or row["decision"] == "NORMAL":
            assert f"{row['score']:.1f}" in line
    assert [line for line in body if DECISION_WORDS["OUT_OF_SCOPE"] in line][0].split()[1] == "–"  # not a risk
    # the threshold, the same for every row, is in the title (one line) rather than in a column
    assert whole.splitlines()[0].startswith("Triage worklist") and "flagged at 44.2 or above" in whole.splitlines()[0]
    assert "threshold" not in lines[0]
    # the file's name is what a shortened path keeps (its middle, when the name alone is too long)
    assert "/NORMAL/IM-0282-0001.jpeg" in whole and "person1186_b" in body[0] and "3134.jpeg" in body[0]


def test_at_80_columns_paths_are_shortened_from_the_left_and_long_notes_go_under_the_table():
    rows = worklist_rows(_mix())
    lines, whole = _render(worklist_view(rows, 80), 80)
    body = _body(lines)
    flagged = body[0]
    assert "person1186_b" in flagged and "3134.jpeg" in flagged and SITE not in flagged
    assert "…/person1180_virus_2010.jpeg" in body[1]
    flat, solid = " ".join(whole.split()), "".join(whole.split())
    assert LONG_REASON in flat and "".join(LONG_ERROR.split()) in solid  # in full, under the table
    assert "Why not assessed, or not read:" in whole
    assert "blank or uniform image" in flat and "file not found" in flat


def test_markers_have_a_legend_and_mark_only_their_films():
    rows = worklist_rows(_mix())
    view = worklist_view(rows, 80)
    lines, whole = _render(view, 80)
    body = _body(lines)
    assert lines[0].split() == ["#", "film", "score", "decision", "cause"]
    marked = [row["path"] for row, line in zip(rows, body) if f".0{CAUTION_MARK} " in line]  # right of the score
    assert marked == [r["path"] for r in rows if r["scope_caution"]] and len(marked) == 2
    flat = " ".join(whole.split())
    assert f"{CAUTION_MARK} {UNFAMILIAR_CAUTION}" in flat and CAUSE_CAVEAT in flat
    causes = {row["path"].rsplit("/", 1)[1]: line.split()[-1] for row, line in zip(rows, body) if row["cause"]}
    assert causes == {"person1186_bacteria_3134.jpeg": "bacterial", "person1180_virus_2010.jpeg": "viral",
                      "person23_bacteria_78.jpeg": "bacterial"}


def test_at_120_columns_the_space_shows_more():
    rows = worklist_rows(_mix())
    lines80, _ = _render(worklist_view(rows, 80), 80)
    lines, whole = _render(worklist_view(rows, 120), 120)
    body, body80 = _body(lines), _body(lines80)
    header = lines[0].split()
    assert "note" in header  # the reasons that fit sit beside their film
    blank = next(line for line in body if "hand.png" in line)
    assert blank.rstrip().endswith("blank or uniform image")
    assert sum(len(line.rstrip()) for line in body) > sum(len(line.rstrip()) for line in body80)
    assert any("NORMAL/IM-0282-0001.jpeg" in line for line in body)  # more of the path
    assert max(cell_len(line) for line in lines) > 100
    assert LONG_REASON in " ".join(whole.split())


def test_dicom_context_is_shown_when_there_is_room():
    ctx = ImageContext(patient_id="anon-0123456789abcdef", accession="ACC-20261105-0042", age="004Y", view="AP")
    results = [_film("dicom/1.dcm", 0.7, context=ctx, cause_probability=0.2), _film("dicom/2.dcm", 0.1, context=ctx)]
    rows = worklist_rows(results)
    lines80, _ = _render(worklist_view(rows, 80), 80)
    lines120, _ = _render(worklist_view(rows, 120), 120)
    lines160, _ = _render(worklist_view(rows, 160), 160)
    assert "patient" not in lines80[0] and len(_body(lines80)) == 2
    assert "patient" in lines120[0] and "anon-0123456789abcdef" in _body(lines120)[0]
    assert all(h in lines160[0].split() for h in ("patient", "view", "age", "accession"))
    assert "pattern more like bacterial" in _body(lines160)[0]  # and the cause in its full wording
    assert all(cell_len(line) <= w for lines, w in ((lines80, 80), (lines120, 120), (lines160, 160))
               for line in lines)


def test_empty_columns_are_dropped():
    rows = worklist_rows([scored("/x/a.png", 0.9), scored("/x/b.png", 0.1)])  # no cause, caution, note, context
    lines, _ = _render(worklist_view(rows, 80), 80)
    assert lines[0].split() == ["#", "film", "score", "decision"]
    assert [line.split() for line in _body(lines)] == [["1", "/x/a.png", "90.0", *DECISION_WORDS["PNEUMONIA"].split()],
                                                       ["2", "/x/b.png", "10.0", *DECISION_WORDS["NORMAL"].split()]]
    only_unread = worklist_rows([unread("/x/c.png", "file not found")])
    lines, whole = _render(worklist_view(only_unread, 80), 80)
    assert NOT_READ_WORDS in _body(lines)[0] and "file not found" in whole


def test_a_narrow_terminal_still_keeps_one_line_per_film():
    rows = worklist_rows(_mix())
    lines, _ = _render(worklist_view(rows, 60), 60)
    assert len(_body(lines)) == len(rows) and all(cell_len(line) <= 60 for line in lines)


@pytest.mark.parametrize(("path", "width", "shown"), [
    ("/data/NORMAL/IM-0001-0001.jpeg", 40, "/data/NORMAL/IM-0001-0001.jpeg"),
    ("/data/site/NORMAL/IM-0001-0001.jpeg", 26, "…/NORMAL/IM-0001-0001.jpeg"),
    ("/data/site/NORMAL/IM-0001-0001.jpeg", 25, "…/IM-0001-0001.jpeg"),
    ("/data/site/NORMAL/IM-0001-0001.jpeg", 18, "…IM-0001-0001.jpeg"),
    ("/data/site/NORMAL/IM-0001-0001.jpeg", 12, "IM-00…1.jpeg"),  # the name alone is too long: both ends
    ("C:\\films\\NORMAL\\IM-0001.png", 20, "…\\NORMAL\\IM-0001.png"),
    ("relative/a.png", 1, "…"),
])
def test_shorten_path_keeps_the_file_name(path, width, shown):
    assert shorten_path(path, width) == shown
    assert cell_len(shorten_path(path, width)) <= width
