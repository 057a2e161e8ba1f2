"""What the `train` and `finetune` commands (and a chain's train step) run around the engine:
publishing checks, training, the export, plots and the Hub upload.

The engine (pipeline/engine/) trains and checkpoints; this layer above it turns the trained
module into a Hugging Face folder, draws the curves and publishes, so the engine imports none
of export.py, plots.py or hub.py.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.engine.train import Trainer
from pipeline.protocols import RunConfig


def train_and_export(cfg: RunConfig) -> dict[str, float]:
    """Train `cfg`; then export, plot and publish as it asks. Returns the final eval metrics."""
    from pipeline import export, plots

    if cfg.train.push_to_hub:  # token, repo name, online: fail now, not after training
        from pipeline.hub import check_can_publish

        check_can_publish(cfg.train.push_to_hub, export=cfg.train.export)
    from pipeline import hub_checkpoints

    hub_checkpoints.fetch_for_resume(cfg)  # train.resume_from=hub:OWNER/NAME
    with Trainer(cfg) as trainer:
        pusher = hub_checkpoints.attach(trainer, cfg)  # train.push_checkpoints
        result = trainer.fit()
        if pusher is not None:
            pusher.wait()  # the last checkpoint's upload
        if cfg.train.export:
            export.export_trained(trainer)  # collective: sharded weights are gathered
        is_main = trainer.ctx.is_main
    run_dir = Path(cfg.output_dir)
    if is_main and cfg.log.plots:
        plots.training_curves(run_dir)
    if cfg.train.push_to_hub and is_main:
        # after the last barrier, so a long upload keeps no other process waiting
        from pipeline.hub import publish

        publish(run_dir / "export", cfg.train.push_to_hub)
    return result
