"""Made this folder (2026-12-06): ../scv's rows with every mode's vote on one P(yes) scale.

Until 2026-12-06 a mode that verified with SGLang's `select` (every mode but `rksc-full` here) read P(yes)
from select's length-normalised logprobs, which average the choice token with the prompt's last token and
so halve the log-odds; `rksc-full`'s `verify` reports P(yes) itself. The vote is weighted by P(yes), so the
two scales could pick different answers from the same samples. The code now reads select's token logprobs
(`lang.verify.select_probabilities`). This script puts the recorded select rows on that scale,
p = sigmoid(2 logit(p_recorded)) (exact for one-token choices; checked against fp32 runs where both paths
scored the same texts), and recomputes each row's weighted vote. Run once from the repository root."""

import json
import math
from pathlib import Path

from sglang_rksc.programs import gsm8k

SRC, DST = Path("results/answers/scv"), Path("results/answers/scv-rescored")


def unflattened(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return 1 / (1 + math.exp(-2 * math.log(p / (1 - p))))


lines = [json.loads(line) for line in (SRC / "journal.jsonl").read_text().splitlines() if line.strip()]
config = lines[0]
assert config["kind"] == "config"
by_select = {name for name, _server, program in config["config"]["modes"] if "--verifier" not in program}
out = [config]
for record in lines[1:]:
    mode = record["key"].rsplit("#", 1)[0]
    if record["kind"] == "row" and mode in by_select:
        row = dict(record["row"])
        row["p_yes"] = [unflattened(p) for p in row["p_yes"]]
        weights = [p * w for p, w in zip(row["p_yes"], row["sample_weights"], strict=True)]
        row["prediction"] = gsm8k.weighted_vote(row["sample_answers"], weights)
        row["correct"] = row["prediction"] == row["gold"]
        record = {**record, "row": row}
    out.append(record)
(DST / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
