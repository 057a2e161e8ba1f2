"""`pipeline energy` and `pipeline infer` on an export trained on a local image dataset (a
save_to_disk folder of PIL images): energies in order and batch-independent, completions that
keep the observed pixels, lower the energy and beat the start; one-line errors."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.ebm.evaluate import auroc, ood_aurocs
from pipeline.ebm.export import EnergyNetwork, load_energy
from pipeline.ebm.infer import mask_for
from pipeline.train_config import RunConfig
from pipeline.workflow import train_and_export

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """(export folder, dataset folder, the dataset's images in [0, 1]) after a short CD run."""
    root = tmp_path_factory.mktemp("cmd")
    from sklearn.datasets import load_digits

    digits = (load_digits().images[:300] / 16 * 255).astype(np.uint8)
    ds = datasets.Dataset.from_dict({"picture": [Image.fromarray(a) for a in digits]})
    ds.cast_column("picture", datasets.Image()).save_to_disk(str(root / "data"))
    cfg = load_config(
        RunConfig, ROOT / "configs/ebm/cd-digits.yaml",
        [f"data.path={root / 'data'}", "data.image_column=picture", f"output_dir={root / 'run'}",
         "model.channels=[8, 16]", "objective.steps=5", "objective.buffer_size=128",
         "train.micro_batch_size=32", "train.max_steps=60", "objective.ema=0", "optim.lr=3e-3", "train.eval_every=0",
         "train.checkpoint_every=1000", "log.progress_bar=false", "log.plots=false"],
    )  # fmt: skip
    train_and_export(cfg)
    return root / "run" / "export", root / "data", digits.astype(np.float32) / 255


def test_export_is_a_hub_mixin_folder_with_an_energy_card(trained):
    export, _, images = trained
    assert {"config.json", "model.safetensors", "energy_config.json", "README.md"} <= {
        p.name for p in export.iterdir()
    }
    config = json.loads((export / "config.json").read_text())
    assert config["input_shape"] == [1, 8, 8] and config["data"]["image_column"] == "picture"
    net = EnergyNetwork.from_pretrained(str(export))  # huggingface_hub alone rebuilds it
    reloaded, _ = load_energy(str(export))
    x = torch.from_numpy(images[:16]).unsqueeze(1)
    torch.testing.assert_close(net(x), reloaded(x))
    card = (export / "README.md").read_text()
    assert "energy network E(x)" in card and "1 x 8 x 8" in card and "BERT" not in card
    assert "library_name: pipeline" in card and "energy-based-model" in card


def test_energy_command_scores_every_example_in_order(trained, tmp_path):
    export, data, images = trained
    out = tmp_path / "e.npy"
    assert main(["energy", str(export), f"data.path={data}", "--output", str(out)]) == 0
    assert main(["energy", str(export), f"data.path={data}", "--output", str(tmp_path / "b.npy"),
                 "--batch-size", "7"]) == 0  # fmt: skip
    e, e7 = np.load(out), np.load(tmp_path / "b.npy")
    assert e.shape == (300,) and e.dtype == np.float32
    np.testing.assert_allclose(e, e7, rtol=1e-5, atol=1e-6)  # batching does not change it
    net, _ = load_energy(str(export))
    with torch.no_grad():
        direct = net(torch.from_numpy(images[[0, 123, 299]]).unsqueeze(1)).numpy()
    np.testing.assert_allclose(e[[0, 123, 299]], direct, rtol=1e-5, atol=1e-6)  # in order
    # the trained energy ranks digits below pixel-permuted digits and uniform noise; the same
    # network at its random initialisation does not (permuted digits keep the pixel values)
    x = torch.from_numpy(images).unsqueeze(1)
    trained_auc = ood_aurocs(net, x)
    torch.manual_seed(0)
    untrained_auc = ood_aurocs(
        EnergyNetwork(json.loads((export / "config.json").read_text())["model"], [1, 8, 8]), x
    )
    assert trained_auc["auroc_permuted"] > 0.9 and trained_auc["auroc_uniform"] > 0.9, trained_auc
    assert untrained_auc["auroc_permuted"] < 0.8, untrained_auc


def test_infer_completes_the_right_half(trained, tmp_path):
    export, data, images = trained
    out = tmp_path / "c"
    args = ["infer", str(export), f"data.path={data}", "infer.mask=right-half",
            "infer.steps=30", "infer.max_examples=40", "--output-dir", str(out)]  # fmt: skip
    assert main(args) == 0
    done = np.load(out / "completions.npy")
    truth = images[:40, None]
    mask = mask_for("right-half", (1, 8, 8)).numpy()
    assert done.shape == (40, 1, 8, 8)
    np.testing.assert_array_equal(done[:, ~mask], truth[:, ~mask])  # observed pixels kept
    assert not np.allclose(done[:, mask], done[:1, mask])  # each completion its own
    m = json.loads((out / "metrics.json").read_text())
    assert m["energy_completed"] < m["energy_start"]  # descent on the energy
    assert (out / "completions.png").stat().st_size > 1000
    # 2-D points: the conditional mode of one coordinate given the other
    assert mask_for("dims:1", (2,)).tolist() == [False, True]


def test_one_line_errors(trained, tmp_path, capsys):
    export, data, _ = trained
    args = ["infer", str(export), f"data.path={data}", "--output-dir", str(tmp_path)]
    assert main([*args, "infer.mask=dims:64"]) == 2
    assert "outside the input: examples of shape (1, 8, 8)" in capsys.readouterr().err
    assert main([*args, "infer.mask=top-left"]) == 2
    assert "infer.mask='top-left' is unknown" in capsys.readouterr().err
    not_energy = tmp_path / "bert"
    not_energy.mkdir()
    (not_energy / "config.json").write_text("{}")
    assert main(["energy", str(not_energy), f"data.path={data}", "--output", "x.npy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an energy model export" in err[0], err
    # a dataset of a different shape than the model takes
    assert main(["energy", str(export), "data.path=sklearn:digits", "data.image_column=image", "data.image_size=[4]",
                 "--output", str(tmp_path / "x.npy")]) == 2  # fmt: skip
    assert "shape (1, 4, 4), but the energy model takes (1, 8, 8)" in capsys.readouterr().err


def test_auroc_is_the_mann_whitney_statistic():
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5  # ties count half
    assert abs(auroc(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0])) - 0.75) < 1e-12
