"""The shipped recipes (configs/) and sbatch templates (slurm/), in a checkout or a wheel.

In a source checkout they are the top-level `configs/` and `slurm/` folders. A wheel carries
the same files under `pipeline/_recipes/` (symlinks to those folders in the checkout, whose
targets setuptools copies into the wheel: pyproject's package-data), so `pip install` without
a checkout can still `python -m pipeline train mlm/tiny`. `python -m pipeline recipes` lists them.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SUFFIXES = (".yaml", ".yml", ".json")


def root() -> Path:
    """The folder holding configs/ and slurm/: the checkout's root, else the installed copy."""
    checkout = PACKAGE.parent
    if (checkout / "configs").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout
    return PACKAGE / "_recipes"


def configs_dir() -> Path:
    return root() / "configs"


def slurm_dir() -> Path:
    return root() / "slurm"


def names() -> list[str]:
    """Every shipped recipe by name: its path under configs/ without the suffix (mlm/tiny)."""
    folder = configs_dir()
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES]
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in found)


def find(name: str | Path) -> Path | None:
    """The shipped recipe called `name` (mlm/tiny, mlm/tiny.yaml or configs/mlm/tiny.yaml)."""
    text = Path(name).as_posix()
    if text.startswith("configs/"):
        text = text[len("configs/") :]
    folder = configs_dir()
    candidates = [folder / text] if Path(text).suffix in SUFFIXES else []
    candidates += [folder / (text + suffix) for suffix in SUFFIXES]
    for candidate in candidates:
        if candidate.is_file() and folder.resolve() in candidate.resolve().parents:
            return candidate
    return None


def resolve(path: str | Path) -> Path:
    """`path` itself when it is a file; else the shipped recipe of that name; else `path`
    unchanged (the caller reports it missing)."""
    if Path(path).is_file():
        return Path(path)
    return find(path) or Path(path)
