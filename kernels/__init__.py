"""Compute kernels of sglang-rksc, installed as `sglang_rksc.kernels`.

Each kernel keeps a torch reference that runs on the CPU; GPU versions
(Triton) are checked against it. None is needed yet.
"""
