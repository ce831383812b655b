"""``gradscope demo``: small training problems, broken the classic ways, trained with gradscope attached.

Each problem is a real (tiny) training run on data generated here — two interleaved spirals, a task a
linear model cannot solve and a small MLP solves in seconds — broken the way practitioners break it:

================  ==========================================================  =====================================
problem           the broken run                                              the fixed run
================  ==========================================================  =====================================
healthy           ReLU MLP, He init, Adam, standardized inputs                (already fine)
vanishing         12-layer sigmoid MLP, PyTorch's default init, SGD           ReLU + He (Kaiming) init
exploding         8-layer ReLU MLP initialized with std 1 (He: 0.18), SGD     He init + ``clip_grad_norm_``
dead_relu         ReLU MLP whose biases start at -3: most units never fire     LeakyReLU, zero biases
saturation        tanh MLP on raw, unstandardized inputs (values ~ 500)       standardized inputs
overfitting       2×512 MLP, 128 points, 20 features (2 useful), 10% wrong    weight decay + dropout + early stopping
underfitting      a linear model (no hidden layer)                            a 3×64 ReLU MLP
not_in_optimizer  head replaced after the optimizer was built (loop bug)      replace the head, then build it
detached          ``.detach()`` on the first layer's activation (loop bug)    no ``.detach()`` on the loss path
================  ==========================================================  =====================================

The examples in ``examples/`` import these definitions (``run_problem(name, fixed=...)``), so the demo and
the examples cannot drift apart. Everything uses a private ``torch.Generator``: runs are reproducible and
the global RNG is left alone.

The package: ``data`` (spirals and friends), ``models`` (shared with the zoo), ``problems`` (broken and fixed
setups), ``training`` (one run with gradscope attached) and ``command`` (the click command, the comparison
and the examples' entry point).
"""

from gradscope.demo.command import compare, demo, example_main, recommended_fix
from gradscope.demo.data import two_spirals
from gradscope.demo.problems import DEFAULT_PROBLEM, PROBLEMS, Problem, Setup
from gradscope.demo.training import SMALL_ENV, Result, is_small, run_problem

__all__ = ["DEFAULT_PROBLEM", "PROBLEMS", "SMALL_ENV", "Problem", "Result", "Setup", "compare", "demo",
           "example_main", "is_small", "recommended_fix", "run_problem", "two_spirals"]
