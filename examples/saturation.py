"""Saturation: a tanh network fed raw, unstandardized inputs is pinned at ±1 and gets no gradient.

    python examples/saturation.py [--small] [--logdir DIR]

Broken: the inputs are in raw units (mean ~500, std ~150, as raw sensor values or prices come). The first
layer's pre-activations are in the hundreds, tanh(z) is ±1 and its derivative 1 − tanh² is ~0 for almost
every unit and sample, so the first layer does not learn.

Fixed, as gradscope recommends: standardize the inputs with the training set's statistics,
``x = (x - mean) / std`` per feature.

The problem definitions (``_saturation`` in gradscope/demo/problems.py) are shared with ``gradscope demo``.
"""

from gradscope.demo import example_main

if __name__ == "__main__":
    broken, fixed = example_main("saturation")
