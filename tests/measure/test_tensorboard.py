"""The TensorBoard mirror, checked through a real TensorBoard server's HTTP data API (no mocks)."""

from __future__ import annotations

import io
import json
import math
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.errors import GradscopeWarning
from gradscope.measure.tb_writer import (
    CLIP_TAGS,
    DEFAULT_HISTOGRAMS,
    FLOW_TAG,
    HISTOGRAM_BINS,
    REPORT_TAG,
    bin_tensors,
    layout,
)
from gradscope.show.tb_summary import render_gradient_flow
from gradscope.store.load import load_run
from gradscope.store.tb_scalars import GRADSCOPE_TAG_PREFIXES

STEPS = 24
N_BAD = 5   # NaN/Inf values injected into one gradient on step 0


def _train(logdir: Path, *, histograms: int | None = 1, inject: bool = True, report_midway: bool = False) -> Any:
    """A small sigmoid/ReLU MLP; on step 0 five gradient entries of 0.weight are NaN/Inf and the optimizer
    skips that step (as AMP's GradScaler does)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    state = {"step": 0}

    def poison(g: torch.Tensor) -> torch.Tensor:
        if state["step"] != 0:
            return g
        g = g.clone()
        flat = g.view(-1)
        flat[:3] = math.nan
        flat[3:N_BAD] = math.inf
        return g

    if inject:
        model[0].weight.register_hook(poison)
    rep = None
    with gradscope.watch(model, logdir, every=2, histograms=histograms) as scope:
        for step in range(STEPS):
            state["step"] = step
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if step > 0:
                opt.step()
            scope.log(train_loss=loss.item())
            if report_midway and step == STEPS // 2:
                rep = scope.report()
    return rep


class _Server:
    """TensorBoard in-process on 127.0.0.1, an OS-chosen port, files loaded once before serving."""

    def __init__(self, logdir: Path) -> None:
        from tensorboard import program

        tb = program.TensorBoard()
        tb.configure(argv=[None, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0",
                           "--reload_task", "blocking", "--reload_interval", "0", "--load_fast", "false"])
        self.server = tb._make_server()   # loads every event file (blocking reload) before returning
        self.url = self.server.get_url().rstrip("/")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str, **params: str) -> Any:
        q = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{q}", timeout=10) as r:
            body = r.read()
        return json.loads(body)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _points(srv: _Server, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar tag; the API answers [wall_time, step, value] triples."""
    return [(int(step), float(v)) for _, step, v in srv.get("/data/plugin/scalars/scalars", run=".", tag=tag)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Server, Path, Any]]:
    logdir = tmp_path_factory.mktemp("tb") / "run"
    with pytest.warns(GradscopeWarning, match="NaN/Inf"):
        rep = _train(logdir, report_midway=True)
    server = _Server(logdir)
    try:
        yield server, logdir, rep
    finally:
        server.stop()
    assert not server.thread.is_alive()


def test_every_panel_has_gradscope_data(served: tuple[_Server, Path, Any]) -> None:
    srv, _, _ = served
    assert srv.get("/data/runs") == ["."]
    scalars = srv.get("/data/plugin/scalars/tags")["."]
    for prefix in ("grad_norm/", "act_std/", "dead_pct/", "saturation_pct/", "update_ratio/"):
        assert any(t.startswith(prefix) for t in scalars), prefix
    assert {"grad_norm_total", "gradscope/train_loss", *CLIP_TAGS} <= set(scalars)
    assert {"gradscope/log10_grad_norm/0", "gradscope/log10_grad_norm/4"} <= set(scalars)
    # dead units only before a ReLU (layer 0); the sigmoid layer (2) and the head (4) have saturation/none
    assert "dead_pct/0" in scalars and "dead_pct/2" not in scalars and "dead_pct/4" not in scalars
    assert "saturation_pct/2" in scalars
    assert all(t.startswith(GRADSCOPE_TAG_PREFIXES) for t in scalars)   # never mistaken for user metrics

    cat = srv.get("/data/plugin/custom_scalars/layout")["category"]
    assert [c["title"] for c in cat] == ["gradscope"]
    charts = {c["title"]: c for c in cat[0]["chart"]}
    assert charts.keys() == layout()["gradscope"].keys()
    assert charts["gradient norm per layer (||dL/d output||)"]["multiline"]["tag"] == ["^grad_norm/"]
    margin = charts["total gradient norm vs suggested clipping threshold"]["margin"]["series"][0]
    assert (margin["value"], margin["lower"], margin["upper"]) == CLIP_TAGS
    # every multiline regex matches at least one written tag (the chart is not empty) ...
    for title, chart in charts.items():
        if "multiline" in chart and "scope.log" not in title and "accuracy" not in title:
            assert any(re.search(chart["multiline"]["tag"][0], t) for t in scalars), title
    # ... and the margin chart's three series share their steps (the frontend refuses mismatched steps)
    steps = [[s for s, _ in _points(srv, t)] for t in CLIP_TAGS]
    assert steps[0] == steps[1] == steps[2] and len(steps[0]) >= 5
    clip, median = _points(srv, CLIP_TAGS[2]), _points(srv, CLIP_TAGS[1])
    assert all(c >= m > 0 for (_, c), (_, m) in zip(clip, median, strict=True))

    hist_tags = srv.get("/data/plugin/histograms/tags")["."]
    params = [n for n, _ in nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.Sigmoid(),
                                          nn.Linear(16, 2)).named_parameters()]
    assert {f"gradscope/{k}/{p}" for k in ("weights", "grads") for p in params} <= set(hist_tags)

    images = srv.get("/data/plugin/images/tags")["."]
    assert FLOW_TAG in images
    text_tags = srv.get("/data/plugin/text/tags")["."]
    tag = next(t for t in text_tags if t.startswith(REPORT_TAG))
    texts = srv.get("/data/plugin/text/text", run=".", tag=tag)
    assert len(texts) == 2                       # scope.report() midway, then close()
    html = texts[-1]["text"]
    assert "gradscope report" in html and "<table>" in html   # the Markdown was rendered, tables included
    assert texts[-1]["step"] == STEPS - 1 and texts[0]["step"] < STEPS - 1


def test_histograms_count_nonfinite_values_apart(served: tuple[_Server, Path, Any]) -> None:
    srv, _, _ = served
    assert _points(srv, "gradscope/nonfinite/grads/0.weight") == [(0, float(N_BAD))]
    hist = srv.get("/data/plugin/histograms/histograms", run=".", tag="gradscope/grads/0.weight")
    by_step = {h[1]: h[2] for h in hist}
    assert sum(b[2] for b in by_step[0]) == pytest.approx(16 * 4 - N_BAD)   # the finite ones, all of them
    assert all(math.isfinite(v) for b in by_step[0] for v in b)
    assert sum(b[2] for b in by_step[2]) == pytest.approx(16 * 4)
    weights = srv.get("/data/plugin/histograms/histograms", run=".", tag="gradscope/weights/2.weight")
    recorded = [0, 1, 2, 3, 4, *range(6, STEPS, 2)]                  # warmup 5, then every 2
    assert [h[1] for h in weights] == recorded                        # histograms=1: every recorded step


def test_report_midway_and_image_and_log_stays_source_of_truth(served: tuple[_Server, Path, Any]) -> None:
    srv, logdir, rep = served
    assert rep is not None and "gradscope report" in rep.to_markdown()
    meta = srv.get("/data/plugin/images/images", run=".", tag=FLOW_TAG)
    assert [m["step"] for m in meta][-1] == STEPS - 1
    with urllib.request.urlopen(f"{srv.url}/data/plugin/images/individualImage?{meta[-1]['query']}",
                                timeout=10) as r:
        png = r.read()
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width >= 100 and img.height >= 40
    # the mirror's event file is skipped by the report's TensorBoard reader: no duplicate metrics
    run = load_run(logdir, warn=False)
    assert not any(k.startswith("tb:") for k in run.metrics)
    assert "train_loss" in run.metrics and run.metrics["train_loss"].source != "tensorboard:gradscope/train_loss"


def test_histograms_off_and_rate(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path / "off", histograms=0, inject=False)
    _train(tmp_path / "default", histograms=10, inject=False)
    off = EventAccumulator(str(tmp_path / "off")).Reload().Tags()
    assert off["histograms"] == [] and FLOW_TAG in off["images"]
    acc = EventAccumulator(str(tmp_path / "default"), size_guidance={"histograms": 0}).Reload()
    steps = [e.step for e in acc.Histograms("gradscope/weights/0.weight")]
    assert steps == [0, 16]          # record indices 0 and 10 (every=2 after a warmup of 5 steps)
    assert DEFAULT_HISTOGRAMS >= 50  # rarely by default: a set of histograms costs about a training step
    with pytest.raises(ValueError, match="histograms"):
        gradscope.watch(nn.Linear(2, 2), tmp_path / "bad", histograms=-1)


def test_bin_tensors_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1000, generator=gen)
    b = a.clone()
    b[::100] = math.nan
    b[1] = -math.inf
    c = torch.zeros(7)
    hs = bin_tensors([("weights", "a", a), ("grads", "b", b), ("weights", "c", c)])
    ref, _ = np.histogram(a.numpy(), bins=HISTOGRAM_BINS, range=(float(a.min()), float(a.max())))
    assert hs[0].counts == pytest.approx(ref.tolist(), abs=1)   # histc and numpy may differ at bin edges
    assert hs[0].num == 1000 and hs[0].nonfinite == 0
    assert hs[0].sum == pytest.approx(float(a.sum()), abs=1e-3)
    assert hs[0].sum_squares == pytest.approx(float((a * a).sum()), rel=1e-5)
    fin = b[torch.isfinite(b)]
    assert hs[1].nonfinite == 11 and hs[1].num == 989 and sum(hs[1].counts) == 989
    assert (hs[1].lo, hs[1].hi) == (float(fin.min()), float(fin.max()))
    assert hs[2].lo == hs[2].hi == 0.0 and hs[2].num == 7
    everything_bad = bin_tensors([("grads", "d", torch.full((3,), math.nan))])[0]
    assert everything_bad.num == 0 and everything_bad.nonfinite == 3


def test_bin_tensors_of_bf16_tensors_bin_their_values_exactly() -> None:
    """bf16 weights and gradients are binned tensor by tensor (no fp32 copy of all of them at once) with the
    same counts as their fp32 values, NaN/Inf counted apart, and every value lands in a bin (the max too)."""
    gen = torch.Generator().manual_seed(1)
    a = (torch.randn(4096, generator=gen) * 3).to(torch.bfloat16)
    b = torch.randn(300, generator=gen).to(torch.bfloat16)
    b[::50] = math.inf
    got = bin_tensors([("weights", "a", a), ("grads", "b", b)])
    want = bin_tensors([("weights", "a", a.float()), ("grads", "b", b.float())])
    for g, w in zip(got, want, strict=True):
        assert (g.lo, g.hi, g.num, g.nonfinite, g.counts) == (w.lo, w.hi, w.num, w.nonfinite, w.counts)
        assert g.sum == pytest.approx(w.sum, rel=1e-6) and g.sum_squares == pytest.approx(w.sum_squares, rel=1e-6)
    assert sum(got[0].counts) == 4096 and got[1].nonfinite == 6 and sum(got[1].counts) == 294
    assert got[0].counts[-1] >= 1   # the maximum is in the last bin, as histc puts it


def test_gradient_flow_image_colours() -> None:
    g = np.array([[1e-6, 1e-6, np.nan], [1e-3, 1e-3, 1e-3], [1.0, 1.0, 1.0]])   # (layers, steps)
    img = render_gradient_flow(g, [0, 10, 20], ["first", "middle", "last"])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    colours = {tuple(int(v) for v in px) for px in img.reshape(-1, 3)}
    assert (68, 1, 84) in colours and (253, 231, 37) in colours     # viridis ends: smallest and largest
    assert (128, 128, 128) in colours                               # the missing value is grey, not a colour
    empty = render_gradient_flow(np.full((2, 3), np.nan), [0, 1, 2], ["a", "b"])
    assert empty.shape[2] == 3
