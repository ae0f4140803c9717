"""Config system: typed key=value overrides, per-mode sections, _base_ inheritance, clear errors, and the
published ImageNet recipes."""

import pytest

from pretrain.config import CONFIG_DIR, DEFAULT_CONFIG, FIELDS, ConfigError, load_config, parse_overrides, resolve


def test_overrides_are_typed_by_the_field():
    o = parse_overrides(["epochs=3", "blr=1e-3", "norm_pix_loss=false", "crop_scale=0.3,1", "betas=(0.9,0.999)",
                         "lr=none", "data=/x", "finetune.layer_decay=0.7", "mean=0.5,0.5,0.5"])
    assert o["epochs"] == 3 and isinstance(o["epochs"], int)
    assert o["blr"] == 1e-3 and o["norm_pix_loss"] is False and o["lr"] is None and o["data"] == "/x"
    assert o["crop_scale"] == (0.3, 1.0) and o["betas"] == (0.9, 0.999) and o["mean"] == (0.5, 0.5, 0.5)
    assert o["finetune"] == {"layer_decay": 0.7}


@pytest.mark.parametrize("item,msg", [
    ("epoch=3", "unknown config key 'epoch'"),
    ("linprobe.nope=1", "unknown config key 'nope'"),
    ("bogus.epochs=1", "unknown section 'bogus'"),
    ("epochs=three", "cannot read epochs='three' as int"),
    ("hflip=maybe", "cannot read hflip='maybe' as bool"),
    ("epochs", "is not key=value"),
])
def test_bad_overrides_name_the_key(item, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_overrides([item])


def test_precedence_defaults_file_section_flags_overrides(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("epochs = 5\nblr = 1e-3\nfinetune = dict(epochs=7, layer_decay=0.5)\n")
    cfg = load_config(f)
    r = resolve(cfg, "finetune", {"seed": 4}, parse_overrides(["blr=2e-3", "finetune.layer_decay=0.6"]))
    assert (r["epochs"], r["blr"], r["layer_decay"], r["seed"], r["mode"]) == (7, 2e-3, 0.6, 4, "finetune")
    assert r["mask_ratio"] == FIELDS["mask_ratio"][0]
    r = resolve(cfg, "pretrain", {}, {})
    assert r["epochs"] == 5 and r["layer_decay"] is None


def test_base_inheritance_and_file_errors(tmp_path):
    (tmp_path / "a.py").write_text("epochs = 5\nfinetune = dict(epochs=7, blr=1e-3)\n")
    (tmp_path / "b.py").write_text("_base_ = 'a.py'\nfinetune = dict(blr=2e-3)\n_helper = 3\n")
    r = resolve(load_config(tmp_path / "b.py"), "finetune", {}, {})
    assert (r["epochs"], r["blr"]) == (7, 2e-3)
    (tmp_path / "bad.py").write_text("epocs = 5\n")
    with pytest.raises(ConfigError, match=r"bad.py: unknown config key 'epocs'"):
        load_config(tmp_path / "bad.py")
    (tmp_path / "badtype.py").write_text("epochs = 'many'\n")
    with pytest.raises(ConfigError, match="epochs must be int"):
        load_config(tmp_path / "badtype.py")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.py")


def test_every_shipped_config_loads():
    for f in sorted(CONFIG_DIR.glob("*.py")):
        cfg = load_config(f)
        for mode in ("pretrain", "linprobe", "finetune", "partial", "supervised"):
            resolve(cfg, mode, {}, {})
    assert DEFAULT_CONFIG.is_file()


def _recipe(name, mode, gpus=8):
    r = resolve(load_config(CONFIG_DIR / f"imagenet_vit_{name}.py"), mode, {}, {})
    r["eff_batch"] = r["batch_size"] * gpus * r["accum_iter"]
    return r


@pytest.mark.parametrize("name", ["base", "large", "huge"])
def test_imagenet_pretraining_recipe_is_the_papers(name):
    r = _recipe(name, "pretrain")
    assert r["eff_batch"] == 4096 and r["blr"] == 1.5e-4 and r["betas"] == (0.9, 0.95) and r["weight_decay"] == 0.05
    assert r["warmup_epochs"] == 40 and r["epochs"] in (800, 1600) and r["mask_ratio"] == 0.75
    assert r["norm_pix_loss"] and r["crop_scale"] == (0.2, 1.0) and r["img_size"] == 224 and r["hflip"]
    assert (r["decoder_embed_dim"], r["decoder_depth"]) == (512, 8)


def test_imagenet_transfer_recipes():
    b, l, h = (_recipe(n, "finetune") for n in ("base", "large", "huge"))
    assert (b["blr"], b["layer_decay"], b["drop_path"], b["epochs"], b["eff_batch"]) == (5e-4, 0.65, 0.1, 100, 1024)
    assert (l["blr"], l["layer_decay"], l["drop_path"], l["epochs"], l["eff_batch"]) == (1e-3, 0.75, 0.2, 50, 1024)
    assert (h["blr"], h["layer_decay"], h["drop_path"], h["epochs"], h["eff_batch"]) == (1e-3, 0.75, 0.3, 50, 1024)
    assert (b["mixup"], b["cutmix"], b["smoothing"], b["reprob"]) == (0.8, 1.0, 0.1, 0.25)
    lp = _recipe("base", "linprobe")
    assert (lp["optimizer"], lp["blr"], lp["weight_decay"], lp["epochs"], lp["eff_batch"]) == ("lars", 0.1, 0.0, 90, 16384)
    assert _recipe("large", "partial")["blocks"] == 1 and _recipe("large", "partial")["layer_decay"] == 0.75


def test_choice_fields_and_the_older_augment_bools(tmp_path):
    assert parse_overrides(["augment=false"])["augment"] == "none"
    assert parse_overrides(["augment=true"])["augment"] == "crop_rand"
    o = parse_overrides(["augment=crop_rand_jitter", "target=pca", "mask_sampling=grid", "mask_token_in_encoder=1"])
    assert (o["augment"], o["target"], o["mask_sampling"], o["mask_token_in_encoder"]) == ("crop_rand_jitter", "pca",
                                                                                           "grid", True)
    f = tmp_path / "c.py"
    f.write_text("augment = True\nlinprobe = dict(augment=False)\n")
    cfg = load_config(f)
    assert cfg["augment"] == "crop_rand" and cfg["linprobe"]["augment"] == "none"
    with pytest.raises(ConfigError, match="mask_sampling must be one of random, block, grid, got 'blocks'"):
        parse_overrides(["mask_sampling=blocks"])
    f.write_text("target = 'pixels'\n")
    with pytest.raises(ConfigError, match="c.py: target must be one of pixel, norm_pix, pca"):
        load_config(f)
