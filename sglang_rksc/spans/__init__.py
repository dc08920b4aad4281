"""Span embeddings: a generation's pooled hidden states in its response (`report`, a feature of the `rksc`
cache), for the frontend's `merge_branches`."""
