"""The model card hook: an objective that returns its own card text (an energy net's export is
not a transformers model) gets exactly that card; None keeps the standard one."""

from __future__ import annotations

from pipeline.config import load_config
from pipeline.model_card import write_model_card
from pipeline.objectives.base import Objective
from pipeline.train_config import RunConfig
from tests.conftest import ROOT

OWN = "---\nlicense: mit\nlibrary_name: pipeline\n---\n\n# An energy net\n\nNot transformers.\n"


class OwnCard(Objective):
    def model_card(self, folder, cfg, metrics):
        assert folder.is_dir() and cfg.objective.name == "mlm"
        return OWN


def test_an_objective_may_write_the_whole_card(tmp_path):
    cfg = load_config(RunConfig, ROOT / "configs/mlm/tiny.yaml", [f"output_dir={tmp_path}"])
    write_model_card(tmp_path, cfg, [], "", OwnCard(cfg.objective))
    assert (tmp_path / "README.md").read_text() == OWN
    write_model_card(tmp_path, cfg, [], "", Objective(cfg.objective))  # the base: standard card
    card = (tmp_path / "README.md").read_text()
    assert "pretrained with the `mlm` objective" in card and "license: apache-2.0" in card
    # no run_info.json here: the card says the hardware is the writing machine's, not training's
    assert "not recorded by training" in card
