"""Overfitting: a large network memorizes a small, noisy training set; validation loss climbs.

    python examples/overfitting.py [--small] [--logdir DIR]

Broken: a 2×512 MLP on 128 training points with 20 features of which only 2 decide the class and 10% of
the labels wrong. Training accuracy reaches 100% (the wrong labels included); the validation loss reaches
its minimum within a few epochs and then rises while the training loss keeps falling.

Fixed, as gradscope recommends: early stopping at the best validation loss (the best checkpoint is kept),
with weight decay (AdamW, 0.1) and dropout (0.5).

The problem definitions (``_overfitting`` in gradscope/demo/problems.py) are shared with ``gradscope demo``.
"""

from gradscope.demo import example_main

if __name__ == "__main__":
    broken, fixed = example_main("overfitting")
