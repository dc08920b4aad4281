"""The radix tree RKSC extends: SGLang's `RadixCache` running a list of cache features (`feature`)."""
