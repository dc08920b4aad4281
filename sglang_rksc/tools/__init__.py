"""Tools beside the server, never imported by it: calibration (`rlkv.calibrate`, `rlkv.mask_eval`,
`cgee.calibrate`, `cgee.verdict_ranking`, `merge_calibrate`), adapter training (`packets.train_adapter` and
its data), and the GPU checks of the kernels (`gpu`). Each runs as `python -m sglang_rksc.tools.<name>`."""
