"""InfoNCE (`infonce`): a joint-embedding energy E(x, y) = -sim(f(x), f(y)) / tau over text.

Two views of each text (SimCSE: the same text twice, different dropout; or two random spans of
it) are positives; every other text's view in the global batch is a negative. The keys are
gathered from ALL processes with an all-gather that keeps gradients, so the number of negatives
grows with the world size and 2 processes train exactly as 1 process on the concatenated batch:
each process's loss averages over its own queries, DDP averages the gradients, and the gather's
backward sums the key gradients coming from every process.

The encoder is the bare encoder of any registered transformer family (model.name=bert:
presets, overrides or a from_pretrained MLM export); the export loads with `AutoModel`, and with
`SentenceTransformer(path)` (modules.json and the pooling config are written beside it). Sentence
embedding = the pooling named in `objective.pooling` of the last hidden states, L2-normalised
(see the model card).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline import registry
from pipeline.config import ConfigError
from pipeline.data import text
from pipeline.models.base import encoder_family
from pipeline.objectives.base import Datasets, Objective, ObjectiveConfig
from pipeline.protocols import RunContext


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each process the sum, over all processes, of the
    gradients of its own slice (torch.distributed.nn's version needs reduce_scatter or
    all_to_all, which gloo lacks on some builds; all_reduce works everywhere)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), len(x)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows of every process in rank order, offset of this process's rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * len(x)


def write_sentence_transformers(folder: str, dim: int, pooling: str, max_seq_length: int) -> None:
    """The files `SentenceTransformer(folder)` reads, beside the transformers ones: modules
    Transformer (this folder) -> Pooling (`pooling`, as `pool`) -> Normalize, so its `encode`
    returns this objective's embeddings (`InfoNCEModule.embed`). Written as sentence-transformers
    3+ writes them; the package itself is not needed to export."""
    import json
    from pathlib import Path

    root = Path(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]  # fmt: skip
    (root / "modules.json").write_text(json.dumps(modules, indent=2))
    (root / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2)
    )
    (root / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    )
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }, indent=2))  # fmt: skip
    (root / "2_Normalize").mkdir(exist_ok=True)  # Normalize has no settings (as ST saves it)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class InfoNCEModule(nn.Module):
    def __init__(self, encoder: nn.Module, temperature: float, pooling: str, symmetric: bool):
        super().__init__()
        self.encoder = encoder
        self.temperature, self.pooling, self.symmetric = temperature, pooling, symmetric

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        return F.normalize(pool(hidden, attention_mask, self.pooling).float(), dim=-1)

    def _direction(self, queries: torch.Tensor, keys: torch.Tensor):
        all_keys, offset = gather_with_grad(keys)
        logits = queries @ all_keys.T / self.temperature  # = -E(x, y) for every pair
        labels = torch.arange(len(queries), device=queries.device) + offset
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, accuracy, len(all_keys)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                input_ids_b: torch.Tensor, attention_mask_b: torch.Tensor):  # fmt: skip
        n = len(input_ids)
        # one encoder pass for both views: dropout draws independent masks per row
        z = self.embed(
            torch.cat([input_ids, input_ids_b]), torch.cat([attention_mask, attention_mask_b])
        )
        za, zb = z[:n], z[n:]
        loss, accuracy, n_keys = self._direction(za, zb)
        if self.symmetric:
            loss_b, accuracy_b, _ = self._direction(zb, za)
            loss, accuracy = (loss + loss_b) / 2, (accuracy + accuracy_b) / 2
        with torch.no_grad():
            positive = (za * zb).sum(-1).mean()
        return loss, {
            "loss": loss.detach(),
            "contrastive_accuracy": accuracy,
            "positive_similarity": positive,
            "negatives": torch.tensor(float(n_keys - 1)),
        }


class HeldOut:
    """Evaluation blocks, marked so `collate` always makes span-crop views of them: dropout
    is off in evaluation, so two dropout views would be identical and the task trivial."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, idx: list[int]) -> dict:
        return {**self.blocks[idx], "heldout": True}


@registry.register("objective", "infonce")
class InfoNCE(Objective):
    @dataclass
    class Config(ObjectiveConfig):
        name: str = "infonce"
        temperature: float = 0.05
        """tau in E(x, y) = -cos(f(x), f(y)) / tau (SimCSE uses 0.05)."""
        views: Literal["dropout", "crop"] = "dropout"
        """dropout: the same text twice (SimCSE, needs model.dropout > 0); crop: two random spans."""
        crop_min: float = 0.5
        """With views=crop, each span keeps at least this fraction of the block's tokens."""
        pooling: Literal["mean", "cls"] = "mean"
        """Sentence embedding: mean of the last hidden states over real tokens, or [CLS]'s."""
        symmetric: bool = False
        """Also contrast the second view against the first (both directions averaged)."""

        def validate(self) -> list[str]:
            problems = []
            if self.temperature <= 0:
                problems.append(f"temperature must be > 0, got {self.temperature}")
            if not 0 < self.crop_min <= 1:
                problems.append(f"crop_min must be in (0, 1], got {self.crop_min}")
            return problems

    cfg: Config

    def build_data(self, ctx: RunContext) -> Datasets:
        corpus = text.load_corpus(ctx)
        family = encoder_family(ctx.cfg.model.name, "infonce")
        tok = text.get_tokenizer(ctx, corpus, need_mask=False, trainer=family.tokenizer_trainer())
        ctx.tokenizer = tok
        self._set_tokens(tok)
        template = family.block_template(tok)
        train, ev = text.packed(ctx, corpus, tok, template)
        ev = HeldOut(ev) if ev is not None else None
        return Datasets(train, ev, tokens_per_example=2 * ctx.cfg.data.block_size)

    def _set_tokens(self, tok) -> None:
        self.cls_id, self.sep_id, self.pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id

    def build_module(self, ctx: RunContext) -> nn.Module:
        family = encoder_family(ctx.cfg.model.name, "infonce")
        tok = ctx.tokenizer
        if tok is None:
            raise ConfigError(
                ["objective infonce needs the run's tokenizer (run folder/tokenizer)"]
            )
        self._set_tokens(tok)
        mcfg = ctx.cfg.model
        if self.cfg.views == "dropout" and mcfg.dropout == 0:
            raise ConfigError(
                ["objective.views=dropout needs model.dropout > 0 (else both views are identical)"]
            )
        encoder = family.build_encoder(mcfg, len(tok), tok.pad_token_id)
        if family.max_tokens(encoder.config) < ctx.cfg.data.block_size:
            raise ConfigError(
                [
                    f"data.block_size={ctx.cfg.data.block_size} exceeds the model's "
                    f"{family.max_tokens(encoder.config)} positions (model.max_position_embeddings)"
                ]
            )
        return InfoNCEModule(encoder, self.cfg.temperature, self.cfg.pooling, self.cfg.symmetric)

    def collate(self, examples: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(examples["input_ids"]).long()
        if self.cfg.views == "dropout" and "heldout" not in examples:
            mask = torch.ones_like(ids)
            return {"input_ids": ids, "attention_mask": mask, "input_ids_b": ids,
                    "attention_mask_b": mask}  # fmt: skip
        a, mask_a = self.crop(ids, generator)
        b, mask_b = self.crop(ids, generator)
        return {
            "input_ids": a,
            "attention_mask": mask_a,
            "input_ids_b": b,
            "attention_mask_b": mask_b,
        }

    def crop(
        self, ids: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random span of each block's inner tokens, re-wrapped as [CLS] span [SEP] + padding."""
        n, length = ids.shape
        inner = length - 2
        low = max(1, int(round(self.cfg.crop_min * inner)))
        span = torch.randint(low, inner + 1, (n,), generator=generator)
        start = (torch.rand(n, generator=generator) * (inner - span + 1)).long() + 1
        pos = torch.arange(length).expand(n, length)
        inside = (pos >= 1) & (pos <= span[:, None])
        source = (start[:, None] + pos - 1).clamp(0, length - 1)
        out = torch.full_like(ids, self.pad_id)
        out[:, 0] = self.cls_id
        out = torch.where(inside, ids.gather(1, source), out)
        out.scatter_(1, (span + 1)[:, None], self.sep_id)
        mask = (pos <= span[:, None] + 1).long()
        return out, mask

    def export(self, module: nn.Module, folder: str, ctx: RunContext) -> None:
        module.encoder.save_pretrained(folder, safe_serialization=True)
        if ctx.tokenizer is not None:
            ctx.tokenizer.save_pretrained(folder)
        write_sentence_transformers(
            folder, module.encoder.config.hidden_size, self.cfg.pooling, ctx.cfg.data.block_size
        )

    def model_card_notes(self) -> str:
        how = {
            "mean": "the mean of `last_hidden_state` over real tokens (attention_mask == 1)",
            "cls": "`last_hidden_state[:, 0]` (the [CLS] token)",
        }[self.cfg.pooling]
        return "\n".join([
            "## Sentence embeddings (InfoNCE)",
            f"Trained contrastively (temperature {self.cfg.temperature}, views: "
            f"{self.cfg.views}); the embedding of a text is {how}, L2-normalised; compare "
            "texts by cosine similarity. No pooler layer is included.",
            "```python",
            "from transformers import AutoModel, AutoTokenizer",
            "tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)",
            "batch = tok(texts, padding=True, truncation=True, return_tensors='pt')",
            "h = model(**batch).last_hidden_state",
            "m = batch['attention_mask'].unsqueeze(-1).float()"
            if self.cfg.pooling == "mean" else "",
            "emb = (h * m).sum(1) / m.sum(1)" if self.cfg.pooling == "mean" else "emb = h[:, 0]",
            "emb = torch.nn.functional.normalize(emb, dim=-1)",
            "```",
            "",
            "The same embeddings with sentence-transformers (the export has its modules.json and "
            "pooling config):",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            "emb = SentenceTransformer(path).encode(texts)  # pooled and L2-normalised",
            "```",
            "",
        ])  # fmt: skip
