"""Glue between sglang_rksc and the SGLang server: plugin, hooks, launcher."""
