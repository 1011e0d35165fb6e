"""What a finding leaves under --out: the flow, its ladder, the evidence, the logs, SIP
trace and pcap of a replay that leaked the same way, and a standalone pytest file that
replays it with kamleak's fixtures."""

from __future__ import annotations

import json
from pathlib import Path

from kamleak.harness.tools.explore import record

TEST = '''"""kamleak explore finding: {text}

Found on {version} ({label}); {confirmed}/{replays} replays leaked the same way.
Signature: {signature}
{evidence}

Run it against any Kamailio kamleak can start, e.g.:
    pytest {name} --kamailio-version 6.0.1{config_opt}
    pytest {name} --kamailio-ref 5.8.5{config_opt}
It fails where the leak is, and passes where it is not.
"""

{timers_import}from kamleak.harness.tools.explore.flow import Flow
from kamleak.harness.tools.explore.run import replay

FLOW = Flow.from_json({flow})
DEFINES = {defines!r}{mutation_note}
TIMERS = {timers}


def test_explore_finding(kamailio_factory, pbx):
    judged = replay(kamailio_factory(defines=DEFINES, timers=TIMERS), pbx, FLOW)
    assert judged.run.error is None, f"the flow could not be driven: {{judged.run.error}}"
    assert not judged.leaked, "; ".join(judged.proofs)
'''


def write_finding(where: Path, finding, *, version: str, label: str, defines, config: str | None,
                  timers=None) -> Path:
    """TIMERS: the TmTimers it ran with (None: kamleak's defaults)."""
    from kamleak.harness.tools.explore.mutate import with_base

    where.mkdir(parents=True, exist_ok=True)
    flow = finding.flow.to_json()
    if finding.mutation:        # `explore --replay` runs it on the config it leaked with
        flow["config_mutation"] = finding.mutation.text()
    (where / "flow.json").write_text(json.dumps(flow, indent=1))
    (where / "finding.json").write_text(json.dumps({**finding.as_dict(), "kamailio": version,
                                                     "config": label}, indent=1))
    steps = "\n".join(f"{line}   -> {got}" for line, got in
                      zip(finding.flow.ladder().splitlines()[1:], finding.steps))
    record.write(where, finding.files)
    (where / "ladder.txt").write_text(f"{finding.flow.ladder().splitlines()[0]}\n{steps}\n\n"
                                      + "\n".join([*finding.evidence, finding.files_line()]) + "\n")
    name = f"test_explore_{where.name.replace('-', '_')}.py"
    text = TEST.format(text=finding.text(), version=version, label=label,
                       confirmed=finding.confirmed, replays=finding.replays,
                       signature=finding.signature, evidence="\n".join(finding.evidence),
                       name=name, flow=json.dumps(finding.flow.to_json()),
                       defines=with_base(defines, finding.mutation),
                       mutation_note=f"  # + config mutation {finding.mutation.text()}" if finding.mutation else "",
                       config_opt=f" --kamailio-config {config}" if config else "",
                       timers=repr(timers) if timers is not None else "None",
                       timers_import="from kamleak.harness.stack.kamailio.config import TmTimers\n"
                       if timers is not None else "")
    (where / name).write_text(text)
    return where / name
