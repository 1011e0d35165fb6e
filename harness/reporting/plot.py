"""One run's timeline as a PNG: the tm counters, shm, and the scenario steps.

`render_timeline(run, path)` takes a run record (`Verdict.to_json()` plus
`stats_samples`) and draws what a person needs to *see* the leak: after the BYE,
`current` and `created - freed` stay flat at 1 until the deadline (leak) or fall
back to 0 (clean).  The watched cell has a lane of its own under the counters
(among a dozen live transactions its 1 is easily missed there).  An early
verdict marks when the orphan was proven and where the lifetime bound would have
ended, past the data when the watch stopped early.  Step labels never overlap:
neighbours share one when the strip cannot hold them all.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

# Figure geometry: fixed so the label layout can work in pixels.
_W_IN, _H_IN, _DPI = 10.0, 6.0, 100
_LEFT, _RIGHT = 0.075, 0.975
_STRIP_BOTTOM = 0.575        # the step-label strip; its top follows the subtitle
_COUNTS = (0.305, 0.565)     # the tm counters panel
_SHM = (0.085, 0.255)        # the shm panel
# With a watched cell: its own lane between the two, so one leaked cell among
# many live transactions is seen at a glance (the counters draw it as a 1 among 12).
_COUNTS_L, _LANE, _SHM_L = (0.345, 0.565), (0.268, 0.322), (0.085, 0.238)
_SUB_TOP, _SUB_FONT = 0.942, 8.5

_COLOURS = {"leak": "#c0392b", "clean": "#1e8449"}
_OTHER = "#7f6000"
_LABEL_FONT = 7
_LABEL_GAP = 2.5             # pixels between two step labels
_MERGE_WITHIN = 0.05         # steps closer than this share a label (if it stays short)
_MERGED_MAX = 24             # ... and the merged text is at most this long
_MARK_ROW = 0.78             # the orphan and bound labels: below the legend, above the data
_LEGEND = dict(fontsize=8, ncol=3, frameon=True, framealpha=0.9)
_BOUND_SPAN_MAX = 8.0        # draw the bound on the axis while it stretches it at most this much


@dataclass(frozen=True)
class PlotHints:
    """What a story's plot names that tm's default does not: the count panel's
    label and series (a story without tm counters names its own, and then has
    no `created - freed`), and the shm panel's label.  Kept by the story
    (its PLOT_HINTS), handed to the renderer beside the verdict."""

    counts_label: str = "transactions"
    count_names: tuple[tuple[str, str], ...] = ()     # (("current", "ws_current_connections"), ...)
    shm_label: str = "shm used (KiB)"


def _num(v, default=0.0) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _samples(run: dict) -> list[dict]:
    out = []
    for s in run.get("stats_samples") or []:
        if isinstance(s, dict) and "t" in s:
            out.append(s)
    out.sort(key=lambda s: _num(s.get("t")))
    return out


def _steps(run: dict) -> list[tuple[float, str]]:
    out = []
    for step in run.get("timeline") or []:
        try:
            t, text = step[0], step[1]
        except (TypeError, IndexError, KeyError):
            continue
        out.append((_num(t), str(text)))
    out.sort(key=lambda s: s[0])
    return out


def _bye_and_deadline(run: dict, steps: list[tuple[float, str]]) -> tuple[float | None, float | None]:
    """When the watched request went out, and when the watch window ends."""
    method = str(run.get("method") or "BYE")
    start = None
    for t, text in steps:
        if re.match(rf"\s*{re.escape(method)}\b", text, re.I) and "cell" not in text.lower():
            start = t
            break
    end = None
    for t, text in steps:
        if text.lower().startswith("deadline"):
            end = t
    deadline = run.get("deadline")
    if start is None and end is not None and deadline is not None:
        start = end - _num(deadline)
    if end is None and start is not None and deadline is not None:
        end = start + _num(deadline)
    return start, end


@dataclass(frozen=True)
class Marks:
    """The early verdict on the plot's clock (seconds since the scenario started)."""

    proof: float | None = None       # the orphan proven
    rule: str = ""                   # how: "count" | "time"
    watch_end: float | None = None   # the last look at tm.list
    bound: float | None = None       # where the lifetime bound ends
    deadline: float | None = None    # the bound, seconds after the request
    waited_out: bool = True          # the watch ran to the bound (no proof, or --confirm)

    @property
    def orphan_label(self) -> str:
        return f"orphan proven ({self.rule})" if self.proof is not None else ""

    @property
    def bound_label(self) -> str:
        if self.deadline is None:
            return ""
        how = "" if self.proof is None else " (waited out, agrees)" if self.waited_out \
            else " (not waited out)"
        return f"bound: {self.deadline:.1f} s{how}"


def early_marks(run: dict) -> Marks:
    """Where the orphan proof, the watch's end and the bound fall on the timeline."""
    bye, end = _bye_and_deadline(run, _steps(run))
    orphan = run.get("orphan") if isinstance(run.get("orphan"), dict) else None
    at = _num(orphan.get("at"), None) if orphan else None
    watched = _num(run.get("watched_for"), None)
    proof = bye + at if bye is not None and at is not None else None
    return Marks(proof=proof, rule=str(orphan.get("rule") or "") if orphan else "",
                 watch_end=bye + watched if bye is not None and watched is not None else None,
                 bound=end, deadline=_num(run.get("deadline"), None),
                 waited_out=proof is None or bool(run.get("confirmed")))


@dataclass(frozen=True)
class CellLane:
    """The watched request's cell on the scenario's clock: when tm.list held it."""

    spans: tuple[tuple[float, float], ...]
    still_there: bool                # in tm.list at the watch's last look
    label: str


def cell_lane(run: dict, bye: float | None) -> CellLane | None:
    """From the oracle's tm.list samples ({"t": s after the request, "cells": n}, one at
    each change), else from seen / gone_after / watched_for; None for a memory verdict
    or a cell never seen."""
    if run.get("kind") == "memory" or bye is None or not (run.get("seen") or run.get("cells")):
        return None
    method = str(run.get("method") or "BYE")
    samples = sorted((s for s in run.get("samples") or [] if isinstance(s, dict) and "t" in s),
                     key=lambda s: _num(s["t"]))
    spans, start = [], None
    for s in samples:
        t, held = bye + _num(s["t"]), _num(s.get("cells")) > 0
        if held and start is None:
            start = t
        elif not held and start is not None:
            spans.append((start, t))
            start = None
    gone_after = run.get("gone_after")
    still = gone_after is None and str(run.get("outcome") or "").lower() == "leak"
    last = bye + _num(run.get("watched_for"), _num(samples[-1]["t"]) if samples else 0.0)
    if start is not None:
        spans.append((start, max(last, start)))
    if not spans and not samples:
        end = bye + _num(gone_after) if gone_after is not None else last
        spans.append((bye, max(end, bye)))
    if not spans:
        return None
    held = spans[-1][1] - bye
    orphaned = " (proven orphaned)" if still and run.get("orphan") else ""
    label = (f"{method} cell still in tm.list {_fmt_t(held)} s after the {method}{orphaned}"
             if still else f"{method} cell left tm.list {_fmt_t(held)} s after the {method}")
    return CellLane(tuple(spans), still, label)


def _draw_lane(ax, lane: CellLane, method: str, colour: str, bound_x: float, early: bool,
               span: float) -> None:
    """The cell as a bar of its own (its artist carries gid 'leaked-cell' when it leaked),
    ended by a marker: a filled one where it was still held, a bar where it left."""
    ax.broken_barh([(a, b - a) for a, b in lane.spans], (0.22, 0.56), facecolors=colour,
                   alpha=0.9, zorder=3, gid="leaked-cell" if lane.still_there else "cell")
    end = lane.spans[-1][1]
    if lane.still_there and early and bound_x > end:
        # Proven orphaned: nothing frees it before the bound, drawn but not as data.
        ax.broken_barh([(end, bound_x - end)], (0.22, 0.56), facecolors="none", edgecolors=colour,
                       hatch="///", lw=0.8, alpha=0.6, zorder=3)
    ax.plot([end], [0.5], marker="X" if lane.still_there else "|", ms=11 if lane.still_there else 16,
            mew=2.2, color=colour, mec="white" if lane.still_there else colour, ls="none", zorder=5,
            gid="leaked-cell-marker" if lane.still_there else "cell-end")
    # Inside the bar where it fits (the axis is fixed by now), else right of its end marker.
    renderer = ax.figure.canvas.get_renderer()
    txt = ax.text(lane.spans[0][0] + 0.006 * span, 0.5, lane.label, ha="left", va="center",
                  fontsize=7.5, color=colour, fontweight="bold", zorder=6,
                  bbox=dict(facecolor="white", edgecolor="none", alpha=0.9, pad=1.2))
    bar_px = ax.transData.transform((end, 0))[0] - ax.transData.transform((lane.spans[0][0], 0))[0]
    if txt.get_window_extent(renderer).width + 24 > bar_px:
        txt.set_x(end + 0.012 * span)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel(f"{method}\ncell", rotation=0, ha="right", va="center", fontsize=9,
                  labelpad=6)
    ax.tick_params(labelbottom=False)


def _group_steps(steps: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Steps within ~0.05 s share one label when the result stays short."""
    groups: list[tuple[float, list[str]]] = []
    for t, text in steps:
        if groups:
            g_t, texts = groups[-1]
            joined = " · ".join(texts + [text])
            if t - g_t < _MERGE_WITHIN and len(joined) <= _MERGED_MAX:
                texts.append(text)
                continue
        groups.append((t, [text]))
    return [(t, " · ".join(texts)) for t, texts in groups]


def _thin(groups: list[tuple[float, list[str]]], most: int) -> list[tuple[float, list[str]]]:
    """At most MOST labels: the two neighbours closest in time merge, first those
    that decide nothing (not _special), so the deadline keeps a label of its own."""
    groups = list(groups)
    while len(groups) > max(1, most):
        pairs = range(len(groups) - 1)
        plain = [i for i in pairs if not any(_special(p) for p in groups[i][1] + groups[i + 1][1])]
        i = min(plain or pairs, key=lambda i: groups[i + 1][0] - groups[i][0])
        groups[i:i + 2] = [(groups[i][0], groups[i][1] + groups[i + 1][1])]
    return groups


def _joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{parts[0]} … {parts[-1]} ({len(parts)} steps)"


def _spread(desired: list[float], gaps: list[float], lo: float, hi: float) -> list[float]:
    """Positions as close as possible to `desired`, label i at least gaps[i] right of i-1.

    Adjacent labels that collide are pooled into a block centred on their
    desired positions (pool-adjacent-violators), then clamped into [lo, hi].
    gaps[0] is ignored.
    """
    cum = [0.0]
    for g in gaps[1:]:
        cum.append(cum[-1] + g)
    blocks: list[list] = []          # [first index, last index, position of first]
    for i, x in enumerate(desired):
        blocks.append([i, i, x])
        while len(blocks) > 1:
            a, b = blocks[-2], blocks[-1]
            if a[2] + cum[a[1]] - cum[a[0]] + gaps[b[0]] <= b[2]:
                break
            first, last = a[0], b[1]
            n = last - first + 1
            pos = sum(desired[k] - (cum[k] - cum[first]) for k in range(first, last + 1)) / n
            blocks[-2:] = [[first, last, pos]]
    out: list[float] = []
    for first, last, pos in blocks:
        out.extend(pos + cum[k] - cum[first] for k in range(first, last + 1))
    # Clamp into the strip: shift right from the left edge, then left from the right edge.
    for i in range(len(out)):
        out[i] = max(out[i], lo if i == 0 else out[i - 1] + gaps[i])
    for i in range(len(out) - 1, -1, -1):
        out[i] = min(out[i], hi if i == len(out) - 1 else out[i + 1] - gaps[i + 1])
    return out


def _special(text: str) -> bool:
    """The steps that decide the verdict: the deadline, the cell leaving tm.list or proven orphaned."""
    low = text.lower()
    return low.startswith("deadline") or bool(re.search(r"\bcell\b.*\b(gone|still|orphaned)\b", low))


def _fmt_t(t: float) -> str:
    return f"{t:.2f}" if abs(t) < 10 else f"{t:.1f}"


def _height(txt, renderer) -> float:
    return txt.get_window_extent(renderer).height


def _fit_label(txt, max_px: float, renderer) -> int:
    """Make a rotated label fit max_px: wrap it onto two lines, then shorten
    the last line with an ellipsis. Returns the number of lines used."""
    full = txt.get_text()
    if _height(txt, renderer) <= max_px:
        return 1
    words = full.split(" ")
    if len(words) > 1:
        # the split that makes the longer line shortest
        best = min(range(1, len(words)),
                   key=lambda k: max(len(" ".join(words[:k])), len(" ".join(words[k:]))))
        head, tail = " ".join(words[:best]), " ".join(words[best:])
    else:
        head, tail = full, ""
    if tail:
        txt.set_text(f"{head}\n{tail}")
        if _height(txt, renderer) <= max_px:
            return 2
    # still too long: shorten the longer line
    lines = [head, tail] if tail else [head]
    for _ in range(len(full)):
        i = max(range(len(lines)), key=lambda j: len(lines[j]))
        if len(lines[i]) <= 4:
            break
        lines[i] = lines[i][:-2].rstrip(" ·…") + "…"
        txt.set_text("\n".join(lines))
        if _height(txt, renderer) <= max_px:
            break
    return len(lines)


def _point_at_leak(ax, last: dict, cells: list[dict], method: str, marks: Marks,
                   watched_to: float, bound_x: float, colour: str, span: float) -> None:
    """Ring the leaked cell at the last sample and name it; after an early
    verdict, carry its count dotted to the bound: what the proof says, not a sample."""
    t, n = _num(last.get("t")), _num(last.get("current"))
    ax.plot([t], [n], marker="o", ms=11, mfc="none", mec=colour, mew=1.8, zorder=5)
    early = not marks.waited_out and bound_x > t
    if early:
        ax.hlines(n, t, bound_x, colors=colour, linestyles=":", lw=1.8, alpha=0.8, zorder=3)
    c = cells[0]
    what = f"{len(cells)} {method} cell{'s' if len(cells) > 1 else ''} left in tm.list"
    detail = f"{c.get('cell')}: outgoings {c.get('outgoings')}, ref_count {c.get('ref_count')}"
    tail = "\nproven orphaned: no timer or process frees it" if early else ""
    if early and bound_x - watched_to > 0.3 * span:
        x, ha = (watched_to + bound_x) / 2, "center"      # in the hatched part, under the labels
    else:                                                  # left of the cell, off the proof's line
        x, ha = min(t, bound_x) - 0.02 * span, "right"
    ax.annotate(f"{what} ({detail}){tail}", xy=(t, n), xycoords="data", xytext=(x, 0.45),
                textcoords=("data", "axes fraction"), ha=ha, va="center", fontsize=7.5,
                color=colour, zorder=6, linespacing=1.2,
                bbox=dict(facecolor="white", edgecolor=colour, lw=0.6, alpha=0.9, pad=2),
                arrowprops=dict(arrowstyle="->", color=colour, lw=0.9, shrinkB=7))


def _place_marks(fig, ax, orphan_text, bound_text, bound_short: str, proof: float | None,
                 span: float) -> None:
    """The orphan and bound labels share a row.  The orphan's goes left of its
    line when it would run past the axis or into the bound's; the bound's
    loses its "(not waited out)" rather than cross the proof's line, and
    drops a row if the two still touch."""
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)

    def ext(t):
        return t.get_window_extent(renderer)

    def touch(a, b):
        return a.x1 + 4 > b.x0 and b.x1 + 4 > a.x0

    row = _MARK_ROW
    legend = ax.get_legend()
    marks = [t for t in (orphan_text, bound_text) if t is not None]
    if legend is not None and any(ext(t).overlaps(legend.get_window_extent(renderer)) for t in marks):
        # A short panel puts the row beside the legend: the row goes below it.
        row = ax.transAxes.inverted().transform((0, legend.get_window_extent(renderer).y0))[1] - 0.09
        for t in marks:
            t.set_y(row)
    if orphan_text is not None:
        o = ext(orphan_text)
        if o.x1 > box.x1 or (bound_text is not None and touch(o, ext(bound_text))):
            if o.x0 - (o.x1 - o.x0) - 8 >= box.x0:
                orphan_text.set_x(proof - 0.006 * span)
                orphan_text.set_ha("right")
    if orphan_text is not None and bound_text is not None:
        line = ax.transData.transform((proof, 0))[0]
        b = ext(bound_text)
        if b.x0 - 4 < line < b.x1 + 4:        # across the proof's line: the short form
            bound_text.set_text(bound_short)
        if touch(ext(orphan_text), ext(bound_text)):
            bound_text.set_y(row - 0.12)


def render_timeline(run: dict, path: str | Path, hints: PlotHints | None = None) -> Path:
    """Draw one run's tm counters, shm and scenario steps into a PNG at `path`."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = draw_timeline(run, hints)
    try:
        fig.savefig(path, dpi=_DPI, facecolor="white")
    finally:
        plt.close(fig)
    return path


def draw_timeline(run: dict, hints: PlotHints | None = None):
    """The timeline as a matplotlib Figure (Agg); the caller closes it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    hints = hints or PlotHints()
    outcome = str(run.get("outcome") or "error").lower()
    colour = _COLOURS.get(outcome, _OTHER)
    samples = _samples(run)
    steps = _steps(run)
    bye, end = _bye_and_deadline(run, steps)

    marks = early_marks(run) if run.get("kind") != "memory" else Marks()
    method = str(run.get("method") or "BYE")

    times = [_num(s.get("t")) for s in samples] + [t for t, _ in steps]
    # A LEAK rests on the bound (or on a proof that ended the watch before it):
    # show where the bound ends, past the data, unless that would squash the data.
    bound_on_axis = False
    if end is not None and (outcome == "leak" or any(t >= end for t, _ in steps)):
        x0, data_hi = min([0.0] + times), max(times + [0.5])
        if end - x0 <= _BOUND_SPAN_MAX * (data_hi - x0) or any(t >= end for t, _ in steps):
            times.append(end)
            bound_on_axis = True
    x_lo = min([0.0] + times)
    x_hi = max(times) if times else 1.0
    if x_hi - x_lo < 0.5:
        x_hi = x_lo + 0.5
    span = x_hi - x_lo
    x_lo, x_hi = x_lo - 0.01 * span, x_hi + 0.02 * span

    fig = plt.figure(figsize=(_W_IN, _H_IN), dpi=_DPI)
    try:
        width = _RIGHT - _LEFT
        lane = cell_lane(run, bye)
        counts_y, shm_y = (_COUNTS_L, _SHM_L) if lane else (_COUNTS, _SHM)
        ax_c = fig.add_axes((_LEFT, counts_y[0], width, counts_y[1] - counts_y[0]))
        ax_m = fig.add_axes((_LEFT, shm_y[0], width, shm_y[1] - shm_y[0]), sharex=ax_c)
        ax_l = fig.add_axes((_LEFT, _LANE[0], width, _LANE[1] - _LANE[0]), sharex=ax_c) \
            if lane else None
        panels = (ax_c, ax_m) + ((ax_l,) if ax_l else ())
        # --- title and the sentence ------------------------------------------------
        where = " · ".join(str(v) for v in (run.get("target"), run.get("variant"),
                                              str(run.get("transport") or "").upper()) if v)
        fig.text(0.5, 0.985, f"{outcome.upper()}" + (f" — {where}" if where else ""),
                 ha="center", va="top", fontsize=14, fontweight="bold", color=colour)
        sub = " — ".join(str(v) for v in (run.get("sentence"), run.get("kamailio_version")) if v)
        lines = textwrap.wrap(sub, 150, max_lines=3, placeholder=" …") if sub else []
        if lines:
            fig.text(0.5, _SUB_TOP, "\n".join(lines), ha="center", va="top", fontsize=_SUB_FONT,
                     color="#333333", linespacing=1.3)
        line_frac = _SUB_FONT * 1.3 / 72 / _H_IN
        strip_top = _SUB_TOP - len(lines) * line_frac - 0.012
        ax_s = fig.add_axes((_LEFT, _STRIP_BOTTOM, width, strip_top - _STRIP_BOTTOM))

        # --- the watch window band: watched, then the bound not waited out -----------
        watched_text = None
        bound_x = (min(end, x_hi) if bound_on_axis else x_hi) if end is not None else x_hi
        watched_to = bound_x
        if not marks.waited_out and marks.watch_end is not None:
            watched_to = min(marks.watch_end, bound_x)
        if bye is not None:
            if watched_to > bye:
                for ax in panels:
                    ax.axvspan(bye, watched_to, color=colour, alpha=0.07, lw=0)
                # A transaction's bound has its own label (below); a drain's deadline goes here.
                dl = f" (deadline {_num(run.get('deadline')):.1f} s)" if run.get("kind") == "memory" \
                    and run.get("deadline") is not None else ""
                near = [t for t, _ in steps if bye <= t <= bye + 0.04 * span]
                watched_text = ax_c.text(
                    max([bye] + near) + 0.006 * span, 0.96, f"watched after the {method}{dl}",
                    transform=ax_c.get_xaxis_transform(),
                    fontsize=7.5, color=colour, va="top", ha="left", alpha=0.9)
            if watched_to < bound_x:
                # The proof ended the watch: hatched, not shaded, so it is not read as data.
                for ax in panels:
                    ax.axvspan(watched_to, bound_x, facecolor="none", edgecolor=colour, hatch="///",
                               alpha=0.18, lw=0)

        # --- the orphan proof and the bound ------------------------------------------
        orphan_text = bound_text = None
        if marks.proof is not None:
            for ax in panels:
                ax.axvline(marks.proof, color=colour, lw=1.8, zorder=4)
            orphan_text = ax_c.text(
                marks.proof + 0.006 * span, _MARK_ROW,
                f"{marks.orphan_label}: {_fmt_t(marks.proof - bye)} s after the {method}" if bye is not None
                else marks.orphan_label, ha="left", va="center",
                transform=ax_c.get_xaxis_transform(), fontsize=8, fontweight="bold", color=colour,
                zorder=6, bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1))
        if end is not None and marks.bound_label:
            if bound_on_axis:
                for ax in panels:
                    ax.axvline(end, color=colour, ls=(0, (5, 3)), lw=1.4, alpha=0.9, zorder=4)
                x, label = end - 0.006 * span, marks.bound_label
            else:                     # beyond the axis: say so at its edge
                x, label = x_hi - 0.006 * span, marks.bound_label + " →"
            bound_text = ax_c.text(
                x, _MARK_ROW, label, ha="right", va="center", transform=ax_c.get_xaxis_transform(),
                fontsize=8, color=colour, zorder=6,
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1))

        # --- step lines ------------------------------------------------------------
        for t, text in steps:
            special = _special(text)
            for ax in panels:
                ax.axvline(t, color=colour if special else "#777777", ls="--", lw=0.8,
                           alpha=0.9 if special else 0.55, zorder=1)

        # --- tm counters (or a memory scenario's own counts) -------------------------
        names = {"current": "current", "waiting": "waiting", **dict(hints.count_names)}
        if samples:
            ts = [_num(s.get("t")) for s in samples]
            series = [
                (names["current"], [_num(s.get("current")) for s in samples], colour, 2.2, "-"),
                ("created − freed", [_num(s.get("created")) - _num(s.get("freed")) for s in samples],
                 "#1f4e9c", 1.4, "--"),
                (names["waiting"], [_num(s.get("waiting")) for s in samples], "#e08a00", 1.2, ":"),
            ]
            if hints.count_names:           # no tm counters in this story
                series = [x for x in series if x[0] != "created − freed"]
            top = 0.0
            for name, ys, c, lw, ls in series:
                if len(ts) == 1:
                    ax_c.plot(ts, ys, marker="o", color=c, ls="none", label=name, zorder=3)
                else:
                    ax_c.step(ts, ys, where="post", color=c, lw=lw, ls=ls, label=name, zorder=3)
                top = max([top] + ys)
            ax_c.set_ylim(-0.25, max(2.0, top) * 1.45 + 0.3)
            ax_c.legend(loc="upper right", **_LEGEND)
        else:
            ax_c.set_ylim(-0.25, 2.5)
            ax_c.text(0.5, 0.5, "no tm.stats samples", transform=ax_c.transAxes,
                      ha="center", va="center", color="#888888", fontsize=10)
        cells = [c for c in run.get("cells") or [] if isinstance(c, dict)]
        if outcome == "leak" and cells and samples:
            _point_at_leak(ax_c, samples[-1], cells, method, marks, watched_to, bound_x, colour, span)
        ax_c.set_xlim(x_lo, x_hi)      # the labels are placed in pixels: fix the axis first
        if lane:
            _draw_lane(ax_l, lane, method, colour, bound_x, not marks.waited_out, span)
        legend = ax_c.get_legend()
        if legend is not None and watched_text is not None:
            # A watch that starts late in the plot puts its label under the legend: swap sides.
            renderer = fig.canvas.get_renderer()
            if watched_text.get_window_extent(renderer).overlaps(legend.get_window_extent(renderer)):
                ax_c.legend(loc="upper left", **_LEGEND)      # Legend.set_loc is matplotlib 3.8
        _place_marks(fig, ax_c, orphan_text, bound_text,
                     f"bound: {marks.deadline or 0:.1f} s" + ("" if bound_on_axis else " →"),
                     marks.proof, span)
        ax_c.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax_c.set_ylabel(hints.counts_label)
        ax_c.grid(axis="y", color="#dddddd", lw=0.6)
        ax_c.tick_params(labelbottom=False)

        # --- shm -------------------------------------------------------------------
        shm = [(_num(s.get("t")), _num(s.get("shm_used")) / 1024) for s in samples
               if s.get("shm_used") is not None]
        if shm:
            ts, ks = zip(*shm)
            if len(ts) == 1:
                ax_m.plot(ts, ks, marker="o", color="#555555", ls="none")
            else:
                ax_m.step(ts, ks, where="post", color="#555555", lw=1.3)
            lo, hi = min(ks), max(ks)
            pad = max((hi - lo) * 0.25, 8.0)
            ax_m.set_ylim(lo - pad, hi + pad)
        else:
            ax_m.text(0.5, 0.5, "no shm samples", transform=ax_m.transAxes,
                      ha="center", va="center", color="#888888", fontsize=10)
            ax_m.set_yticks([])
        if shm:
            fmt = ScalarFormatter(useOffset=False)
            fmt.set_scientific(False)
            ax_m.yaxis.set_major_formatter(fmt)
            ax_m.yaxis.set_major_locator(MaxNLocator(nbins=4))
        ax_m.set_ylabel(hints.shm_label)
        caption = ("per allocation site, from mod.stats all shm: what core.shmmem's noise hides"
                   if run.get("kind") == "memory" else "a single leaked cell is invisible here: shm moves 20–200 KB "
                   "between runs that leak nothing")
        ax_m.text(0.005, 0.96, caption, transform=ax_m.transAxes, fontsize=7,
                  color="#666666", va="top", ha="left",
                  bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
        ax_m.set_xlabel("seconds since the scenario started")
        ax_m.grid(axis="y", color="#eeeeee", lw=0.6)
        ax_c.set_xlim(x_lo, x_hi)

        # --- step labels in their own strip, spread apart with leader lines --------
        fig_w_px, fig_h_px = _W_IN * _DPI, _H_IN * _DPI
        strip_w = width * fig_w_px
        strip_h = (strip_top - _STRIP_BOTTOM) * fig_h_px
        ax_s.set_xlim(0, strip_w)
        ax_s.set_ylim(0, strip_h)
        ax_s.axis("off")
        labels = _group_steps(steps)
        if not labels:
            ax_s.text(0.5, 0.15, "no timeline recorded", transform=ax_s.transAxes,
                      ha="center", va="bottom", color="#888888", fontsize=9)
        else:
            renderer = fig.canvas.get_renderer()
            line_px = _LABEL_FONT * 1.25 * _DPI / 72
            rise = 14.0
            # More steps than the strip holds side by side: neighbours share a label.
            groups = _thin([(t, [text]) for t, text in labels],
                           int((strip_w + _LABEL_GAP) // (line_px + _LABEL_GAP)))
            while True:
                texts, widths = [], []
                for t, parts in groups:
                    text = _joined(parts)
                    special = any(_special(p) for p in parts)
                    txt = ax_s.text(0, rise + 2, f"{_fmt_t(t)} {text}", rotation=90,
                                    rotation_mode="anchor", ha="left", va="center",
                                    fontsize=_LABEL_FONT, color=colour if special else "#333333",
                                    fontweight="bold" if special else "normal", linespacing=1.05)
                    n = _fit_label(txt, strip_h - rise - 4, renderer)
                    texts.append(txt)
                    widths.append(n * line_px)
                if sum(widths) + _LABEL_GAP * (len(widths) - 1) <= strip_w or len(groups) == 1:
                    break
                for txt in texts:        # wrapped labels take two columns: one group fewer
                    txt.remove()
                groups = _thin(groups, len(groups) - 1)
            gaps = [0.0] + [(widths[i - 1] + widths[i]) / 2 + _LABEL_GAP for i in range(1, len(widths))]
            want = [(t - x_lo) / (x_hi - x_lo) * strip_w for t, _ in groups]
            got = _spread(want, gaps, widths[0] / 2, strip_w - widths[-1] / 2)
            for txt, x0, x1 in zip(texts, want, got):
                txt.set_x(x1)
                ax_s.plot([x0, x0, x1], [0, rise * 0.35, rise], color="#999999", lw=0.6,
                          clip_on=False)
    except BaseException:
        plt.close(fig)
        raise
    return fig
