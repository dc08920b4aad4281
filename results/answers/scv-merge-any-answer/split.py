"""Made this folder (2026-12-06): the self-consistency run's rksc-merge and rksc-full rows from before merging
kept finished solutions with different answers apart (`merge_branches(..., same=...)`), renamed "(any answer)",
beside copies of the radix and radix-rerun rows they are judged against; ../scv then reruns both modes from 300.
Run once from the repository root."""

import json
import shutil
from pathlib import Path

SRC, DST = Path("results/answers/scv"), Path("results/answers/scv-merge-any-answer")
MOVED = {"rksc-merge": "rksc-merge (any answer)", "rksc-full": "rksc-full (any answer)"}
COPIED = ("radix", "radix-rerun")

lines = [json.loads(line) for line in (SRC / "journal.jsonl").read_text().splitlines() if line.strip()]
config = lines[0]
assert config["kind"] == "config"
keep, split = [], []
for record in lines[1:]:
    mode = record["key"].rsplit("#", 1)[0]
    if mode in MOVED:
        split.append({**record, "key": record["key"].replace(mode, MOVED[mode], 1)})
    else:
        keep.append(record)
        if mode in COPIED:
            split.append(record)
new_config = json.loads(json.dumps(config))
new_config["config"]["modes"] = [
    [MOVED.get(name, name), server, program]
    for name, server, program in config["config"]["modes"]
    if name in MOVED or name in COPIED
]
(DST / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [new_config, *split]))
(SRC / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [config, *keep]))
for mode in MOVED:
    shutil.move(SRC / f"audits-{mode}-0.jsonl", DST / f"audits-{mode}-any-answer-0.jsonl")
