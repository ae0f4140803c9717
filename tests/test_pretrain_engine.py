"""The training engine as a specification: exact resume after SIGKILL (during training and during a
checkpoint write), DDP = one process with the same global batch, accumulation = a bigger batch,
NaN stop, checkpoint format, logs. Runs are tiny (vit_micro_patch4, 256 Fashion-MNIST images)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mae_transfer.checkpoint import load_file
from pretrain.run import main

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "pretrain" / "run.py")]
# fp32: these tests compare runs bit for bit (or to 1e-5); precision=auto would probe each run afresh,
# and two runs could measure their way to different precisions
TINY = ["model=vit_micro_patch4", "train_subset=256", "eval_subset=64", "batch_size=32", "epochs=2",
        "warmup_epochs=0.5", "progress=false", "log_every=1", "recon_images=2", "num_workers=0", "precision=fp32"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(args, **kw):
    return subprocess.run(RUN + args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, **kw)


def _weights(path):
    return load_file(path)["model"]


def _losses(out):
    return [r["loss"] for r in map(json.loads, (Path(out) / "log.jsonl").read_text().splitlines()) if "loss" in r]


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny pretraining run with mid-epoch checkpoints."""
    out = tmp_path_factory.mktemp("ref")
    r = _run(["--out", str(out), "--seed", "3", *TINY, "save_every_steps=3"])
    assert r.returncode == 0, r.stderr
    return out


def test_uninterrupted_run_outputs_and_format(reference):
    ck = load_file(reference / "checkpoint-final.pth")  # weights_only=True
    assert ck["format"] == "mae_transfer" and ck["mode"] == "pretrain"
    assert ck["config"]["model"] == "vit_micro_patch4" and ck["model_kwargs"]["decoder_depth"] == 1
    assert any(k.startswith("decoder_blocks.") for k in ck["model"])
    assert ck["progress"]["epoch"] == 2 and ck["progress"]["step"] == 16
    m = json.loads((reference / "metrics.json").read_text())
    assert m["mode"] == "pretrain" and m["wall_s"] > 0 and m["final_loss"] == pytest.approx(ck["progress"]["last_epoch_loss"])
    for f in ("loss.png", "reconstruction.png", "log.txt", "config.json"):
        assert (reference / f).stat().st_size > 0, f
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))
    # keep_last=2 periodic checkpoints survive beside the final one
    assert len(list(reference.glob("checkpoint-ep*-it*.pth"))) == 2
    losses = _losses(reference)
    assert len(losses) == 16 and sum(losses[-4:]) < sum(losses[:4])


def test_sigkill_during_training_then_resume_is_bitwise_equal(reference, tmp_path):
    out = tmp_path / "killed"
    p = subprocess.Popen(RUN + ["--out", str(out), "--seed", "3", *TINY, "save_every_steps=3"], cwd=ROOT, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(out.glob("checkpoint-ep*-it*.pth")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "checkpoint-final.pth").exists(), "the run finished before it could be killed"
    r = _run(["--out", str(out), "--seed", "3", *TINY, "save_every_steps=3"])  # auto-resume
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    _assert_bitwise_equal(_weights(out / "checkpoint-final.pth"), _weights(reference / "checkpoint-final.pth"))
    assert _losses(out) == _losses(reference)  # the log holds each step once, with identical values


_KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys, torch
    real_save, calls = torch.save, [0]
    def torn_save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 3:                     # the third checkpoint: write half of it, then die
            import io
            buf = io.BytesIO(); real_save(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    torch.save = torn_save
    sys.argv = ["run.py"] + sys.argv[1:]
    from pretrain.run import main
    sys.exit(main())
""")


def test_sigkill_during_checkpoint_write_leaves_loadable_checkpoint(reference, tmp_path):
    out = tmp_path / "torn"
    script = tmp_path / "kill_in_write.py"
    script.write_text(_KILL_DURING_WRITE)
    r = subprocess.run([sys.executable, str(script), "--out", str(out), "--seed", "3", *TINY, "save_every_steps=3"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL
    assert list(out.glob(".checkpoint-*.tmp")), "the torn temp file should be there"
    good = sorted(out.glob("checkpoint-ep*-it*.pth"))
    assert len(good) == 2  # the two complete ones; the torn third never got its name
    for g in good:
        load_file(g)
    r = _run(["--out", str(out), "--seed", "3", *TINY, "save_every_steps=3"])
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".checkpoint-*.tmp"))
    _assert_bitwise_equal(_weights(out / "checkpoint-final.pth"), _weights(reference / "checkpoint-final.pth"))


def test_two_process_ddp_matches_one_process_same_global_batch(tmp_path):
    """Same global batch 32: 2 gloo processes x 16 vs 1 process x 32. Masks and augmentations depend only
    on (seed, epoch, index), so the curves agree to float-reduction noise: rtol 1e-4 per step."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--seed", "5", *TINY, "epochs=1", "train_subset=192"]
    r1 = _run(["--out", str(one), *common, "batch_size=32"])
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                         str(29500 + os.getpid() % 1000), str(ROOT / "pretrain" / "run.py"),
                         "--out", str(two), *common, "batch_size=16"],
                        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 6
    assert l1 == pytest.approx(l2, rel=1e-4)
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m2["effective_batch"] == 32
    w1, w2 = _weights(one / "checkpoint-final.pth"), _weights(two / "checkpoint-final.pth")
    for k in w1:
        a, b = w1[k], w2[k]
        if k.endswith("attn.qkv.bias"):
            # the key bias adds the same q . b_k to all of a query's logits, which softmax cancels: its
            # gradient is zero up to rounding, and AdamW turns that rounding into steps of about lr, which
            # the reduction order decides. Compare the query and value biases.
            a, b = (torch.cat([t[: len(t) // 3], t[2 * len(t) // 3:]]) for t in (a, b))
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), k


def test_accumulation_equals_bigger_batch(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [*TINY, "epochs=1", "train_subset=128", "--seed", "1", "save_every_epochs=0"]
    assert main(["--out", str(a), *common, "batch_size=32", "accum_iter=1"]) == 0
    assert main(["--out", str(b), *common, "batch_size=16", "accum_iter=2"]) == 0
    wa, wb = _weights(a / "checkpoint-final.pth"), _weights(b / "checkpoint-final.pth")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k
    la, lb = _losses(a), _losses(b)  # b logs per optimizer step the mean of its two half-batches
    assert la == pytest.approx(lb, rel=1e-4)


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    common = [*TINY, "epochs=3", "train_subset=64", "--seed", "0", "optimizer=sgd", "momentum=0.0"]
    assert main(["--out", str(out), *common, "epochs=1"]) == 0
    before = (out / "checkpoint-final.pth").read_bytes()
    # resume for two more epochs with an absurd lr: the loss blows up
    rc = main(["--out", str(out), *common, "lr=1e12", "warmup_epochs=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3
    assert err[-1].startswith("error: loss is") and "Last good checkpoint" in err[-1] and "checkpoint-final.pth" in err[-1]
    assert (out / "checkpoint-final.pth").read_bytes() == before
    assert json.loads((out / "metrics.json").read_text())["status"] == "diverged"


def test_finetune_resume_restores_dropout_mixup_rng(tmp_path):
    """Fine-tuning draws from the global RNGs (drop path, mixup/cutmix): resuming from a mid-epoch
    checkpoint must still end bitwise equal."""
    import shutil
    torch.manual_seed(0)
    from mae_transfer.models.vit import vit_from_preset
    torch.save(vit_from_preset("vit_micro_patch4").state_dict(), tmp_path / "init.pth")
    common = ["--mode", "finetune", "--weights", str(tmp_path / "init.pth"), *TINY, "train_subset=128",
              "drop_path=0.2", "mixup=0.8", "cutmix=1.0", "smoothing=0.1", "layer_decay=0.75", "save_every_steps=3",
              "keep_last=5"]
    full = tmp_path / "full"
    assert main(["--out", str(full), *common]) == 0
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full / "checkpoint-ep0001-it000002.pth", part)  # as if killed in epoch 2 after 2 steps
    assert main(["--out", str(part), *common]) == 0
    _assert_bitwise_equal(_weights(part / "checkpoint-final.pth"), _weights(full / "checkpoint-final.pth"))
    a, b = (json.loads((d / "metrics.json").read_text())["top1"] for d in (full, part))
    assert a == b


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_grad_checkpointing_trains_the_same_weights(tmp_path, monkeypatch, mode):
    """``grad_checkpointing=true`` reaches the model (its blocks go through torch.utils.checkpoint) and
    training ends at the same weights: MAE encoder + decoder, and fine-tuning with drop path."""
    import torch.utils.checkpoint as tc
    common = [*TINY, "epochs=1", "train_subset=64", "--seed", "2", "save_every_epochs=0"]
    if mode == "finetune":
        torch.manual_seed(0)
        from mae_transfer.models.vit import vit_from_preset
        torch.save(vit_from_preset("vit_micro_patch4").state_dict(), tmp_path / "init.pth")
        common = ["--mode", "finetune", "--weights", str(tmp_path / "init.pth"), *common, "drop_path=0.3", "eval_subset=32"]
    calls, real = [0], tc.checkpoint

    def counting(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)

    monkeypatch.setattr(tc, "checkpoint", counting)
    a, b = tmp_path / "off", tmp_path / "on"
    assert main(["--out", str(a), *common]) == 0
    assert calls[0] == 0
    assert main(["--out", str(b), *common, "grad_checkpointing=true"]) == 0
    steps = 64 // 32
    blocks = 4 + (1 if mode == "pretrain" else 0)  # vit_micro_patch4: 4 blocks; its MAE decoder: 1
    assert calls[0] == steps * blocks
    wa, wb = _weights(a / "checkpoint-final.pth"), _weights(b / "checkpoint-final.pth")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    assert json.loads((b / "config.json").read_text())["grad_checkpointing"] is True
