"""A self-contained HTML report of many runs: counts, a table, one section per run.

`render_html(runs, out_dir)` writes `out_dir/report.html`: inline CSS, no scripts,
no external URLs. Every value from a run is escaped. Artifact links are relative
to `out_dir` and only emitted for files that exist.
"""

from __future__ import annotations

import html
import os
from pathlib import Path, PurePosixPath
from urllib.parse import quote

ARTIFACT_FILES = ("kamailio.log", "asterisk.log", "sip-trace.txt", "kamailio.cfg",
                  "verdict.json", "timeline.png", "capture.pcap", "capture.txt")
# Further files a run may leave: numbered second Kamailios, the RPC snapshots.
ARTIFACT_GLOBS = ("kamailio-*.log", "kamailio-*.cfg", "capture-*.pcap", "rpc/*.json")
CELL_COLUMNS = ("callid", "method", "cseq", "cell", "outgoings", "ref_count", "tflags")

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; font-size: 1.15em; }
.counts span { display: inline-block; margin-right: 1em; padding: .15em .6em; border-radius: 4px;
               font-weight: 600; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: .3em .55em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
tr.run.leak td { background: #fdecea; }
tr.run.error td { background: #fff6e0; }
.verdict { font-weight: 700; letter-spacing: .03em; }
.leak { color: #b03a2e; } .clean { color: #1e7e45; } .error { color: #8a6100; }
.counts .leak { background: #fdecea; } .counts .clean { background: #e6f4ea; }
.counts .error { background: #fff6e0; }
.sentence { font-size: 1.05em; padding: .5em .8em; border-left: 4px solid #ccc; background: #fafafa; }
section.leak .sentence { border-left-color: #b03a2e; }
section.clean .sentence { border-left-color: #1e7e45; }
section.error .sentence { border-left-color: #8a6100; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
td.t { text-align: right; font-variant-numeric: tabular-nums; }
img.timeline { max-width: 100%; border: 1px solid #ddd; margin-top: .5em; }
.meta { color: #555; }
ul.artifacts { padding-left: 1.2em; }
"""


def escape(value) -> str:
    """VALUE as HTML text or an attribute's value (None: empty); every report's escaping."""
    return html.escape("" if value is None else str(value), quote=True)


_e = escape


def _outcome(run: dict) -> str:
    o = str(run.get("outcome") or "").lower()
    return o if o in ("leak", "clean") else "error"


def _test_id(run: dict, i: int) -> str:
    return str(run.get("test") or f"run {i + 1}")


def _replies(run: dict) -> str:
    parts = []
    for r in run.get("replies") or []:
        if not isinstance(r, dict):
            parts.append(_e(r))
            continue
        how = {True: " (stateless)", False: " (stateful)"}.get(r.get("stateless"), "")
        parts.append(f"{_e(r.get('code'))} {_e(r.get('reason'))}{_e(how)}")
    return "<br>".join(parts) if parts else '<span class="meta">none seen</span>'


def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _seconds(v, digits: int = 1):
    """A duration with its unit (`7.0 s`); other values as they are."""
    n = _num(v)
    return f"{n:.{digits}f} s" if n is not None else v


def _orphan(run: dict) -> dict | None:
    """The early verdict's proof ({"at", "rule", "evidence", "cell"}), if the run has one."""
    o = run.get("orphan")
    return o if isinstance(o, dict) and _num(o.get("at")) is not None else None


def _early_columns(run: dict) -> tuple[str, str, str]:
    """The run table's orphan proven at / rule / bound: `1.0 s`, `count`, `7.0 s (not waited out)`."""
    if run.get("kind") == "memory":
        return "", "", _seconds(run.get("deadline")) or ""
    o, deadline = _orphan(run), _num(run.get("deadline"))
    bound = "" if deadline is None else f"{deadline:.1f} s"
    if bound and _outcome(run) == "leak":
        bound += " (not waited out)" if o and not run.get("confirmed") else " (waited out)"
    if o is None:
        return "-", "", bound
    return f"{_num(o['at']):.1f} s", str(o.get("rule") or ""), bound


def _fate(run: dict) -> str:
    method = run.get("method") or "BYE"
    outcome = _outcome(run)
    watched, deadline, gone = _num(run.get("watched_for")), _num(run.get("deadline")), _num(run.get("gone_after"))
    o = _orphan(run)
    if outcome == "leak" and o is not None:
        return (f"{method} cell orphaned in tm.list {_num(o['at']):.1f} s after the {method} "
                f"({o.get('rule')})")
    if outcome == "leak":
        s = f"{method} cell still in tm.list"
        if watched is not None:
            s += f" after {watched:.1f} s"
        if deadline is not None:
            s += f" (deadline {deadline:.1f} s)"
        return s
    if outcome == "clean":
        if gone is not None:
            return f"{method} cell left tm.list after {gone:.2f} s"
        return f"{method} cell never lingered in tm.list"
    return str(run.get("error") or "no verdict")


def _artifact_dir(run: dict, out_dir: Path) -> str | None:
    """The run's artifact directory as a POSIX path relative to out_dir, if any."""
    art = run.get("artifacts")
    if not isinstance(art, (str, os.PathLike)) or not str(art):
        return None
    p = Path(art)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(out_dir.resolve())
        except ValueError:
            return None
    return PurePosixPath(*p.parts).as_posix()


def _artifacts(run: dict, out_dir: Path) -> tuple[list[tuple[str, str]], str | None]:
    """[(name, href)] for the known artifact files that exist, and the image href."""
    rel = _artifact_dir(run, out_dir)
    if rel is None:
        return [], None
    links, img = [], None
    base = out_dir / rel
    names = [n for n in ARTIFACT_FILES if (base / n).is_file()]
    for pattern in ARTIFACT_GLOBS:
        names += sorted(f.relative_to(base).as_posix() for f in base.glob(pattern) if f.is_file())
    for name in names:
        if (base / name).is_file():
            href = quote(f"{rel}/{name}" if rel not in ("", ".") else name)
            links.append((name, href))
            if name == "timeline.png":
                img = href
    return links, img


def _section(run: dict, i: int, out_dir: Path) -> str:
    outcome = _outcome(run)
    tid = _test_id(run, i)
    out = [f'<section id="run-{i + 1}" class="{outcome}">',
           f'<h2><span class="verdict {outcome}">{outcome.upper()}</span> {_e(tid)}</h2>']
    sentence = run.get("sentence") or run.get("error") or ""
    if sentence:
        out.append(f'<p class="sentence">{_e(sentence)}</p>')
    meta = [("Kamailio", run.get("kamailio_version")), ("target", run.get("target")),
            ("variant", run.get("variant")), ("transport", run.get("transport"))]
    memory = run.get("memory") if run.get("kind") == "memory" else None
    if memory is None:
        meta += [("Call-ID", run.get("call_id")), ("deadline", _seconds(run.get("deadline"))),
                 ("watched for", _seconds(run.get("watched_for"))),
                 ("gone after", _seconds(run.get("gone_after"), 2))]
        o = _orphan(run)
        if o is not None:
            meta += [("orphan proven", f"{_num(o['at']):.1f} s after the {run.get('method') or 'BYE'} "
                                       f"({o.get('rule')})"),
                     ("evidence", o.get("evidence")),
                     ("bound", "waited out too, agrees" if run.get("confirmed") else "not waited out")]
        else:                       # why the bound was waited out (an unknown build, a config)
            meta.append(("early verdict", run.get("early")))
        meta.append(("tm.stats", run.get("stats_note")))
    else:
        meta += [(memory.get("unit", "request") + "s", memory.get("requests")),
                 ("batches", memory.get("batches")),
                 ("deadline", _seconds(run.get("deadline") or None)),
                 ("drained after", _seconds(memory.get("drained_after")))]
    meta_html = " · ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in meta if v not in (None, ""))
    if meta_html:
        out.append(f'<p class="meta">{meta_html}</p>')

    timeline = run.get("timeline") or []
    if timeline:
        out.append("<h3>Timeline</h3><table><tr><th>s</th><th>step</th></tr>")
        for step in timeline:
            try:
                t, text = step[0], step[1]
            except (TypeError, IndexError, KeyError):
                continue
            tn = _num(t)
            ts = f"{tn:.3f}" if tn is not None else _e(t)
            out.append(f'<tr><td class="t">{ts}</td><td>{_e(text)}</td></tr>')
        out.append("</table>")

    cells = [c for c in run.get("cells") or [] if isinstance(c, dict)]
    if cells:
        out.append("<h3>Leaked cells (tm.list)</h3><table><tr>"
                   + "".join(f"<th>{_e(c)}</th>" for c in CELL_COLUMNS) + "</tr>")
        for c in cells:
            out.append("<tr>" + "".join(f'<td class="mono">{_e(c.get(k))}</td>' for k in CELL_COLUMNS)
                       + "</tr>")
        out.append("</table>")

    if memory and memory.get("sites"):
        # Memory verdicts: the shm allocation sites that moved, batch by batch.
        leaked = set(memory.get("leaked_sites") or [])
        out.append("<h3>shm allocation sites (mod.stats all shm), bytes gained per batch</h3>"
                   "<table><tr><th>site</th><th>per batch</th><th>leaks</th></tr>")
        for site, per_batch in sorted(memory["sites"].items()):
            out.append(f'<tr><td class="mono">{_e(site)}</td><td class="mono">'
                       f'{_e(", ".join(str(b) for b in per_batch))}</td>'
                       f'<td>{"yes" if site in leaked else ""}</td></tr>')
        out.append("</table>")

    links, img = _artifacts(run, out_dir)
    if links:
        out.append('<h3>Artifacts</h3><ul class="artifacts">')
        out.extend(f'<li><a href="{_e(href)}">{_e(name)}</a></li>' for name, href in links)
        out.append("</ul>")
    if img:
        out.append(f'<img class="timeline" src="{_e(img)}" alt="{_e(tid)}: tm.stats timeline">')
    out.append("</section>")
    return "\n".join(out)


def render_html(runs: list[dict], out_dir: str | Path, title: str = "kamleak report") -> Path:
    """Write `out_dir/report.html` for `runs` and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [r for r in runs if isinstance(r, dict)]
    counts = {"leak": 0, "clean": 0, "error": 0}
    for r in runs:
        counts[_outcome(r)] += 1

    rows = []
    for i, r in enumerate(runs):
        o = _outcome(r)
        at, rule, bound = _early_columns(r)
        rows.append(
            f'<tr class="run {o}" id="row-{i + 1}">'
            f'<td><a href="#run-{i + 1}">{_e(_test_id(r, i))}</a></td>'
            f"<td>{_e(r.get('kamailio_version'))}</td><td>{_e(r.get('target'))}</td>"
            f"<td>{_e(r.get('variant'))}</td><td>{_e(r.get('transport'))}</td>"
            f'<td class="verdict {o}">{o.upper()}</td>'
            f"<td>{_replies(r)}</td><td>{_e(_fate(r))}</td>"
            f'<td class="t">{_e(at)}</td><td>{_e(rule)}</td><td>{_e(bound)}</td></tr>')

    doc = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<p class="counts">'
        + "".join(f'<span class="{k}">{v} {k}</span>' for k, v in counts.items())
        + f'<span class="meta">{len(runs)} run{"s" if len(runs) != 1 else ""}</span></p>',
        "<table><tr><th>test</th><th>Kamailio</th><th>target</th><th>variant</th>"
        "<th>transport</th><th>verdict</th><th>Kamailio's replies</th><th>cell fate</th>"
        "<th>orphan proven at</th><th>rule</th><th>bound</th></tr>",
        *rows,
        "</table>",
        *(_section(r, i, out_dir) for i, r in enumerate(runs)),
        "</body></html>",
    ]
    path = out_dir / "report.html"
    path.write_text("\n".join(doc) + "\n", encoding="utf-8")
    return path
