"""Which KV heads of each layer are compressed, and what a token then costs in KV bytes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Positions kept beyond the attention window, at a sequence's end and before a branch point: a continuation
# that drops the last few tokens (a stop string, a junction tokenized differently) still finds a window.
KEEP_SLACK = 8


@dataclass(frozen=True)
class HeadLayout:
    """compressed[layer][kv_head]; compressed heads keep `sink` first tokens and the last `window` tokens."""

    compressed: tuple[tuple[bool, ...], ...]
    sink: int
    window: int

    def __post_init__(self) -> None:
        assert self.compressed and len({len(row) for row in self.compressed}) == 1, "one flag per KV head per layer"
        assert self.sink >= 0 and self.window >= 1, (self.sink, self.window)

    @classmethod
    def of(cls, mask: list[list[bool]], sink: int, window: int) -> HeadLayout:
        return cls(tuple(tuple(bool(x) for x in row) for row in mask), sink, window)

    @property
    def kept_window(self) -> int:
        """Positions kept before an end or a branch point (the attention window plus `KEEP_SLACK`)."""
        return self.window + KEEP_SLACK

    @property
    def per_request_bound(self) -> int:
        """Window slots a request owns at most outside a branch point: sinks, kept window, the new token."""
        return self.sink + self.kept_window + 1

    def kept(self, positions: torch.Tensor, seq_len: int, branch_point: int = 0) -> torch.Tensor:
        """Which of these positions of a sequence of `seq_len` keep their compressed heads' K and V: the sinks,
        the last `kept_window`, and the `kept_window` before a branch point (where a request's match was cut:
        kept there, the next request diverging at the same place reuses the prefix)."""
        keep = (positions < self.sink) | (positions >= seq_len - self.kept_window)
        if branch_point > 0:
            keep |= (positions >= branch_point - self.kept_window) & (positions < branch_point)
        return keep

    @property
    def num_layers(self) -> int:
        return len(self.compressed)

    @property
    def num_kv_heads(self) -> int:
        return len(self.compressed[0])

    @property
    def compressed_count(self) -> int:
        return sum(map(sum, self.compressed))

    def full_heads(self, layer: int) -> list[int]:
        return [h for h, c in enumerate(self.compressed[layer]) if not c]

    def compressed_heads(self, layer: int) -> list[int]:
        return [h for h, c in enumerate(self.compressed[layer]) if c]

    def query_heads(self, kv_heads: list[int], group: int) -> torch.Tensor:
        """The query heads (GQA: `group` consecutive per KV head) that read these KV heads, in order."""
        return torch.tensor([h * group + i for h in kv_heads for i in range(group)], dtype=torch.long)

    def bytes_per_token(self, head_dim: int, v_head_dim: int, itemsize: int) -> tuple[int, int]:
        """(bytes in the main pool per token, bytes per window slot): K and V of the full / compressed heads."""
        per_head = (head_dim + v_head_dim) * itemsize
        total = self.num_layers * self.num_kv_heads
        return (total - self.compressed_count) * per_head, self.compressed_count * per_head
