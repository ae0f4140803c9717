import json

import torch

from mae_transfer.precision import cache_path, choose_precision, probe_precision


def test_choose_precision_picks_the_faster_and_never_a_slower_one():
    assert choose_precision({"fp32": 1.0, "bf16": 0.6}) == "bf16"
    assert choose_precision({"fp32": 0.8, "bf16": 0.9}) == "fp32"  # the demo's vit_mini: bf16 slower
    assert choose_precision({"fp32": 1.0, "bf16": 0.98}) == "fp32"  # within the 5 % margin
    assert choose_precision({"fp32": 1.0, "fp16": 0.5}) == "fp16"


def test_probe_times_both_caches_the_choice_and_leaves_no_gradients():
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.BatchNorm1d(16))
    x = torch.randn(8, 16)
    before = model[1].running_mean.clone()
    choice, times = probe_precision(model, lambda: model(x).square().mean(), torch.device("cpu"), "toy", repeats=1)
    assert set(times) == {"fp32", "bf16"} and choice in times
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, before)
    cached = json.loads(cache_path().read_text())
    assert [v["choice"] for v in cached.values()] == [choice]
    again, _ = probe_precision(model, lambda: 1 / 0, torch.device("cpu"), "toy")  # cache hit: step not called
    assert again == choice


def test_cache_write_is_atomic_and_a_failed_write_keeps_the_old_cache(monkeypatch):
    import mae_transfer.precision as core

    model = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    first, _ = probe_precision(model, lambda: model(x).sum(), torch.device("cpu"), "toy-a", repeats=1)
    path = cache_path()
    before = path.read_text()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as mp:  # (monkeypatch.undo would also drop conftest's MAE_CACHE_DIR)
        mp.setattr(core.os, "replace", fail)
        probe_precision(model, lambda: model(x).sum(), torch.device("cpu"), "toy-b", repeats=1)  # warns, runs on
    assert path.read_text() == before  # the old cache intact, no torn file
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # and no temporary file left behind
    probe_precision(model, lambda: model(x).sum(), torch.device("cpu"), "toy-b", repeats=1)
    assert sorted(k.rsplit("|", 1)[-1] for k in json.loads(path.read_text())) == ["toy-a", "toy-b"]
