"""RLKV-style head compression: reasoning-critical KV heads keep every token, the others keep only a few
sink tokens and a recent window (arXiv 2510.08525). Here the heads are ranked without RL, by how much the
model's next-token distributions move when one head alone is compressed (`calibrate`)."""
