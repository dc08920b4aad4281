"""KV Packet-style reuse: a prompt that gathers earlier branches takes their cached KV instead of recomputing it.

A request marks spans of its prompt as packets (`custom_params.rksc.packets`). Where a packet's tokens sit in
the radix tree (the request's own namespace), the server copies their KV into the request's own slots, turns
K by RoPE from the cached positions to the new ones, and computes only the other tokens of the prompt. Nothing
of such a request enters the exact tree.
"""
