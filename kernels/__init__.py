"""Compute kernels of sglang-rksc, installed as `sglang_rksc.kernels`.

Each kernel keeps a torch reference that runs on the CPU. `sink_window_decode` also has a Triton version
(the head-split pool's decode on a GPU), checked against its reference on an H100 by
`gpu_check_sink_window.py` and on the CPU by Triton's interpreter in the tests.
"""
