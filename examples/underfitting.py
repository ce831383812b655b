"""Underfitting: a model too small for the task stays far from fitting even its training data.

    python examples/underfitting.py [--small] [--logdir DIR]

Broken: logistic regression (one Linear layer) on two interleaved spirals, which are not linearly
separable. The training error plateaus near 35% however long it trains, and train ≈ validation.

Fixed, as gradscope recommends: a bigger model, three hidden layers of 64 ReLU units.

The problem definitions (``_underfitting`` in gradscope/demo/problems.py) are shared with ``gradscope demo``.
"""

from gradscope.demo import example_main

if __name__ == "__main__":
    broken, fixed = example_main("underfitting")
