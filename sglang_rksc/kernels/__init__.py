"""Compute kernels of sglang-rksc. They import no feature: features import them.

Each kernel keeps a torch reference that runs on the CPU (`sink_window`, `similarity`, `verdict`, and the
references beside each Triton kernel). The Triton versions are checked against their references on a GPU
(`sglang_rksc.tools.gpu`) and on the CPU by Triton's interpreter in the tests: `sink_window_decode` (the
head-split pool's decode), `packet_extend` and `rope_copy` (packets' prefill attention and copy).
"""
