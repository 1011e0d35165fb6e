"""explore's report of an --out directory: `index.html` and `junit.xml`, and the
merge of several shards' --out directories into one (`kamleak explore --merge`).

A directory's `summary.json` is one campaign (what `cli._write` writes), or,
once merged, `{"merged_from": [...], "campaigns": [...]}`: the same campaign
dicts, one per Kamailio and config, with their shards and their findings
deduplicated.  A campaign's findings name their directory ("dir", relative
to the report) and the shards that found them; the report only reads what is
there, so it can be written again from a copied or downloaded directory.
"""

from __future__ import annotations

import json
import shlex
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from kamleak.harness.errors import UsageError
from kamleak.harness.reporting.html import CSS, escape

SUMMARY, INDEX, JUNIT = "summary.json", "index.html", "junit.xml"

_MORE_CSS = """
pre { background: #fafafa; border: 1px solid #eee; padding: .5em .8em; overflow-x: auto; font-size: 12.5px; }
.flaky, .unconfirmed { color: #8a6100; }
section.finding { border-left: 4px solid #b03a2e; padding-left: .8em; margin: 1.2em 0; }
section.finding.flaky, section.finding.unconfirmed { border-left-color: #8a6100; }
table.header th { width: 11em; }
"""


def load(out: Path) -> list[dict]:
    """The campaigns of OUT's summary.json; a missing or unreadable one is bad input."""
    path = Path(out) / SUMMARY
    if not path.is_file():
        raise UsageError(f"{out} has no {SUMMARY}", "pass the --out directory of a `kamleak explore` run")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", "pass the --out directory of a `kamleak explore` run") \
            from None
    if not isinstance(data, dict) or not ("campaigns" in data or "flows" in data):
        raise UsageError(f"{path} is not explore's summary", "pass the --out directory of a `kamleak explore` run")
    campaigns = data.get("campaigns", [data])
    for c in campaigns:
        for i, f in enumerate(c.get("findings") or [], 1):
            f.setdefault("dir", f"finding-{i}")          # summaries written before "dir" existed
    return campaigns


def kind(finding: dict) -> str:
    """LEAK (every replay leaked the same way), FLAKY k/n, or UNCONFIRMED (never replayed: Ctrl-C)."""
    if not finding.get("replays"):
        return "UNCONFIRMED"
    if finding.get("sure"):
        return "LEAK"
    return f"FLAKY {finding.get('confirmed', 0)}/{finding['replays']}"


def exit_code(campaigns: list[dict]) -> int:
    """explore's exit: 1 when any campaign has a sure finding, else 0."""
    return 1 if any(f.get("sure") for c in campaigns for f in c.get("findings") or []) else 0


def flow_text(finding: dict) -> str:
    """Finding.text() from its dict: the config mutation when there is one, and the flow."""
    flow = finding.get("flow") or {}
    text = f"{flow.get('transport', '?')}: " + ", ".join(str(s) for s in flow.get("steps") or [])
    mutation = finding.get("config_mutation")
    return f"config mutation {mutation} + flow {text}" if mutation and mutation != "none" else text


def title(campaign: dict) -> str:
    shards = [s.get("shard") for s in campaign.get("shards") or [] if s.get("shard")]
    shard = campaign.get("shard")
    where = f" (shards {', '.join(shards)})" if shards else f" (shard {shard})" if shard else ""
    return f"{campaign.get('kamailio', '?')}, {campaign.get('config', '?')}{where}"


def replay_command(campaign: dict, finding: dict, out: Path) -> str:
    """The command that replays FINDING on the Kamailio and config it was found with."""
    flow = Path(out) / finding["dir"] / "flow.json"
    return shlex.join(["kamleak", "explore", *(campaign.get("replay_args") or []), "--replay", str(flow)])


def write(out: Path, campaigns: list[dict] | None = None) -> tuple[Path, Path]:
    """OUT/index.html and OUT/junit.xml of CAMPAIGNS (default: OUT's summary.json)."""
    out = Path(out)
    campaigns = load(out) if campaigns is None else campaigns
    index, junit = out / INDEX, out / JUNIT
    index.write_text(html_report(out, campaigns), encoding="utf-8")
    ET.ElementTree(junit_report(out, campaigns)).write(junit, encoding="utf-8", xml_declaration=True)
    return index, junit


# -- index.html ----------------------------------------------------------------------------------------

def _rate(c: dict) -> str:
    rate = c.get("rate_per_min")
    return "" if rate is None else f"{rate:.0f} flows/min" + (" (shards summed)" if c.get("shards") else "")


def _header(c: dict) -> str:
    rows = [("Kamailio", c.get("kamailio")), ("config", c.get("config")),
            ("transports", ", ".join(c.get("transports") or [])),
            ("flows", f"{c.get('flows', 0)} run, {c.get('flows', 0) - c.get('harness_errors', 0)} judged, "
                      f"{c.get('harness_errors', 0)} not driven to their end"),
            ("batches", c.get("batches")), ("jobs", c.get("jobs")),
            ("elapsed", f"{c['elapsed_s']:.0f} s" if c.get("elapsed_s") is not None else None),
            ("budget", f"{c['budget_s']:.0f} s" if c.get("budget_s") else None),
            ("rate", _rate(c)), ("stopped", c.get("stopped")), ("seed", c.get("seed")),
            ("shard", c.get("shard"))]
    return ('<table class="header">' + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                                               for k, v in rows if v not in (None, "")) + "</table>")


def _shards(c: dict) -> str:
    shards = c.get("shards") or []
    if not shards:
        return ""
    cols = ("shard", "seed", "flows", "batches", "elapsed_s", "rate_per_min", "stopped", "findings", "dir")
    return ("<h3>Shards</h3><table><tr>" + "".join(f"<th>{escape(k)}</th>" for k in cols) + "</tr>"
            + "".join("<tr>" + "".join(f'<td class="mono">{escape(s.get(k))}</td>' for k in cols) + "</tr>"
                      for s in shards) + "</table>")


def _files(out: Path, rel: str) -> list[str]:
    base = out / rel
    if not base.is_dir():
        return []
    return sorted(PurePosixPath(rel, *p.relative_to(base).parts).as_posix()
                  for p in base.rglob("*") if p.is_file())


def _ladder(out: Path, f: dict) -> str:
    """The emitted ladder (each step and what it got), else the steps as they were recorded."""
    path = out / f["dir"] / "ladder.txt"
    if path.is_file():
        return path.read_text(errors="replace").split("\n\n")[0]
    flow = f.get("flow") or {}
    return "\n".join([f"flow over {str(flow.get('transport', '?')).upper()}"]
                     + [f"  {s}   -> {got}" for s, got in zip(flow.get("steps") or [], f.get("steps") or [])])


def _link(path: str, text: str | None = None) -> str:
    return f'<a href="{escape(quote(path))}">{escape(text or path)}</a>'


def _replay_files(out: Path, f: dict) -> str:
    """The logs, SIP trace and pcap of the replay that leaked the same way, linked where they
    are, and the pcap's absence said with its reason (summaries from before say nothing)."""
    from kamleak.harness.tools.explore.record import NOTE, PCAP

    rf = f.get("replay_files")
    if not rf:
        return ""
    links = [_link(f"{f['dir']}/{n}", n) for n in rf.get("files") or []
             if n not in (NOTE, PCAP) and (out / f["dir"] / n).is_file()]
    pcap = rf.get("pcap") or "not captured (not said why)"
    if pcap == PCAP and (out / f["dir"] / PCAP).is_file():
        links.append(_link(f"{f['dir']}/{PCAP}", f"{PCAP} (loopback, Kamailio's SIP ports)"))
    else:
        if pcap == PCAP:
            pcap = "not captured (the file is missing)"
        links.append(escape(f"pcap: {pcap}"))
    head = (f"replay {rf['replay']} of {f.get('replays')} on a fresh Kamailio (it leaked the same way)"
            if rf.get("replay") else "no replay's files")
    return (f"<h4>Logs and pcap</h4><p>{escape(head)}: " + " · ".join(links) + "</p>")


def _finding(out: Path, c: dict, f: dict) -> str:
    k = kind(f)
    css = k.split()[0].lower()
    meta = [("replays that leaked the same way", f"{f.get('confirmed', 0)}/{f.get('replays', 0)}"),
            ("found after", f"{f.get('found_after_flows')} flows, {f.get('found_after_s')} s"),
            ("shrink runs", f.get("shrink_runs")), ("config mutation", f.get("config_mutation")),
            ("found by shards", ", ".join(f.get("shards") or []))]
    parts = [f'<section id="{escape(f["dir"])}" class="finding {css}">',
             f'<h3><span class="verdict {css}">{escape(k)}</span> {escape(flow_text(f))}</h3>',
             f'<p class="sentence"><code>{escape(f.get("signature"))}</code></p>',
             '<p class="meta">' + " · ".join(f"{escape(a)} <code>{escape(b)}</code>" for a, b in meta
                                              if b not in (None, "", "none")) + "</p>",
             f"<h4>Ladder</h4><pre>{escape(_ladder(out, f))}</pre>",
             "<h4>Evidence</h4><ul>" + "".join(f"<li>{escape(e)}</li>" for e in f.get("evidence") or []) + "</ul>",
             _replay_files(out, f)]
    files = _files(out, f["dir"])
    if files:
        parts.append('<h4>Files</h4><ul class="artifacts">'
                     + "".join(f"<li>{_link(p)}</li>" for p in files) + "</ul>")
    parts += [f"<h4>Replay</h4><pre>{escape(replay_command(c, f, out))}</pre>", "</section>"]
    return "\n".join(p for p in parts if p)


def _trend(c: dict) -> str:
    parts = []
    trend = c.get("trend") or []
    if trend:
        parts.append("<h3>Per-campaign checks: what kept growing or stayed</h3><table><tr><th>status</th>"
                     "<th>signature</th><th>values</th><th>on a fresh Kamailio</th><th>evidence</th></tr>")
        parts += [f"<tr><td>{escape(t.get('status'))}</td><td class=\"mono\">{escape(t.get('signature'))}</td>"
                  f"<td class=\"mono\">{escape(', '.join(str(v) for v in t.get('values') or []))}</td>"
                  f"<td class=\"mono\">{escape(', '.join(str(v) for v in t.get('replay') or []))}</td>"
                  f"<td>{'<br>'.join(escape(e) for e in t.get('evidence') or [])}</td></tr>" for t in trend]
        parts.append("</table>")
    notes = c.get("trend_notes") or []
    if notes:
        parts.append("<h3>What the per-campaign checks could not decide</h3><ul>"
                     + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    refused = c.get("refused_config_mutations") or {}
    if refused:
        parts.append("<h3>Config mutations the build refused (kamailio -c)</h3><table><tr><th>mutation</th>"
                     "<th>kamailio -c</th></tr>" + "".join(
                         f'<tr><td class="mono">{escape(m)}</td><td class="mono">{escape(why)}</td></tr>'
                         for m, why in refused.items()) + "</table>")
    return "\n".join(parts)


def _campaign(out: Path, c: dict) -> str:
    findings = c.get("findings") or []
    body = [f"<h2>{escape(title(c))}</h2>", _header(c), _shards(c)]
    if findings:
        body += [_finding(out, c, f) for f in findings]
    else:
        body.append(f'<p class="sentence">No finding in {c.get("flows", 0) - c.get("harness_errors", 0)} '
                    "flows judged.</p>")
    body.append(_trend(c))
    return '<section class="campaign">\n' + "\n".join(b for b in body if b) + "\n</section>"


def html_report(out: Path, campaigns: list[dict]) -> str:
    """A self-contained page (inline CSS, no scripts, links relative to OUT); every value escaped."""
    counts = {"leak": 0, "flaky": 0, "unconfirmed": 0}
    for c in campaigns:
        for f in c.get("findings") or []:
            counts[kind(f).split()[0].lower()] += 1
    flows = sum(c.get("flows", 0) for c in campaigns)
    head = "kamleak explore"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(head)}</title><style>{CSS}{_MORE_CSS}</style></head><body>",
        f"<h1>{escape(head)}</h1>",
        '<p class="counts">' + "".join(f'<span class="{k}">{v} {k}</span>' for k, v in counts.items())
        + f'<span class="meta">{flows} flows in {len(campaigns)} campaign{"s" * (len(campaigns) != 1)}</span></p>',
        *(_campaign(out, c) for c in campaigns), "</body></html>", ""])


# -- junit.xml -----------------------------------------------------------------------------------------

def junit_report(out: Path, campaigns: list[dict]) -> ET.Element:
    """A testsuite per campaign, a testcase per finding (a <failure>, a flaky one too, with its
    rate); a campaign with no finding is one passing testcase that says how many flows were judged."""
    root = ET.Element("testsuites", name="kamleak explore")
    total = failures = 0
    for c in campaigns:
        findings = c.get("findings") or []
        suite = ET.SubElement(root, "testsuite", name=f"explore {title(c)}", tests=str(max(1, len(findings))),
                              failures=str(len(findings)), errors="0", skipped="0",
                              time=f"{c.get('elapsed_s') or 0:.1f}")
        props = ET.SubElement(suite, "properties")
        for key in ("kamailio", "config", "flows", "batches", "harness_errors", "rate_per_min", "stopped",
                    "seed", "shard"):
            if c.get(key) is not None:
                ET.SubElement(props, "property", name=key, value=str(c[key]))
        classname = f"explore.{c.get('kamailio', '?')}"
        judged = c.get("flows", 0) - c.get("harness_errors", 0)
        for f in findings:
            case = ET.SubElement(suite, "testcase", classname=classname,
                                 name=f"{f['dir']}: {flow_text(f)}", time=f"{f.get('found_after_s') or 0:.1f}")
            k = kind(f)
            rate = "" if k == "LEAK" else (" (never replayed)" if k == "UNCONFIRMED"
                                           else f" ({f.get('confirmed', 0)} of {f.get('replays')} replays leaked)")
            failure = ET.SubElement(case, "failure", type=k.split()[0], message=f"{k}: {f.get('signature')}{rate}")
            failure.text = "\n".join([*(f.get("evidence") or []),
                                      *(f"found by shard {s}" for s in f.get("shards") or []),
                                      f"replay: {replay_command(c, f, out)}"])
        if not findings:
            case = ET.SubElement(suite, "testcase", classname=classname,
                                 name=f"no leak in {judged} flows judged", time=f"{c.get('elapsed_s') or 0:.1f}")
            ET.SubElement(case, "system-out").text = (f"{c.get('flows', 0)} flows in {c.get('batches', 0)} "
                                                      f"batches; stopped: {c.get('stopped')}")
        total += max(1, len(findings))
        failures += len(findings)
    root.set("tests", str(total))
    root.set("failures", str(failures))
    return root


# -- merge ---------------------------------------------------------------------------------------------

def merge(dirs: list[str], out: Path) -> list[dict]:
    """One report from several --out directories (shards of one or more campaigns) into OUT:
    per Kamailio and config, counts summed, findings deduplicated by signature and config
    mutation, each keeping the shards that found it and the first one's files (copied)."""
    out = Path(out)
    sources = [(Path(d), load(Path(d))) for d in dirs]        # all read before anything is written
    if any(d.resolve() == out.resolve() for d, _ in sources):
        raise UsageError(f"--out {out} is one of the directories merged", "pass a new directory to --out")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty", "pass a new or empty directory to --out")
    out.mkdir(parents=True, exist_ok=True)
    merged: dict[tuple, dict] = {}
    seen: dict[tuple, dict] = {}
    n = 0
    for src, campaigns in sources:
        for c in campaigns:
            key = (c.get("kamailio"), c.get("config"))
            m = merged.setdefault(key, {
                "kamailio": c.get("kamailio"), "config": c.get("config"), "transports": c.get("transports"),
                "jobs": c.get("jobs"), "budget_s": c.get("budget_s"), "replay_args": c.get("replay_args"),
                "flows": 0, "batches": 0, "harness_errors": 0, "elapsed_s": 0.0, "rate_per_min": 0.0,
                "shards": [], "refused_config_mutations": {}, "trend": [], "trend_notes": [], "findings": []})
            # A merged report merged again keeps its shards; a plain run is one shard.
            shards = c.get("shards") or [{"shard": c.get("shard") or str(src), "seed": c.get("seed"),
                                          "flows": c.get("flows"), "batches": c.get("batches"),
                                          "elapsed_s": c.get("elapsed_s"), "rate_per_min": c.get("rate_per_min"),
                                          "stopped": c.get("stopped"), "findings": len(c.get("findings") or []),
                                          "dir": str(src)}]
            m["shards"] += shards
            for k in ("flows", "batches", "harness_errors"):
                m[k] += c.get(k) or 0
            m["elapsed_s"] = max(m["elapsed_s"], c.get("elapsed_s") or 0.0)    # shards run side by side
            m["rate_per_min"] = round(m["rate_per_min"] + (c.get("rate_per_min") or 0.0), 1)
            m["stopped"] = ", ".join(dict.fromkeys(s.get("stopped") or "?" for s in m["shards"]))
            m["refused_config_mutations"].update(c.get("refused_config_mutations") or {})
            m["trend"] += [{**t, "shard": shards[0]["shard"]} for t in c.get("trend") or []]
            m["trend_notes"] += [t for t in c.get("trend_notes") or [] if t not in m["trend_notes"]]
            for f in c.get("findings") or []:
                found_by = f.get("shards") or [shards[0]["shard"]]
                fkey = key + (f.get("signature"), f.get("config_mutation") or "none")
                if fkey in seen:
                    seen[fkey]["shards"] += [s for s in found_by if s not in seen[fkey]["shards"]]
                    continue
                n += 1
                copy = {**f, "dir": f"finding-{n}", "shards": list(found_by)}
                if (src / f["dir"]).is_dir():
                    shutil.copytree(src / f["dir"], out / copy["dir"])
                seen[fkey] = copy
                m["findings"].append(copy)
    campaigns = list(merged.values())
    (out / SUMMARY).write_text(json.dumps({"merged_from": [str(d) for d, _ in sources], "campaigns": campaigns},
                                          indent=1))
    write(out, campaigns)
    return campaigns
