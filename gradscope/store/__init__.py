"""Store: the log's records (``schema``), the JSONL writer and reader (``jsonl``), a run as columns of plain
numbers (``run``), per-rank merging (``merge``), the user's TensorBoard scalars (``tb_scalars``) and the one
loader (``load``). No torch: a log is read wherever it is copied."""
