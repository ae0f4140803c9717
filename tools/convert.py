#!/usr/bin/env python
"""Convert a ViT / MAE checkpoint between formats.

    python tools/convert.py IN.pth OUT.pth [--to ours|timm|detectron2|mmseg] [--keep-decoder]
    python tools/convert.py IN OUT.safetensors --to safetensors [--keep-decoder]

IN may be any format mae_transfer.checkpoint reads (ours, official MAE, timm/DeiT .pth or .safetensors,
Hugging Face facebook/vit-mae-* .safetensors, our Detectron2 or MMSegmentation adapters' checkpoints,
MMSegmentation / MMPretrain ViT backbones). Output formats:
  ours        {"model": encoder state dict [+ MAE decoder with --keep-decoder], "source": IN, "format": ...}
  safetensors our state dict [+ MAE decoder with --keep-decoder] as a .safetensors file (no pickle), the
              source and its format in the header's metadata; the encoder's names are timm's, so an
              encoder-only file also loads into timm's VisionTransformer
  timm        a plain timm VisionTransformer state dict (encoder only)
  detectron2  {"model": {"backbone.net.<key>": ...}} for the ViTDet backbone (encoder only)
  mmseg       {"state_dict": ...} in MMSegmentation's own ViT / MAE backbone names (layers.i.ln1, ...;
              encoder only), for its backbone's init_cfg=dict(type="Pretrained", checkpoint=OUT)
Everything is read with torch.load(weights_only=True) or, for .safetensors, the safetensors package; every
output is written to a temp file and renamed into place.
"""

from __future__ import annotations

import argparse
import sys

from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mae_transfer.checkpoint import (HF_VIT_MAE, MAE_DECODER_KEYS, CheckpointError,  # noqa: E402
                                     add_hf_sincos_tables, extract_state_dict, hf_config_beside, load_file,
                                     save_checkpoint, save_safetensors, to_mae_transfer_keys)
from mae_transfer.checkpoint_keys import to_mmseg_keys  # noqa: E402

FORMATS = ("ours", "safetensors", "timm", "detectron2", "mmseg")
KEEPS_DECODER = ("ours", "safetensors")  # the formats that may hold the MAE decoder


def convert(src: str, dst: str, to: str = "ours", keep_decoder: bool = False) -> dict:
    """Write ``src`` (any readable format) to ``dst`` in format ``to`` (one of :data:`FORMATS`); the MAE
    decoder is kept only for ``to`` in :data:`KEEPS_DECODER` with ``keep_decoder``. Returns
    ``{from, to, tensors}``."""
    if Path(dst).is_dir():
        raise CheckpointError(f"output {str(dst)!r} is a directory: give the output checkpoint's file name")
    if Path(src).exists() and Path(dst).exists() and Path(src).resolve() == Path(dst).resolve():
        raise CheckpointError(f"output {str(dst)!r} is the input checkpoint: converting in place would replace "
                              f"it; give another output file")
    sd, fmt = to_mae_transfer_keys(extract_state_dict(load_file(src), src))
    if fmt == "unknown":
        raise CheckpointError(f"{src}: no ViT keys found (expected e.g. blocks.0.attn.qkv.weight)")
    if not (keep_decoder and to in KEEPS_DECODER):
        sd = {k: v for k, v in sd.items() if not MAE_DECODER_KEYS.match(k)}
    # a transformers file may lack its fixed sin-cos tables: write them, so the output loads like ours
    notes = add_hf_sincos_tables(sd, (hf_config_beside(src) or (None, None))[1]) if fmt == HF_VIT_MAE else []
    if to == "ours":
        out = {"model": sd, "source": str(src), "source_format": fmt}
    elif to == "timm":
        out = sd
    elif to == "detectron2":
        out = {"model": {f"backbone.net.{k}": v for k, v in sd.items()}}
    elif to == "mmseg":
        out = {"state_dict": to_mmseg_keys(sd)}
    elif to == "safetensors":
        # "format": "pt" is the convention of the files transformers and timm write
        save_safetensors(sd, dst, {"format": "pt", "producer": "mae_transfer", "source": str(src),
                                   "source_format": fmt})
        return {"from": fmt, "to": to, "tensors": len(sd), "notes": notes}
    else:
        raise ValueError(f"unknown output format {to!r}")
    save_checkpoint(out, dst)
    return {"from": fmt, "to": to, "tensors": len(sd), "notes": notes}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--to", default="ours", choices=FORMATS)
    ap.add_argument("--keep-decoder", action="store_true",
                    help="keep MAE decoder weights (formats 'ours' and 'safetensors' only)")
    args = ap.parse_args(argv)
    try:
        info = convert(args.src, args.dst, args.to, args.keep_decoder)
    except CheckpointError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        sys.exit(2)
    for note in info["notes"]:
        print(f"convert: {note}")
    print(f"converted {args.src} ({info['from']} format, {info['tensors']} tensors) -> {args.dst} ({info['to']})")


if __name__ == "__main__":
    main()
