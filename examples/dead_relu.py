"""Dying ReLU: hidden units whose pre-activation is negative for every input never fire and never learn.

    python examples/dead_relu.py [--small] [--logdir DIR]

Broken: a 3×64 ReLU MLP whose biases start at -3 (a bad bias init; a too-high learning rate pushes biases
there during training too). For every input ``w·x + b < 0``, so the ReLU outputs 0 and passes no gradient:
nothing can revive the unit, and the network stays at chance.

Fixed, as gradscope recommends: ``nn.LeakyReLU(0.1)`` (a small slope for negative inputs keeps the gradient
alive) with He initialization for leaky ReLU and zero biases.

The problem definitions (``_dead_relu`` in gradscope/demo/problems.py) are shared with ``gradscope demo``.
"""

from gradscope.demo import example_main

if __name__ == "__main__":
    broken, fixed = example_main("dead_relu")
