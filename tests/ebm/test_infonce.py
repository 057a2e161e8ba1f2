"""InfoNCE gathers negatives from every process with gradients: 2 processes give the same loss
and gradients as 1 process on the concatenated batch."""

import subprocess
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from pipeline.objectives.infonce import InfoNCE, InfoNCEModule
from tests.conftest import _free_port, env

HERE = Path(__file__).resolve().parent


def make_module() -> InfoNCEModule:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return InfoNCEModule(BertModel(config, add_pooling_layer=False), 0.05, "mean", symmetric=True)


def make_batch() -> dict:
    """8 blocks of 16 tokens, two random span crops of each (dropout is off: deterministic)."""
    objective = InfoNCE(InfoNCE.Config(views="crop", crop_min=0.5))
    objective.cls_id, objective.sep_id, objective.pad_id = 1, 2, 0
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(5, 50, (8, 16), generator=g)
    blocks[:, 0], blocks[:, -1] = 1, 2
    return objective.collate({"input_ids": blocks}, g)


def test_span_crops_are_wrapped_spans_of_the_block():
    objective = InfoNCE(InfoNCE.Config(views="crop", crop_min=0.5))
    objective.cls_id, objective.sep_id, objective.pad_id = 1, 2, 0
    blocks = torch.arange(100, 100 + 4 * 20).view(4, 20)
    out, mask = objective.crop(blocks, torch.Generator().manual_seed(3))
    for row, m, block in zip(out, mask, blocks):
        length = int(m.sum())
        assert row[0] == 1 and row[length - 1] == 2 and (row[length:] == 0).all()
        span = row[1 : length - 1]
        assert 9 <= len(span) <= 18  # at least crop_min of the 18 inner tokens
        start = int((block == span[0]).nonzero())
        assert torch.equal(block[start : start + len(span)], span)


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), str(HERE / "infonce_worker.py"), str(out),
           str(HERE)]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=HERE.parents[1], env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)

    module = make_module()
    loss, metrics = module(**make_batch())
    loss.backward()
    # 8 texts in both cases: 7 negatives per query, from both processes under DDP
    assert float(metrics["negatives"]) == float(ddp["negatives"]) == 7.0
    # float32 sums in a different order: equal to ~1e-6 relative
    torch.testing.assert_close(ddp["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    assert loss.item() > 0.1  # not a trivial batch
    grads = {k: p.grad for k, p in module.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp["grads"].keys()
    for k in grads:
        torch.testing.assert_close(ddp["grads"][k], grads[k], rtol=1e-4, atol=1e-6, msg=k)


def test_model_card_documents_the_pooling():
    from pipeline.config import load_config
    from pipeline.model_card import render
    from pipeline.train_config import RunConfig

    cfg = load_config(RunConfig, HERE.parents[1] / "configs/ebm/infonce-tiny.yaml")
    notes = InfoNCE(cfg.objective).model_card_notes()
    assert "## Sentence embeddings (InfoNCE)" in notes and cfg.objective.pooling in notes
    card = render(cfg, [], notes)
    assert notes.rstrip() in card
    assert card.index(notes.rstrip()) < card.index("## Intended use and limits")
