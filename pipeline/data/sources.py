"""Text sources through `datasets.load_dataset`: Hub names, local files or folders, the embedded
corpus. Problems (missing file, not UTF-8, missing column, no text) are raised as `DataError`
naming the file/column before any tokenization or training starts."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from pipeline.data import embedded

# file extension -> datasets packaged builder
BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".npy": "numpy",
}
TEXT_EXTENSIONS = {".txt", ".text", ".json", ".jsonl", ".csv"}


class DataError(ValueError):
    """Bad input data, with the file, column or key that is wrong."""


@dataclass
class Source:
    """What `load_dataset` is called with."""

    path: str  # builder name ("json", "text"...) or a Hub dataset name
    data_files: dict[str, list[str]] | None = None
    name: str | None = None
    split: str = "train"

    def describe(self) -> str:
        if self.data_files:
            files = [f for fs in self.data_files.values() for f in fs]
            return ", ".join(files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")
        return self.path + (f" ({self.name})" if self.name else "")

    def fingerprint(self) -> str:
        """Identity of the raw data for caches: files with size and mtime, or the Hub name."""
        if self.data_files:
            parts = []
            for f in sorted(f for fs in self.data_files.values() for f in fs):
                st = Path(f).stat()
                parts.append(f"{Path(f).resolve()}:{st.st_size}:{st.st_mtime_ns}")
            return "|".join(parts) + f"#{self.split}"
        return f"hub:{self.path}:{self.name}:{self.split}"


def looks_local(path: str) -> bool:
    p = Path(path).expanduser()
    return (
        p.exists()
        or path.startswith((".", "/", "~"))
        or p.suffix.lower() in BUILDERS
        or path.endswith(("/", "\\"))
    )


def resolve(paths: list[str] | str, name: str | None = None, split: str = "train") -> Source:
    """Turn `data.path` into a `Source`; local paths are checked here, not in the middle of a run."""
    if isinstance(paths, str):
        paths = [paths]
    if len(paths) == 1 and paths[0].startswith("embedded:"):
        corpus = paths[0].split(":", 1)[1]
        try:
            files = embedded.materialize(corpus)
        except ValueError as err:
            raise DataError(f"data.path: {err}") from None
        if split not in files:
            raise DataError(f"embedded corpus {corpus!r} has splits {list(files)}, not {split!r}")
        return Source("json", {split: [files[split]]}, split=split)
    if len(paths) == 1 and not looks_local(paths[0]):
        return Source(paths[0], None, name=name, split=split)  # a Hub dataset name
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in BUILDERS)
            if not found:
                raise DataError(
                    f"data folder {raw!r} holds no data files ({', '.join(sorted(BUILDERS))})"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"data file {raw!r} does not exist")
    kinds = {BUILDERS.get(f.suffix.lower()) for f in files}
    if None in kinds:
        bad = next(f for f in files if f.suffix.lower() not in BUILDERS)
        raise DataError(
            f"data file {str(bad)!r} has an unsupported extension; use {', '.join(sorted(BUILDERS))}"
        )
    if len(kinds) > 1:
        raise DataError(f"data files mix formats ({', '.join(sorted(kinds))}); use one format")
    for f in files:
        check_readable(f)
    return Source(kinds.pop(), {split: [str(f) for f in files]}, split=split)


def check_readable(path: Path) -> None:
    """Fail early, naming the file, on unreadable, empty or non-UTF-8 text files."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if path.suffix.lower() in TEXT_EXTENSIONS:
                decoder_offset = 0
                decoder = codecs.getincrementaldecoder("utf-8")()
                while chunk := fh.read(1 << 22):
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError as err:
                        raise DataError(
                            f"data file {str(path)!r} is not UTF-8 text "
                            f"(byte 0x{chunk[err.start]:02x} at offset {decoder_offset + err.start})"
                        ) from None
                    decoder_offset += len(chunk)
            else:
                fh.read(1)
    except PermissionError:
        raise DataError(f"data file {str(path)!r} is not readable (permission denied)") from None
    if size == 0:
        raise DataError(f"data file {str(path)!r} is empty")


def load(source: Source, streaming: bool = False) -> Any:
    """`datasets.load_dataset` on a Source: a Dataset, or an IterableDataset when streaming."""
    try:
        return datasets.load_dataset(
            source.path,
            source.name,
            data_files=source.data_files,
            split=source.split,
            streaming=streaming,
        )
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataError(f"cannot load dataset {source.describe()!r}: {err}") from None
    except datasets.exceptions.DatasetGenerationError as err:
        # e.g. a malformed JSON line: the root cause names the row
        cause = err.__cause__ or err.__context__ or err
        reason = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise DataError(f"cannot read {source.describe()!r}: {reason}") from None
    except ValueError as err:
        if "split" in str(err).lower():
            raise DataError(f"dataset {source.describe()!r}: {err}") from None
        raise


def require_column(ds: Any, column: str, source: Source, key: str = "data.text_column") -> None:
    columns = list(ds.column_names or []) if ds.column_names is not None else None
    if columns is None and hasattr(ds, "features") and ds.features:
        columns = list(ds.features)
    if columns is not None and column not in columns:
        raise DataError(
            f"{key}={column!r} is not a column of {source.describe()}; "
            f"columns: {', '.join(columns) or 'none'}"
        )


def require_text(ds: Any, column: str, source: Source) -> None:
    """Map-style datasets only: at least one non-blank document."""
    if len(ds) == 0:
        raise DataError(f"dataset {source.describe()!r} has no rows")
    texts = ds[column][: min(len(ds), 100_000)]
    if not any(isinstance(t, str) and t.strip() for t in texts):
        raise DataError(f"dataset {source.describe()!r} has no text: every {column!r} is empty")
