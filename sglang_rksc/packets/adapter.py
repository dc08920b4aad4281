"""The packet adapter: 8 header and 8 trailer vectors, put at the input-embedding level around each reused packet.

A packet's copied KV never saw what now stands before it (the sibling branches, the gather text). The soft tokens
are computed in the gather prompt: they read the packet and everything before it, and every later token reads
them, so they can carry the correction that the packet's own KV lacks. They are trained by self-distillation
(`train_adapter`). One layout serves the server and the trainer (`wrap`), so both see the same prompt.

A file holds `header` and `trailer` ([SOFT_TOKENS, hidden], float32) and, as metadata, the model it was trained
for and the command that made it. Files for the named models ship in `sglang_rksc/packets/adapters/`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sglang_rksc.packets.spans import PromptSpan

SOFT_TOKENS = 8  # per side, as in the paper
ADAPTER_DIR = Path(__file__).parent / "adapters"


class AdapterError(ValueError):
    """An adapter file that cannot be used, with the reason in one line."""


@dataclass(frozen=True)
class PacketAdapter:
    header: torch.Tensor  # [SOFT_TOKENS, hidden]: before each packet
    trailer: torch.Tensor  # [SOFT_TOKENS, hidden]: after it
    info: dict[str, str] = field(default_factory=dict)  # model, command, losses

    def __post_init__(self) -> None:
        assert self.header.dim() == 2 and self.header.shape == self.trailer.shape, "header and trailer differ"
        assert self.header.shape[0] == SOFT_TOKENS, f"an adapter has {SOFT_TOKENS} vectors per side"

    @property
    def hidden_size(self) -> int:
        return int(self.header.shape[1])

    def rows(self) -> torch.Tensor:
        """[2 * SOFT_TOKENS, hidden]: header rows, then trailer rows (the indices `wrap` gives)."""
        return torch.cat([self.header, self.trailer])

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"header": self.header, "trailer": self.trailer}
        tensors = {name: t.detach().float().contiguous() for name, t in tensors.items()}
        save_file(tensors, str(path), metadata={k: str(v) for k, v in self.info.items()})

    @classmethod
    def load(cls, path: Path) -> PacketAdapter:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                if keys != {"header", "trailer"}:
                    raise AdapterError(f"packet adapter {path} holds {sorted(keys)}, not header and trailer")
                return cls(f.get_tensor("header"), f.get_tensor("trailer"), dict(f.metadata() or {}))
        except FileNotFoundError:
            raise AdapterError(f"packet adapter file {path} does not exist") from None
        except (OSError, AssertionError, json.JSONDecodeError) as exc:
            raise AdapterError(f"packet adapter file {path} is not an adapter: {exc}") from None
        except Exception as exc:  # safetensors raises its own error type for a corrupt header
            if type(exc).__name__ == "SafetensorError":
                raise AdapterError(f"packet adapter file {path} is not an adapter: {exc}") from None
            raise


def packaged(model_name: str) -> Path:
    """The shipped adapter of a named model (`smollm2-135m`, ...)."""
    return ADAPTER_DIR / f"{model_name}.safetensors"


def placeholder_id(tokenizer: Any) -> int:
    """The token id that stands at a soft token's position (its embedding is replaced; any real id serves)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0


@dataclass(frozen=True)
class WrappedPrompt:
    ids: list[int]  # the prompt with SOFT_TOKENS placeholders before and after each packet
    soft_positions: list[int]  # positions in `ids` that take an adapter row instead of a token embedding
    soft_rows: list[int]  # the row of `PacketAdapter.rows()` each of them takes
    spans: list[PromptSpan]  # the packets, at their positions in `ids`


def wrap(prompt: Sequence[int], spans: Sequence[PromptSpan], placeholder: int) -> WrappedPrompt:
    """Put a header before and a trailer after each span (spans in order, not overlapping)."""
    ids: list[int] = []
    positions: list[int] = []
    rows: list[int] = []
    moved: list[PromptSpan] = []
    cursor = 0
    for span in spans:
        assert span.start >= cursor, "spans must be in order and not overlap"
        ids.extend(prompt[cursor : span.start])
        for offset in range(SOFT_TOKENS):
            positions.append(len(ids))
            rows.append(offset)
            ids.append(placeholder)
        moved.append(PromptSpan(len(ids), span.tokens))
        ids.extend(span.tokens)
        for offset in range(SOFT_TOKENS):
            positions.append(len(ids))
            rows.append(SOFT_TOKENS + offset)
            ids.append(placeholder)
        cursor = span.end
    ids.extend(prompt[cursor:])
    return WrappedPrompt(ids, positions, rows, moved)
