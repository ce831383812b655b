"""Show: the report (data and renderers: rich text, Markdown, JSON), the TensorBoard summary panels and the
command line. No torch."""
