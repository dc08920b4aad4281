"""Stand-in for `sgl_kernel` on machines where the real wheel cannot load.

The PyPI `sglang-kernel` wheel is CUDA-only: on a machine without libcuda its
import fails. SGLang's CPU engine still imports a few CPU symbols from it at
module load, but on a CPU without AMX it never calls them (norm, activation
and RoPE use `forward_native`, attention uses torch SDPA). This module lets
those imports succeed; every attribute is a function that raises a clear
error if it is ever called, so a missing kernel can never go unnoticed.

sglang_rksc puts this folder on the path only after checking that the real
`sgl_kernel` fails to import and that no CUDA device is usable.
"""

from collections.abc import Callable
from typing import Any, NoReturn

STANDIN = True
__version__ = "0.0.0+sglang-rksc-standin"


class SglKernelStandinError(NotImplementedError):
    """Raised when a kernel of the stand-in is called."""


def _missing(name: str) -> Callable[..., NoReturn]:
    def kernel(*args: Any, **kwargs: Any) -> NoReturn:
        raise SglKernelStandinError(
            f"sgl_kernel.{name} was called, but this process runs sglang_rksc's "
            "sgl_kernel stand-in (the real CUDA wheel cannot load here). "
            "This CPU code path needs a real kernel: run on a GPU machine, or "
            "report which SGLang feature reached it."
        )

    kernel.__name__ = name
    kernel.__qualname__ = name
    return kernel


def __getattr__(name: str) -> Callable[..., NoReturn]:
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    return _missing(name)
