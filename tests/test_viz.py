"""Figures: the reconstruction panel keeps visible patches exactly, un-normalises norm-pix predictions,
and every plot writes a PNG."""

import torch
from PIL import Image

from mae_transfer.models.mae import mae_from_preset
from mae_transfer.viz import mae_reconstruction, save_loss_curve, save_reconstruction_figure, save_sweep_plot


def _model(norm_pix):
    torch.manual_seed(0)
    return mae_from_preset("mae_vit_micro_patch4", norm_pix_loss=norm_pix)


def test_paste_keeps_visible_patches_and_uses_predictions_elsewhere():
    m = _model(False)
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    out = mae_reconstruction(m, x, 0.75, noise)
    keep = m.unpatchify(out["mask"].unsqueeze(-1).expand(-1, -1, 48)) == 0
    assert out["mask"].sum(1).tolist() == [48, 48]
    assert torch.equal(out["paste"][keep], x[keep]) and torch.equal(out["paste"][~keep], out["recon"][~keep])
    _, pred, _ = m(x, 0.75, noise)
    assert torch.allclose(out["recon"], m.unpatchify(pred))


def test_norm_pix_predictions_are_mapped_back_with_patch_statistics():
    m = _model(True)
    x = torch.randn(1, 3, 32, 32)
    noise = torch.rand(1, 64)
    _, pred, _ = m(x, 0.75, noise)
    t = m.patchify(x)
    expect = m.unpatchify(pred * (t.var(-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(-1, keepdim=True))
    assert torch.allclose(mae_reconstruction(m, x, 0.75, noise)["recon"], expect, atol=1e-6)


def test_figures_are_written(tmp_path):
    m = _model(True)
    p = save_reconstruction_figure(m, torch.randn(3, 3, 32, 32), tmp_path / "r.png", (0.5,) * 3, (0.25,) * 3, title="t")
    w, h = Image.open(p).size
    assert h > 300 and w > 300  # 4 rows x 3 columns
    recs = [{"step": i, "epoch": i / 10, "loss": 1 / (i + 1)} for i in range(20)] + [{"step": 20, "epoch": 2, "epoch_loss": 0.1}]
    assert save_loss_curve(recs, tmp_path / "l.png").stat().st_size > 0
    assert save_sweep_plot([0.25, 0.75], {"fine-tune": [80, 82], "linear probe": [60, 65]}, tmp_path / "s.png").stat().st_size > 0
