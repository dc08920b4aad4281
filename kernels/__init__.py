"""Compute kernels of sglang-rksc, installed as `sglang_rksc.kernels`.

Each kernel keeps a torch reference that runs on the CPU. Triton versions, checked against their references
on an H100 (`gpu_check_*.py`) and on the CPU by Triton's interpreter in the tests: `sink_window_decode` (the
head-split pool's decode), `packet_extend` and `rope_copy` (packets' prefill attention and copy).
"""
