"""Judge: findings, thresholds, the rules and their fixes, and ``diagnose(run)``. No torch, no rich: the rules
take plain numbers, so each can be tested in milliseconds on a hand-written trace."""
