"""Show: the report and the command line. No torch.

``report.py`` holds the ``Report`` (data, JSON) and ``report(logdir)``; ``sections.py`` turns it into typed
sections once; ``text.py`` (rich) and ``markdown.py`` lay those out; ``safe.py`` makes strings from a log
safe to show; ``tb_summary.py`` draws the TensorBoard panels; ``cli.py`` is ``gradscope report``."""
