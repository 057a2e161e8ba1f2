"""`python -m pipeline publish EXPORT_DIR --repo OWNER/NAME [--private] [--revision R] [--dry-run]`."""

from __future__ import annotations

import argparse

from pipeline.cli import command


@command("publish", "upload an export (safetensors, JSON, tokenizer, card) to the Hugging Face Hub")
def publish_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline publish",
        description="Create the Hub repo when missing and upload the export's safetensors, JSON, "
        "tokenizer and text files; anything else (pickles) is refused. The token comes from "
        "HF_TOKEN or the huggingface_hub login (`hf auth login`), never from the command line.",
    )
    parser.add_argument("export_dir", help="a Hugging Face folder, e.g. runs/tiny/export")
    parser.add_argument("--repo", required=True, help="OWNER/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument(
        "--revision", default="main", help="branch to commit to (created if missing)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list exactly what would be uploaded and where"
    )
    args = parser.parse_args(argv)
    from pipeline.hub import publish

    out = publish(
        args.export_dir,
        args.repo,
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
    )
    if out:
        print(out)
    return 0
