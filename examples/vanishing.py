"""Vanishing gradients: a 12-layer sigmoid MLP barely trains its first layers.

    python examples/vanishing.py [--small] [--logdir DIR]

Broken: ``nn.Sigmoid`` after each of 12 hidden layers with PyTorch's default init. The sigmoid's derivative
is at most 0.25, so the backward signal shrinks by a constant factor per layer and the first layers get
gradients orders of magnitude smaller than the last (Glorot & Bengio, 2010). Training stalls at chance.

Fixed, as gradscope recommends: ReLU activations with He (Kaiming) initialization,
``nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")``.

The problem definitions (``_vanishing`` in gradscope/demo/problems.py) are shared with ``gradscope demo``.
"""

from gradscope.demo import example_main

if __name__ == "__main__":
    broken, fixed = example_main("vanishing")
