"""The radix tree that RKSC extends (semantic matching, eviction)."""
