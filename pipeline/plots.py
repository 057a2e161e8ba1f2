"""Loss and throughput curves from metrics.jsonl, as PNG in RUN_DIR/plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.engine.metrics import read_metrics  # noqa: E402


def training_curves(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    if any("loss" in r for r in train):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in train], [r.get("loss") for r in train], label="train")
        if evals:
            ax.plot(
                [r["step"] for r in evals], [r.get("loss") for r in evals], "o-", label="held-out"
            )
        ax.set(xlabel="step", ylabel="loss", title="loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=100)
        plt.close(fig)
        written.append(out / "loss.png")
    if any("tokens_per_s" in r for r in train):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in train], [r["tokens_per_s"] for r in train])
        ax.set(xlabel="step", ylabel="tokens/s", title="throughput")
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=100)
        plt.close(fig)
        written.append(out / "throughput.png")
    return written
