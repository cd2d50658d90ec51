"""The worklist as a terminal table: one line per film, fitted to the console's width.

``pneumoscan predict`` prints the ranked worklist rows (:func:`pneumoscan.worklist.worklist_rows`) with
:func:`worklist_view`. Every film is one line, at 80 columns too: the columns no row fills are dropped, the threshold
(the same for every row) goes in the title, paths are shortened from the left (``…/NORMAL/IM-0001-0001.jpeg``: the
file's name is the part a reader needs) and no cell wraps. Wider terminals get more: longer paths, the DICOM context
(patient, view, age, accession), the cause in its full wording, and the reason a film was not assessed (or the error of
a file that could not be read) beside it. A reason or error that does not fit on the film's line is listed in full
under the table, never cut. Markers have a legend line under the table: ``!`` after the score of a film scored with
the unfamiliar-film caution (:data:`~pneumoscan.constants.UNFAMILIAR_CAUTION`), and the cause's caveat when a cause is
shown. The decision is always said in the one wording (:data:`~pneumoscan.constants.DECISION_WORDS`).

The command prints the disclaimer once, after the summary; this table does not repeat it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from pneumoscan.constants import CAUSE_CAVEAT, UNFAMILIAR_CAUTION

__all__ = ["CAUTION_MARK", "WorklistView", "shorten_path", "worklist_view"]

#: The marker of a film scored with the unfamiliar-film caution (its legend line says what it means).
CAUTION_MARK = "!"
#: Columns between two cells (the table's padding collapsed to one space each side, no vertical lines).
GAP = 2
#: The narrowest film column (an ellipsis and a typical file name).
FILM_MIN = 16
#: How wide the film column may be before anything optional is shown: what ``…/NORMAL/IM-0001-0001.jpeg``
#: or ``…/person1186_bacteria_3134.jpeg`` needs.
FILM_COMFORT = 32
#: The narrowest note column worth showing beside the films (narrower: the notes are listed under the table).
NOTE_MIN = 24
#: The DICOM context shown when the terminal has room, in order of priority: (row key, header).
CONTEXT = (("patient_id", "patient"), ("view", "view"), ("age", "age"), ("accession", "accession"))
#: Short forms of the cause, for a narrow terminal (the legend gives the full wording).
CAUSE_SHORT = {"BACTERIAL": "bacterial", "VIRAL": "viral"}
#: What a wider terminal shows first, once the film column has :data:`FILM_COMFORT` (the notes come before these).
UPGRADE_ORDER = ("patient_id", "cause", "view", "age", "accession")

_ELLIPSIS = "…"


def shorten_path(path: str, width: int) -> str:
    """``path`` in at most ``width`` terminal cells, shortened from the left: the file's name whole with as many of its
    folders as fit, after ``…/`` (``…/NORMAL/IM-0001-0001.jpeg``), or after ``…`` alone; a name longer than that keeps
    its start and its end (``person1186_b…_3134.jpeg``)."""
    if cell_len(path) <= width:
        return path
    if width <= 1:
        return _ELLIPSIS[:width]
    sep = "/" if "/" in path or "\\" not in path else "\\"
    *folders, name = path.split(sep)
    kept = name
    for folder in reversed(folders):
        if cell_len(f"{_ELLIPSIS}{sep}{folder}{sep}{kept}") > width:
            break
        kept = f"{folder}{sep}{kept}"
    for shown in (f"{_ELLIPSIS}{sep}{kept}", f"{_ELLIPSIS}{name}"):  # no folder fits: the name after the ellipsis
        if cell_len(shown) <= width:
            return shown
    # the name alone is too long: its start and its end (a patient's number, the film's number, the extension)
    head, tail = _cells(name, (width - 1) // 2), _cells(name[::-1], width - 1 - (width - 1) // 2)[::-1]
    return f"{head}{_ELLIPSIS}{tail}"


def _cells(text: str, width: int) -> str:
    """The longest start of ``text`` that fits in ``width`` terminal cells."""
    out = ""
    for char in text:
        if cell_len(out + char) > width:
            break
        out += char
    return out


@dataclass
class _Row:
    rank: str
    path: str
    context: dict[str, str]
    score: str
    caution: bool
    decision: str
    style: str
    cause: str
    cause_text: str
    note: str


def _row(r: dict[str, Any]) -> _Row:
    read = r.get("probability") is not None
    refused = r.get("in_scope") is False
    if not read:
        score, style = "", "yellow"
    elif refused:  # its probability is kept in the files for audit, never shown as a risk
        score, style = "–", "yellow"
    else:
        score, style = ("" if r.get("score") is None else f"{r['score']:.1f}"), ("bold red" if r.get("positive") else "")
    note = "; ".join(s for s in ((r.get("scope_reason") or "") if refused else "", r.get("error") or "") if s)
    return _Row(rank="" if r.get("rank") is None else str(r["rank"]), path=str(r.get("path", "")),
                context={k: str(r.get(k) or "") for k, _ in CONTEXT}, score=score,
                caution=read and not refused and bool(r.get("scope_caution")), decision=str(r["decision_text"]),
                style=style, cause=CAUSE_SHORT.get(r.get("cause") or "", ""), cause_text=r.get("cause_text") or "",
                note=note)


def _width(values: Sequence[str], header: str) -> int:
    return max([cell_len(header), *(cell_len(v) for v in values)])


@dataclass
class WorklistView:
    """The worklist as it is printed: a ``title`` line, the ``table`` (one line per film), ``details`` (the reasons
    and errors that did not fit on their film's line, as ``(film as shown, note)``) and ``legend`` (one line per
    marker in use)."""

    title: str
    table: Table
    details: list[tuple[str, str]] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)

    def renderable(self) -> Group:
        """The title, the table, the details under a heading, then the legend lines."""
        parts: list[Any] = [Text(self.title, style="italic"), self.table]
        if self.details:  # the film on the left, its note wrapped beside it (a hanging indent)
            why = Table.grid(padding=(0, 1))
            why.add_column(no_wrap=True)
            why.add_column(overflow="fold")
            for film, note in self.details:
                why.add_row(Text(film, style="bold"), note)
            parts += [Text("Why not assessed, or not read:"), Padding(why, (0, 0, 0, 2))]
        parts += [Text(line, style="dim") for line in self.legend]
        return Group(*parts)


def worklist_view(rows: Sequence[dict[str, Any]], width: int) -> WorklistView:
    """The ranked worklist ``rows`` (:func:`pneumoscan.worklist.worklist_rows`) fitted to ``width`` terminal columns:
    see the module docstring."""
    items = [_row(r) for r in rows]
    threshold = next((r.get("score_threshold") for r in rows if r.get("score_threshold") is not None), None)
    rank_w = _width([i.rank for i in items], "#")
    any_caution = any(i.caution for i in items)
    slot = 1 if any_caution else 0  # the caution mark sits right of the score: the digits stay aligned
    score_w = _width([i.score + " " * (slot if i.score else 0) for i in items], "score")
    decision_w = _width([i.decision for i in items], "decision")
    any_cause = any(i.cause for i in items)
    cause_short_w = _width([i.cause for i in items], "cause")
    cause_full_w = _width([i.cause_text for i in items], "cause")
    film_need = _width([i.path for i in items], "film")
    notes = [i.note for i in items if i.note]
    note_need = _width(notes, "note") if notes else 0

    fixed = [rank_w, score_w, decision_w] + ([cause_short_w] if any_cause else [])
    room = width - sum(fixed) - GAP * len(fixed)  # what the film column may take (a gap for each other column)
    keep = min(film_need, FILM_COMFORT)
    note_w = 0
    if notes and room - NOTE_MIN - GAP >= keep:  # a third of the room at most: the films come first
        note_w = min(note_need, max(NOTE_MIN, (room - GAP) // 3))
        room -= note_w + GAP
    shown_context: list[tuple[str, str, int]] = []
    cause_w = cause_short_w
    upgrades = [(key, header, _width([i.context[key] for i in items], header)) for key, header in CONTEXT
                if any(i.context[key] for i in items)]
    if any_cause:  # the cause in full wording comes after the patient, before the rest of the context
        upgrades.append(("cause", "cause", cause_full_w))
    upgrades.sort(key=lambda u: UPGRADE_ORDER.index(u[0]))
    for key, header, w in upgrades:
        extra = w - cause_short_w if key == "cause" else w + GAP
        if room - extra < keep:
            continue
        room -= extra
        if key == "cause":
            cause_w = w
        else:
            shown_context.append((key, header, w))
    shown_context.sort(key=lambda c: [k for k, _ in CONTEXT].index(c[0]))
    film_w = max(min(film_need, room), FILM_MIN)

    title = "Triage worklist, highest score first"
    if threshold is not None:
        title += f" (score 0-100, flagged at {threshold:.1f} or above)"
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True, padding=(0, 1))

    def column(header: str, w: int, justify: str = "left") -> None:
        table.add_column(header, justify=justify, width=w, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]

    column("#", rank_w, "right")
    column("film", film_w)
    for _, header, w in shown_context:
        column(header, w)
    column("score", score_w, "right")
    column("decision", decision_w)
    if any_cause:
        column("cause", cause_w)
    if note_w:
        column("note", note_w)

    details: list[tuple[str, str]] = []
    for i in items:
        film = shorten_path(i.path, film_w)
        cells: list[Text] = [Text(i.rank), Text(film)]
        cells += [Text(i.context[key]) for key, _, _ in shown_context]
        mark = (CAUTION_MARK if i.caution else " ") if slot and i.score else ""
        cells.append(Text.assemble(i.score, (mark, "bold yellow")))
        cells.append(Text(i.decision, style=i.style))
        if any_cause:
            cells.append(Text(i.cause_text if cause_w >= cause_full_w else i.cause))
        if note_w:
            cells.append(Text(i.note))
        if i.note and cell_len(i.note) > note_w:  # the name again, shortened from the left like the table's
            details.append((shorten_path(i.path, min(film_w, FILM_COMFORT)), i.note))
        table.add_row(*cells)

    legend = []
    if any_caution:
        legend.append(f"{CAUTION_MARK} {UNFAMILIAR_CAUTION}.")
    if any_cause:
        legend.append(f"cause (of a flagged film): the pattern more like bacterial or viral. {CAUSE_CAVEAT}")
    return WorklistView(title=title, table=table, details=details, legend=legend)
