"""benchmarks/gpu.py must at least import and run: its ``--smoke`` configuration on a CPU, in seconds."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gradscope_gpu_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return mod


def test_smoke_run_on_cpu_prints_a_row_per_model(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    try:
        assert bench.main(["--smoke", "--device", "cpu"]) == 0
    finally:
        sys.modules.pop("gradscope_gpu_benchmark", None)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split(" | ")[0][2:].split(" ")[0] for r in rows] == ["GPT-like", "ResNet", "3c3d"]
    for r in rows:
        cells = r.strip("| ").split(" | ")
        assert float(cells[1]) > 0                        # plain ms/step
        ratios = [float(re.match(r"[\d.]+", c).group()) for c in cells[2:5]]   # type: ignore[union-attr]
        assert all(0.05 < x < 100 for x in ratios), ratios
        assert cells[5] == cells[6] == "n/a (CPU)"
    assert "budgets: default ≤ 1.03×" in out


def test_refuses_to_time_a_cpu_without_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full run would start")
    bench = _load()
    try:
        assert bench.main([]) == 2
    finally:
        sys.modules.pop("gradscope_gpu_benchmark", None)
    assert "needs a CUDA device" in capsys.readouterr().err


def test_the_resnet_fallback_is_resnet_50() -> None:
    """Without torchvision the bottleneck network defined in the script is ResNet-50: 25,557,032 parameters
    (torchvision's count)."""
    bench = _load()
    try:
        with torch.device("meta"):
            model = bench.ResNet()
        assert sum(p.numel() for p in model.parameters()) == 25_557_032
        with torch.device("meta"):
            cnn = bench.CNN3c3d()
        assert sum(p.numel() for p in cnn.parameters()) == 895_210   # DeepOBS cifar10_3c3d
    finally:
        sys.modules.pop("gradscope_gpu_benchmark", None)
