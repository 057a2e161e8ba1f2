"""Submit a training run through the sbatch templates in `slurm/` (see slurm/README.md).

The templates are the checkout's `slurm/`, or, installed without a checkout, the copy the
wheel ships (`pipeline/_recipes/slurm`, see recipes.py). The job runs in the checkout's root
(its runs/ folder), or without a checkout in the folder `submit` was called from, never in the
installed package: PIPELINE_WORKDIR tells the templates so.

`plan_submission` validates everything it can before anything reaches SLURM (the config itself,
nodes/GPUs against the template, overrides the template could not pass on) and returns the
exact `sbatch` command and the environment variables the template reads; `render` prints them
with the template's text, `submit` runs them. The templates stay the single source of the job
logic (launch, ranks, preemption): this module only fills in their parameters.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import recipes
from pipeline.engine.setup import SetupError

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = {
    "train": "train.sbatch",
    "multinode": "train-multinode.sbatch",
    "torchrun": "train-torchrun.sbatch",
    "deepspeed": "train-deepspeed.sbatch",
    "cpu": "train-cpu.sbatch",
}
# Names common.sh expands inside the job in OUTPUT_DIR and OVERRIDES (`${NAME}` or `$NAME`).
PLACEHOLDERS = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_NNODES",
)
# Template variables this command decides: removed from the submitting environment first, so a
# stale one exported in the user's shell cannot leak into the job (sbatch runs with --export=ALL).
OWNED_VARIABLES = (
    "CONFIG",
    "OVERRIDES",
    "OUTPUT_DIR",
    "GPUS_PER_NODE",
    "PROCS_PER_NODE",
    "DEEPSPEED_CONFIG",
    "PIPELINE_ROOT",
    "PIPELINE_WORKDIR",
    "PIPELINE_CMD",
)


class SlurmError(SetupError):
    """A submission that cannot work (bad options, no sbatch, sbatch refused it)."""


@dataclass
class SubmitRequest:
    config: str
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int | None = None
    procs_per_node: int = 1
    template: str | None = None
    partition: str | None = None
    time: str | None = None
    output_dir: str | None = None
    signal_seconds: int | None = None
    array: str | None = None
    job_name: str | None = None
    log: str | None = None
    sbatch_args: list[str] = field(default_factory=list)


@dataclass
class SbatchPlan:
    template: str
    """Key of TEMPLATES (cpu, train, multinode, ...)."""
    script: str
    """The template: slurm/X.sbatch in a checkout (relative to `cwd`), else its absolute path."""
    options: list[str]
    """sbatch options, `--parsable` first."""
    variables: dict[str, str]
    """Environment variables the template reads, as this command sets them."""
    cwd: Path
    """Where sbatch runs, so SLURM_SUBMIT_DIR, and where the job runs: the repository root in a
    checkout, else the folder the submission was made from."""
    job_name: str
    log: str
    """Absolute `--output` pattern (%x, %j, %A, %a...)."""
    output_dir: str | None
    """OUTPUT_DIR as given to the job (None: the template's runs/<job name>-<job id>)."""
    array: bool = False
    warnings: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return ["sbatch", *self.options, self.script]

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        for name in OWNED_VARIABLES:
            env.pop(name, None)
        env.update(self.variables)
        return env


def strategy_template(strategy: str) -> str | None:
    """The sbatch template a strategy needs (DeepSpeed: its own launcher), if any."""
    from pipeline.engine.strategy import strategy_class

    return strategy_class(strategy).slurm_template


def choose_template(nodes: int, gpus_per_node: int, strategy: str) -> str:
    """No GPUs: cpu; a strategy with its own template (DeepSpeed); one node: train; else
    multinode."""
    if gpus_per_node == 0:
        return "cpu"
    return strategy_template(strategy) or ("train" if nodes == 1 else "multinode")


def in_checkout() -> bool:
    """True when this package runs from a source checkout (its slurm/ and runs/ at the root)."""
    return recipes.root() == REPO_ROOT


def job_dir(cwd: Path) -> Path:
    """Where the job runs and relative paths point: the checkout's root, else `cwd` (installed
    from a wheel: never the package folder)."""
    return REPO_ROOT if in_checkout() else cwd.resolve()


def plan_submission(req: SubmitRequest) -> SbatchPlan:
    """Validate the request and the config (ConfigError/SlurmError) and build the sbatch call."""
    from pipeline.config import load_config
    from pipeline.train_config import RunConfig

    cwd = Path.cwd()
    work = job_dir(cwd)
    problems = _option_problems(req)
    if problems:
        raise SlurmError(_join(problems))
    overrides, output_dir = _split_output_dir(req.overrides, req.output_dir)
    overrides = _compact_overrides(overrides)

    # A bad config fails here, before anything is submitted; placeholders get sample values.
    sample = {
        "SLURM_ARRAY_TASK_ID": _first_task(req.array),
        "SLURM_ARRAY_JOB_ID": "1",
        "SLURM_JOB_ID": "1",
        "SLURM_JOB_NAME": req.job_name or "pipeline",
        "SLURM_NNODES": str(req.nodes),
    }
    checked = [_expand(o, sample) for o in overrides]
    if output_dir is not None:
        checked.append(f"output_dir={_expand(output_dir, sample)}")
    if not req.array and any("SLURM_ARRAY_" in o for o in [*overrides, output_dir or ""]):
        raise SlurmError("${SLURM_ARRAY_...} is only set in array jobs: add --array SPEC")
    cfg = load_config(RunConfig, req.config, checked)

    gpus = 0 if req.gpus_per_node is None else req.gpus_per_node
    template = req.template or choose_template(req.nodes, gpus, cfg.engine.strategy)
    problems = _template_problems(template, req, gpus, cfg.engine.strategy)
    if problems:
        raise SlurmError(_join(problems))
    script = Path("slurm") / TEMPLATES[template]
    if not in_checkout():
        script = recipes.slurm_dir() / TEMPLATES[template]
    if not (recipes.root() / script).is_file():
        raise SlurmError(f"template {recipes.root() / script} not found (a broken install?)")
    job_name = req.job_name or _default_job_name(TEMPLATES[template])

    config = str(recipes.resolve(req.config))  # a shipped recipe's name: its file
    variables = {"CONFIG": _for_job(config, cwd, work), "OVERRIDES": " ".join(overrides)}
    job_output_dir = None if output_dir is None else _for_job(output_dir, cwd, work)
    if job_output_dir is not None:
        variables["OUTPUT_DIR"] = job_output_dir
    if template == "cpu":
        variables["PROCS_PER_NODE"] = str(req.procs_per_node)
    else:
        variables["GPUS_PER_NODE"] = str(gpus)
    if template == "deepspeed" and cfg.engine.deepspeed_config:
        # a shipped name (deepspeed/zero2, configs/deepspeed/zero2.json): the install's file
        shipped = str(recipes.resolve(cfg.engine.deepspeed_config))
        variables["DEEPSPEED_CONFIG"] = _for_job(shipped, cwd, work)
    variables["PIPELINE_ROOT"] = str(recipes.root())  # where slurm/common.sh is
    if work != recipes.root():
        variables["PIPELINE_WORKDIR"] = str(work)
    # the job runs the interpreter that validated the config (shared filesystem)
    variables["PYTHON"] = os.environ.get("PYTHON") or sys.executable

    options = ["--parsable", "--export=ALL", f"--nodes={req.nodes}"]
    if template != "cpu":
        options.append(f"--gpus-per-node={gpus}")
    if req.job_name:
        options.append(f"--job-name={req.job_name}")
    if req.partition:
        options.append(f"--partition={req.partition}")
    if req.time:
        options.append(f"--time={req.time}")
    if req.signal_seconds is not None:
        options.append(f"--signal=B:USR1@{req.signal_seconds}")
    if req.array:
        options.append(f"--array={req.array}")
    default_log = "slurm-%x-%A_%a.out" if req.array else "slurm-%x-%j.out"
    log = str((cwd / (req.log or default_log)).absolute())
    options.append(f"--output={log}")
    options.extend(req.sbatch_args)

    warnings = []
    if cfg.train.resume == "never":
        warnings.append("train.resume=never: a job requeued after preemption starts over")
    return SbatchPlan(
        template=template,
        script=str(script),
        options=options,
        variables=variables,
        cwd=work,
        job_name=job_name,
        log=log,
        output_dir=job_output_dir,
        array=bool(req.array),
        warnings=warnings,
    )


def render(plan: SbatchPlan) -> str:
    """What --print shows: the sbatch command with its variables, then the template's text."""
    lines = [f"# not submitted (--print); the submission, run from {plan.cwd}:"]
    lines += [f"{name}={shlex.quote(value)} \\" for name, value in plan.variables.items()]
    lines.append(shlex.join(plan.command()))
    lines.append("")
    lines.append(
        f"# {plan.script} (options on the sbatch command line win over its #SBATCH lines):"
    )
    lines.append((recipes.root() / plan.script).read_text().rstrip("\n"))
    return "\n".join(lines) + "\n"


def submit(plan: SbatchPlan) -> str:
    """Run sbatch; returns the job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "`sbatch` not found on PATH: submit from a SLURM login node (or start the local "
            "cluster: scripts/slurm_cluster.sh up); --print shows the command without submitting"
        )
    try:
        proc = subprocess.run(
            plan.command(),
            cwd=plan.cwd,
            env=plan.environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        raise SlurmError("sbatch did not answer within 120 s (is slurmctld up?)") from None
    reply = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not reply.isdigit():
        detail = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise SlurmError(
            f"sbatch refused the job: {detail}\n  command: {shlex.join(plan.command())}"
        )
    return reply


def log_path(plan: SbatchPlan, job_id: str) -> str:
    """The --output pattern with what is known at submission expanded (%a stays in arrays)."""
    known = {"%": "%", "x": plan.job_name, "A": job_id, "u": getpass.getuser()}
    if not plan.array:
        known.update(j=job_id, a="4294967294")
    return re.sub(r"%([%xjAua])", lambda m: known.get(m.group(1), m.group(0)), plan.log)


def run_folder(plan: SbatchPlan, job_id: str) -> str:
    if plan.output_dir is not None:
        return str(plan.cwd / plan.output_dir)  # an absolute output_dir stays as it is
    task = "_<array task>" if plan.array else ""
    return str(plan.cwd / "runs" / f"{plan.job_name}-{job_id}{task}")


# --------------------------------------------------------------------------- helpers


def _option_problems(req: SubmitRequest) -> list[str]:
    problems = []
    if req.template is not None and req.template not in TEMPLATES:
        problems.append(f"--template must be one of {', '.join(TEMPLATES)}, got {req.template!r}")
    if req.nodes < 1:
        problems.append(f"--nodes must be >= 1, got {req.nodes}")
    if req.gpus_per_node is not None and req.gpus_per_node < 0:
        problems.append(f"--gpus-per-node must be >= 0, got {req.gpus_per_node}")
    if req.gpus_per_node is None and req.template != "cpu":
        problems.append("give --gpus-per-node G (0, or --template cpu, for a CPU-only run)")
    if req.procs_per_node < 1:
        problems.append(f"--procs-per-node must be >= 1, got {req.procs_per_node}")
    if req.signal_seconds is not None and req.signal_seconds < 1:
        problems.append(f"--signal-seconds must be >= 1, got {req.signal_seconds}")
    if req.array is not None and not re.fullmatch(r"[0-9][0-9,\-:%]*", req.array):
        problems.append(f"--array must look like 0-3, 1,5,7 or 0-15%4, got {req.array!r}")
    return problems


def _template_problems(template: str, req: SubmitRequest, gpus: int, strategy: str) -> list[str]:
    problems = []
    if template == "cpu" and gpus > 0:
        problems.append(f"the cpu template uses no GPUs; got --gpus-per-node {gpus}")
    if template != "cpu" and gpus == 0:
        problems.append(f"the {template} template needs --gpus-per-node >= 1 (or --template cpu)")
    if template != "cpu" and req.procs_per_node != 1:
        problems.append("--procs-per-node is for the cpu template; GPU templates start one per GPU")
    if template == "train" and req.nodes != 1:
        problems.append(
            f"the train template runs on one node; for --nodes {req.nodes} use multinode, "
            "torchrun or deepspeed"
        )
    if template == "deepspeed" and strategy_template(strategy) != template:
        problems.append("the deepspeed template needs engine.strategy=deepspeed in the config")
    return problems


def _split_output_dir(overrides: list[str], output_dir: str | None) -> tuple[list[str], str | None]:
    """An `output_dir=...` override becomes OUTPUT_DIR (the template's --output-dir would win
    over it); --output-dir wins over both, as in `python -m pipeline train`."""
    rest = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() == "output_dir":
            output_dir = output_dir if output_dir is not None else value
        else:
            rest.append(item)
    return rest, output_dir


def _compact_overrides(overrides: list[str]) -> list[str]:
    """The templates split OVERRIDES on blanks: rewrite a YAML value with blanks
    (`{hidden_size: 64, ...}`) as compact JSON (also YAML, same value), or refuse it."""
    out, problems = [], []
    for item in overrides:
        if not re.search(r"\s", item):
            out.append(item)
            continue
        key, sep, value = item.partition("=")
        compact = None
        if sep and not re.search(r"\s", key.strip()):
            try:
                parsed = yaml.safe_load(value)
                candidate = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)
                if not re.search(r"\s", candidate) and yaml.safe_load(candidate) == parsed:
                    compact = f"{key.strip()}={candidate}"
            except (yaml.YAMLError, TypeError, ValueError):
                pass
        if compact is None:
            problems.append(
                f"override {item!r} has blanks the sbatch templates cannot pass on (they split "
                "OVERRIDES on blanks): write it without blanks or put it in the YAML"
            )
        else:
            out.append(compact)
    if problems:
        raise SlurmError(_join(problems))
    return out


def _expand(text: str, values: dict[str, str]) -> str:
    for name in PLACEHOLDERS:  # same order and forms as common.sh's _pipeline_expand
        text = text.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return text


def _first_task(array: str | None) -> str:
    match = re.match(r"\d+", array or "")
    return match.group(0) if match else "0"


def _for_job(path: str, cwd: Path, work: Path) -> str:
    """The job runs in `work`: a path given relative to `cwd` is rewritten relative to `work`
    when it lies inside it, else made absolute."""
    if os.path.isabs(path):
        return path
    full = Path(os.path.normpath(cwd.resolve() / path))
    try:
        return str(full.relative_to(work))
    except ValueError:
        return str(full)


def _default_job_name(script_name: str) -> str:
    """The template's #SBATCH --job-name (for the log and run folder names)."""
    text = (recipes.slurm_dir() / script_name).read_text()
    match = re.search(r"^#SBATCH\s+--job-name=(\S+)", text, flags=re.M)
    return match.group(1) if match else "pipeline"


def _join(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
