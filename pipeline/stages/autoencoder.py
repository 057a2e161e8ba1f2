"""The autoencoder stage: under-/over-complete, denoising, sparse; MSE or BCE; vs PCA.

    python -m pipeline stage configs/stages/autoencoder.yaml --output-dir runs/ae

Held-out metrics: `mse` (reconstruction of the clean input), `pca_mse` (PCA with as many
components as the code: the best linear autoencoder), and for denoising `denoised_mse`
(reconstruction of the noisy input vs the clean one) next to `noisy_mse` (noisy vs clean).
Outputs: the codes of every row (features.npy) for a downstream stage, and the weights.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from pipeline.data.sources import DataError
from pipeline.engine import setup
from pipeline.engine.launch import SetupError
from pipeline.engine.schedule import step_schedule
from pipeline.registry import register
from pipeline.stages import ae_models, arrays, pictures
from pipeline.stages.base import (
    Stage,
    begin_outputs,
    finish_outputs,
    load_checkpoint,
    load_data,
    metrics_log,
    save_checkpoint,
)
from pipeline.stages.schema import StageRunConfig
from pipeline.train_config import StageConfig

log = logging.getLogger("pipeline")


@dataclass
class AutoencoderConfig(StageConfig):
    name: str = "autoencoder"
    arch: Literal["mlp", "conv"] = "mlp"
    """mlp: fully connected; conv: stride-2 convolutions (images only)."""
    code_size: int = 8
    """Units in the code: below the input size = under-complete, above = over-complete."""
    hidden: list[int] = field(default_factory=lambda: [128])
    """Hidden layer sizes of the fully connected encoder (the decoder mirrors them)."""
    channels: list[int] = field(default_factory=lambda: [16, 32])
    """Channels of the convolutional encoder's layers (the decoder mirrors them)."""
    activation: Literal["relu", "tanh", "elu"] = "relu"
    """Hidden-layer non-linearity."""
    code_activation: Literal["linear", "relu"] = "linear"
    """Non-linearity on the code (relu helps an L1-sparse over-complete code)."""
    loss: Literal["mse", "bce"] = "mse"
    """Reconstruction loss; bce needs data in [0, 1] (data.scale=unit for images)."""
    output: Literal["linear", "sigmoid"] = "linear"
    """Output non-linearity for mse (bce always uses a sigmoid)."""
    noise: Literal["none", "gaussian", "masking", "dropout"] = "none"
    """Corruption of the input (denoising): gaussian adds noise_std x N(0, 1); masking zeroes
    inputs with probability mask_prob; dropout does the same and rescales survivors by 1/(1-p)."""
    noise_std: float = 0.3
    """Standard deviation of gaussian noise."""
    mask_prob: float = 0.3
    """Probability that masking/dropout noise zeroes an input."""
    sparsity_l1: float = 0.0
    """Weight of the L1 penalty on the code (sum over units, mean over examples)."""

    def validate(self) -> list[str]:
        problems = []
        if self.code_size < 1:
            problems.append(f"code_size must be >= 1, got {self.code_size}")
        if any(h < 1 for h in self.hidden) or any(c < 1 for c in self.channels):
            problems.append("hidden and channels must be positive")
        if self.arch == "conv" and not self.channels:
            problems.append("channels must name at least one layer for arch=conv")
        if not 0.0 <= self.mask_prob < 1.0:
            problems.append(f"mask_prob must be in [0, 1), got {self.mask_prob}")
        if self.noise_std < 0 or self.sparsity_l1 < 0:
            problems.append("noise_std and sparsity_l1 must be >= 0")
        return problems


@register("stage", "autoencoder")
class AutoencoderStage(Stage):
    Config = AutoencoderConfig

    def run(self, cfg: StageRunConfig, run_dir: Path) -> dict[str, float]:
        ac: AutoencoderConfig = cfg.stage
        tc = cfg.train
        if self.comm.world > 1:
            raise SetupError(
                "the autoencoder stage runs in one process (launch it without torchrun)"
            )
        data = load_data(cfg)
        if ac.loss == "bce" and not data.in_unit_range:
            raise DataError(
                f"stage.loss=bce needs data in [0, 1]; {data.source} spans "
                f"[{float(data.x.min()):.3g}, {float(data.x.max()):.3g}] (try data.scale=unit)"
            )
        if ac.arch == "conv" and data.image_shape is None:
            raise DataError(f"stage.arch=conv needs images; {data.source} holds plain rows")
        train_rows, eval_rows = arrays.split(len(data.x), cfg.data.eval_fraction, tc.seed)
        if len(eval_rows) == 0:
            eval_rows = train_rows  # eval_fraction=0: report on the training rows
        device = self.comm.device(tc.device)
        x_all = torch.from_numpy(np.asarray(data.x, dtype=np.float32)).to(device)
        x_train, x_eval = x_all[train_rows], x_all[eval_rows]

        torch.manual_seed(tc.seed)
        model = ae_models.build(ac, x_all.shape[1], data.image_shape).to(device)
        # the engine's AdamW and schedule (the stage's optim section has stage defaults)
        opt = setup.build_optimizer(model, cfg.optim, device)
        done = [0]  # steps taken, read by the schedule
        schedule = step_schedule(opt, cfg.optim, tc.max_steps, lambda: done[0])
        start = 0
        state = load_checkpoint(run_dir) if tc.resume != "never" else None
        if tc.resume == "required" and state is None:
            raise SetupError(f"train.resume=required but {run_dir}/checkpoints has no valid one")
        # what the checkpoint must match: the network and the data it was trained on
        identity = json.dumps(
            {"autoencoder": vars(ac), "dim": int(x_all.shape[1]), "source": data.source},
            sort_keys=True,
        )
        if state is not None:
            if state.get("identity") != identity:
                raise SetupError(
                    f"{run_dir}/checkpoints hold a different autoencoder or data "
                    f"(saved {state.get('identity')}, now {identity}); use another --output-dir "
                    "or train.resume=never"
                )
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["scheduler"])
            start = int(state["step"])
            log.info("autoencoder: resumed at step %d", start)

        pca_mse = _pca_mse(x_train.cpu().numpy(), x_eval.cpu().numpy(), ac.code_size)
        metrics = metrics_log(run_dir, self.comm)
        per_epoch = math.ceil(len(x_train) / tc.batch_size)
        bar = tqdm(
            range(start + 1, tc.max_steps + 1), desc="autoencoder", disable=not cfg.log.progress_bar
        )
        result: dict[str, float] = {}
        for step in bar:
            # batches and noise are functions of (seed, step): a resumed run sees the same ones
            epoch, i = divmod(step - 1, per_epoch)
            order = torch.randperm(len(x_train), generator=_gen(tc.seed, 1, epoch))
            x = x_train[order[i * tc.batch_size : (i + 1) * tc.batch_size].to(device)]
            noisy = ae_models.corrupt(x, ac, _gen(tc.seed, 2, step))
            model.train()
            code, out = model(noisy)
            loss = ae_models.loss_fn(out, code, x, ac)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            opt.step()
            done[0] = step
            schedule.step()
            if step % tc.log_every == 0:
                metrics.write(step, "train", {"loss": loss.item()})
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if (tc.eval_every and step % tc.eval_every == 0) or step == tc.max_steps:
                result = {**self._evaluate(model, x_eval, ac, tc.seed), "pca_mse": pca_mse}
                metrics.write(step, "eval", result)
            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                save_checkpoint(
                    run_dir,
                    step,
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": schedule.state_dict(),
                        "step": step,
                        "identity": identity,
                    },
                    keep=tc.keep_checkpoints,
                )
        if not result:  # nothing left to train (resumed at the end): evaluate once
            result = {**self._evaluate(model, x_eval, ac, tc.seed), "pca_mse": pca_mse}
        self._outputs(run_dir, model, x_all, data, cfg)
        if cfg.log.plots:
            self._plots(run_dir, model, x_all, x_eval, data, ac, tc.seed, eval_rows)
        log.info(
            "autoencoder: held-out mse %.5f (PCA at %d: %.5f)", result["mse"], ac.code_size, pca_mse
        )
        return result

    @torch.no_grad()
    def _evaluate(self, model, x: torch.Tensor, ac: AutoencoderConfig, seed: int) -> dict:
        model.eval()
        _, out = model(x)
        recon = ae_models.reconstruction(out, ac)
        result = {"mse": float(((recon - x) ** 2).mean())}
        if ac.loss == "bce":
            result["bce"] = float(
                torch.nn.functional.binary_cross_entropy(recon.clamp(1e-7, 1 - 1e-7), x)
            )
        if ac.noise != "none":
            noisy = ae_models.corrupt(x, ac, _gen(seed, 3, 0))
            _, out = model(noisy)
            denoised = ae_models.reconstruction(out, ac)
            result["denoised_mse"] = float(((denoised - x) ** 2).mean())
            result["noisy_mse"] = float(((noisy - x) ** 2).mean())
        return result

    @torch.no_grad()
    def _codes(self, model, x: torch.Tensor) -> np.ndarray:
        model.eval()
        return torch.cat([model(c)[0] for c in x.split(4096)]).cpu().numpy()

    def _outputs(self, run_dir: Path, model, x_all, data, cfg) -> None:
        out = begin_outputs(run_dir)
        arrays.save_outputs(
            out, data, self._codes(model, x_all), {"code_size": cfg.stage.code_size}
        )
        save_file(
            {k: v.contiguous().cpu() for k, v in model.state_dict().items()},
            out / "model.safetensors",
        )
        (out / "autoencoder.json").write_text(
            json.dumps(
                {
                    "dim": int(x_all.shape[1]),
                    "image_shape": data.image_shape,
                    "autoencoder": vars(cfg.stage),
                },
                indent=1,
            )
        )
        finish_outputs(run_dir)

    @torch.no_grad()
    def _plots(self, run_dir, model, x_all, x_eval, data, ac, seed, eval_rows) -> None:
        plots = run_dir / "plots"
        model.eval()
        if data.image_shape is not None:
            x = x_eval[:12]
            noisy = ae_models.corrupt(x, ac, _gen(seed, 3, 0))
            rows = {"input": x}
            if ac.noise != "none":
                rows["noisy"] = noisy
            rows["reconstruction"] = ae_models.reconstruction(model(noisy)[1], ac)
            pictures.image_rows(
                {k: v.cpu().numpy() for k, v in rows.items()},
                data.image_shape,
                plots / "reconstructions.png",
                "held-out examples",
            )
            filters = model.filters().cpu().numpy()
            shape = data.image_shape if ac.arch == "mlp" else filters.shape[-2:]
            flat = (
                filters.reshape(filters.shape[0], -1)[:64] if ac.arch == "mlp" else filters[:64, 0]
            )
            pictures.image_grid(
                flat.reshape(len(flat), -1),
                tuple(shape),
                plots / "filters.png",
                "first-layer filters",
            )
        codes = self._codes(model, x_all)
        view, how = pictures.project_2d(codes)
        pictures.scatter_2d(view, data.labels, plots / "codes.png", f"codes{how}")


def _gen(seed: int, purpose: int, index: int) -> torch.Generator:
    """A CPU generator for one (purpose, step): batch order, training noise, eval noise."""
    return torch.Generator().manual_seed(seed * 1_000_003 + purpose * 100_000_007 + index)


def _pca_mse(x_train: np.ndarray, x_eval: np.ndarray, code_size: int) -> float:
    """Held-out MSE of PCA with `code_size` components: the best linear autoencoder."""
    from sklearn.decomposition import PCA

    n_comp = min(code_size, x_train.shape[1], len(x_train))
    pca = PCA(n_comp, random_state=0).fit(x_train)
    recon = pca.inverse_transform(pca.transform(x_eval))
    return float(((recon - x_eval) ** 2).mean())


def decode_codes(outputs: Path, codes: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """Decode codes with the autoencoder saved in an outputs/ folder (e.g. K-means centroids
    of its codes, as images); None when that folder holds no image autoencoder."""
    from safetensors.torch import load_file

    meta_file = outputs / "autoencoder.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if not meta.get("image_shape"):
        return None
    ac = AutoencoderConfig(**meta["autoencoder"])
    shape = tuple(meta["image_shape"])
    model = ae_models.build(ac, meta["dim"], shape)
    model.load_state_dict(load_file(outputs / "model.safetensors"))
    with torch.no_grad():
        out = model.decoder(torch.from_numpy(np.asarray(codes, dtype=np.float32)))
        images = ae_models.reconstruction(out.reshape(len(codes), -1), ac)
    return images.numpy(), shape
