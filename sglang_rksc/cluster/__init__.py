"""Several replicas of the sglang-rksc server behind SGLang's router (`sglang-router`): `LaunchedCluster`, and
`python -m sglang_rksc.launch_cluster`."""
