"""The gradscope zoo: short real training runs, deliberately healthy or deliberately broken.

``cases.py`` defines the scenarios (calibration and hold-out), ``runner.py`` trains one with gradscope attached
into a log directory and checks the diagnosis against what the case declares. ``tests/judge/test_zoo.py`` runs every
case once per test session; ``benchmarks/zoo_scores.py`` scores each rule's precision and recall over the zoo
(docs/zoo.md).
"""
