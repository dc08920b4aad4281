"""Per-model head scores (how much compressing each KV head moves the model) and the cut at a sparsity.

The file holds the scores, not a mask: `compressed_heads(sparsity)` cuts them at any sparsity, as RLKV
cuts its gates at a quantile. Files for the named models ship in `sglang_rksc/rlkv/masks/`, each with the
command that made it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

MASK_DIR = Path(__file__).resolve().parent / "masks"
RANDOM_PREFIX = "random:"  # --rksc-head-mask random:SEED: the shipped scores shuffled with that seed


class HeadMaskError(ValueError):
    pass


@dataclass(frozen=True)
class HeadScores:
    model: str
    num_layers: int
    num_kv_heads: int
    sink: int
    window: int
    # scores[layer][kv_head]: mean KL(full || this head alone compressed) in nats, over the traces' tokens
    scores: list[list[float]]
    command: str = ""
    traces: str = ""

    def __post_init__(self) -> None:
        if len(self.scores) != self.num_layers or any(len(row) != self.num_kv_heads for row in self.scores):
            raise HeadMaskError(
                f"head scores of {self.model}: expected {self.num_layers} layers x {self.num_kv_heads} KV heads"
            )
        if self.sink < 0 or self.window < 1:
            raise HeadMaskError(f"head scores of {self.model}: sink must be >= 0 and window >= 1")

    @property
    def total_heads(self) -> int:
        return self.num_layers * self.num_kv_heads

    def ranking(self) -> list[tuple[int, int]]:
        """(layer, kv_head) from the least important (compress first) to the most."""
        heads = [(layer, head) for layer in range(self.num_layers) for head in range(self.num_kv_heads)]
        return sorted(heads, key=lambda lh: (self.scores[lh[0]][lh[1]], lh))

    def compressed_heads(self, sparsity: float) -> list[list[bool]]:
        """[layer][kv_head] True where the head is compressed: the round(sparsity x heads) lowest scores."""
        if not 0.0 <= sparsity < 1.0:
            raise HeadMaskError(f"head-compression sparsity must be in [0, 1), got {sparsity}")
        count = round(sparsity * self.total_heads)
        mask = [[False] * self.num_kv_heads for _ in range(self.num_layers)]
        for layer, head in self.ranking()[:count]:
            mask[layer][head] = True
        return mask

    def shuffled(self, seed: int) -> HeadScores:
        """The same scores dealt to the heads in a random order (a seeded permutation): cut at any sparsity,
        a uniformly random mask of that size, the control for what the calibration buys."""
        flat = [score for row in self.scores for score in row]
        random.Random(seed).shuffle(flat)
        rows = [flat[i : i + self.num_kv_heads] for i in range(0, len(flat), self.num_kv_heads)]
        return replace(self, scores=rows, command=f"{RANDOM_PREFIX}{seed} of: {self.command}")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> HeadScores:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except FileNotFoundError:
            raise HeadMaskError(f"head mask file {path} does not exist") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise HeadMaskError(f"head mask file {path} is not a head-scores file: {exc}") from None


def random_seed(head_mask: str) -> int | None:
    """The seed of `random:SEED`, None for a file path."""
    if not head_mask.startswith(RANDOM_PREFIX):
        return None
    try:
        return int(head_mask[len(RANDOM_PREFIX) :])
    except ValueError:
        message = f"--rksc-head-mask {head_mask}: the seed after {RANDOM_PREFIX} must be a whole number"
        raise HeadMaskError(message) from None


def packaged(model_name: str) -> Path:
    """The shipped scores file of a named model (`smollm2-135m`, ...)."""
    return MASK_DIR / f"{model_name}.json"
