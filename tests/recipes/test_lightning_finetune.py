"""recipes/lightning_finetune.py: both optimizers on the digits, and another data set and model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("jsonargparse")

from tests.helpers import REPO  # noqa: E402


def _recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lightning_finetune", REPO / "recipes" / "lightning_finetune.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def _image_folder(root: Path) -> Path:
    """A tiny image-classification data set as `datasets` reads a local folder: <split>/<label>/<file>.png."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 6), ("validation", 2)):
        for label, level in (("dark", 40), ("mid", 128), ("light", 220)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                noise = torch.randint(-30, 30, (12, 12, 3), generator=generator)
                pixels = (noise + level).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.mark.parametrize("pretrained", [False, True])
def test_recipe_takes_another_data_set_and_a_pretrained_model(tmp_path, pretrained):
    """--dataset_name (here a local image folder; a hub name online) and --model_name_or_path (here a
    tiny ViT saved from a config; a hub model online) replace the digits and the built-in ViT."""
    pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    data = _image_folder(tmp_path / "images")
    options = {}
    if pretrained:
        model_dir = tmp_path / "tiny-vit"
        config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32, num_labels=5)
        transformers.ViTForImageClassification(config).save_pretrained(model_dir)
        transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(model_dir)
        options["model_name_or_path"] = str(model_dir)
    finals = _recipe().main(
        epochs=1, batch_size=6, warmup_steps=1, dataset_name=str(data), model={"image_size": 8, "dim": 16, "depth": 1, "heads": 2},
        lion_kwargs={"fused": False}, output_dir=str(tmp_path / "out"), **options,
    )
    assert set(finals) == {"adamw", "lion"} and (tmp_path / "out" / "lightning_loss.png").exists()
    for run in finals.values():
        assert 0.0 <= run["val_acc"] <= 1.0 and math.isfinite(run["val_loss"])
    recipe = _recipe()
    train, _, labels = recipe.hub_loaders(str(data), "image", "label", 4, 0, options.get("model_name_or_path"), 8)
    images, targets = next(iter(train))
    assert sorted(labels) == ["dark", "light", "mid"] and set(targets.tolist()) <= {0, 1, 2}
    assert images.shape[1:] == ((3, 16, 16) if pretrained else (1, 8, 8))
    with pytest.raises(ValueError, match="Invalid column 'picture'"):
        recipe.hub_loaders(str(data), "picture", "label", 4, 0, None, 8)


def test_recipe_runs_both_optimizers_and_plots(tmp_path):
    recipe = _recipe()
    finals = recipe.main(
        epochs=8, batch_size=128, warmup_steps=2, adamw_lr=1e-2, adamw_weight_decay=0.1, ratio=3.0,
        model={"dim": 16, "depth": 1, "heads": 2}, lion_kwargs={"fused": False}, output_dir=str(tmp_path),
    )
    assert (tmp_path / "lightning_loss.png").stat().st_size > 10_000
    for name in ("adamw", "lion"):
        assert (tmp_path / "lightning_logs" / name / "metrics.csv").exists()
        # 10 classes: chance is 0.1; eight short epochs learn well above it (measured: 0.35 and 0.38)
        assert 0.2 <= finals[name]["val_acc"] <= 1.0 and math.isfinite(finals[name]["val_loss"])
    assert finals["adamw"]["peak_lr"] == pytest.approx(1e-2) and finals["adamw"]["weight_decay"] == pytest.approx(0.1)
    assert finals["lion"]["peak_lr"] == pytest.approx(1e-2 / 3) and finals["lion"]["weight_decay"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="Invalid optimizers: 'sgd'"):
        recipe.main(optimizers=["sgd"], output_dir=str(tmp_path))
