"""Which KV heads of each layer are compressed, and what a token then costs in KV bytes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
