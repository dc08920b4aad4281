"""Triton kernels defined on first launch, so that importing a kernel module needs no Triton (the CPU path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LazyKernel:
    """`LazyKernel(define)[grid](...)` launches the kernel `define()` returns, defining it once."""

    def __init__(self, define: Callable[[], Any]) -> None:
        self._define = define
        self._kernel: Any = None

    def __getitem__(self, grid: Any) -> Any:
        if self._kernel is None:
            self._kernel = self._define()
        return self._kernel[grid]
