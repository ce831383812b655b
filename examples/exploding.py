"""Exploding gradients: a deep ReLU MLP initialized far too large diverges to NaN.

    python examples/exploding.py [--small] [--logdir DIR]

Broken: 8 hidden ReLU layers of 64 units with weights drawn from N(0, 1). He initialization would use
std sqrt(2/64) ≈ 0.18; with std 1 every layer multiplies the activations (and the gradients) by ~5.7, so the
output is ~10^6 times the input, the first SGD steps overshoot and the loss becomes NaN.

Fixed, as gradscope recommends: He initialization plus gradient clipping between ``backward()`` and
``step()``: ``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)``.

The problem definitions (``_exploding`` in gradscope/demo/problems.py) are shared with ``gradscope demo``.
"""

from gradscope.demo import example_main

if __name__ == "__main__":
    broken, fixed = example_main("exploding")
