"""Measure: the write side, inside the user's training process (torch only).

``watch.Watch`` is the facade; the modules beside it each do one job of a training step. Nothing here imports
``gradscope.judge`` or ``gradscope.show`` at module level: a training process that only calls
``gradscope.watch`` never loads the rules or rich (tests/e2e/test_architecture.py holds this).
"""
