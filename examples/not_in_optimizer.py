"""A training-loop bug: a layer the optimizer does not hold gets gradients but never moves.

    python examples/not_in_optimizer.py [--small] [--logdir DIR]

Broken: a 3×64 ReLU MLP whose head is replaced (``model[6] = nn.Linear(64, 2)``) after the optimizer was
built, the way a fine-tuning script swaps a classifier head. The optimizer still holds the old head's
parameters; the new head receives gradients on every backward, but its weights never change, and
``optimizer.zero_grad()`` never clears its gradient, which piles up. Nothing crashes and the loss still falls
(the hidden layers adapt to a fixed random head), so the bug goes unnoticed.

Fixed, as gradscope recommends: build the optimizer once the model is final (or
``optimizer.add_param_group({"params": model[6].parameters()})``).

The problem definitions (``_not_in_optimizer`` in gradscope/demo/problems.py) are shared with
``gradscope demo --problem not_in_optimizer``.
"""

from gradscope.demo import example_main

if __name__ == "__main__":
    broken, fixed = example_main("not_in_optimizer")
