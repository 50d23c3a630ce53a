"""Hyperparameter sweeps: `gpt-pretrain -m optim.lr=1e-4,3e-4,1e-3` (or any training command).

Hydra decides the points: its basic sweeper takes the grid of every `key=a,b,c`, `key=range(...)` or
`key=choice(...)`, and `hydra/sweeper=optuna` (hydra-optuna-sweeper) searches `interval()`/`tag(log,
...)` spaces with Optuna, minimising the value each trial returns. We use Hydra's own multirun
machinery (`Hydra.multirun`, what `@hydra.main` calls for `-m`) with one launcher of ours
(hydra_plugins/gpt_trials), which runs each point as its own training process:

- a trial is `python -m gpt.<command> <its overrides> run.dir=<run.dir>/<its swept values>`, or with
  `hydra.launcher.via=launcher` `python -m launcher <command> ...` (torchrun on this node's GPUs, or
  across a SLURM allocation with `hydra.launcher.prefix=[srun,--ntasks-per-node=1]`);
- its value is its best (or final: `hydra.launcher.objective=final_val_loss`) validation loss from
  its metrics.jsonl;
- `<trial run.dir>/trial.json` records a finished trial; re-running the same sweep reuses finished
  trials and resumes an interrupted one from its checkpoints (the run.dir contract), so a sweep
  interrupted (Ctrl-C, SIGTERM, a time limit) continues where it stopped;
- at the end a table of every trial and the best one is printed (and written to `<run.dir>/sweep.json`).

Free-text keys (paths, run.dir) are never swept: they are given to every trial exactly as typed.
"""

import json
import math
import re
import signal
import subprocess
import sys
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from gpt import log
from gpt.errors import ConfigError, GptError

logger = log.get("sweep")
RECORD = "trial.json"
SUMMARY = "sweep.json"
OBJECTIVES = ("best_val_loss", "final_val_loss")
VIA = ("process", "launcher")


@dataclass
class Trial:
    name: str
    run_dir: str
    args: List[str]
    status: str  # finished | stopped | failed
    step: int = 0
    best_val_loss: Optional[float] = None
    final_val_loss: Optional[float] = None
    error: Optional[str] = None
    reused: bool = False  # finished by an earlier run of the sweep


class TrialFailed(RuntimeError):
    """A failed trial, as the sweeper sees it (not a GptError: the sweep goes on to print its table)."""


class SweepStopped(GptError):
    """A trial stopped before its end (signal, train.stop_at): the sweep stops; re-running continues it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class TrialRunner:
    """The sweep's "task function": the gpt_trials launcher hands it each trial's overrides."""

    def __init__(self, command: str, text_args: List[str], fixed_keys: set, text_keys: set):
        self.command = command
        self.text_args = [a for a in text_args if a.partition("=")[0].lstrip("+") != "run.dir"]
        self.fixed_keys = fixed_keys
        self.text_keys = text_keys
        self.trials: List[Trial] = []
        self.sweep_dir = Path(".")
        self.via, self.prefix, self.objective = "process", [], "best_val_loss"
        self.signum = 0
        self._child: Optional[subprocess.Popen] = None

    def configure(self, *, sweep_dir: str, via: str, prefix: List[str], objective: str) -> None:
        if via not in VIA:
            raise ConfigError(f"hydra.launcher.via={via} is not one of {'|'.join(VIA)}")
        if objective not in OBJECTIVES:
            raise ConfigError(f"hydra.launcher.objective={objective} is not one of {'|'.join(OBJECTIVES)}")
        self.sweep_dir, self.via, self.prefix, self.objective = Path(sweep_dir), via, list(prefix), objective

    # -- one trial ---------------------------------------------------------------------------------
    def run_trial(self, overrides: List[str], index: int):
        from hydra.core.utils import JobReturn, JobStatus

        own = [o for o in overrides if _key(o) not in self.text_keys]
        swept = [o for o in own if _key(o) not in self.fixed_keys]
        name = trial_name(swept)
        run_dir = self.sweep_dir / name
        args = [*own, *self.text_args]
        trial = self._reuse(run_dir, args)
        if trial is None and self.signum:  # a signal between two trials: start no other
            raise SweepStopped(f"stopped by {signal.Signals(self.signum).name} before trial {name}; re-run the same "
                               f"command to continue the sweep", 130 if self.signum == signal.SIGINT else 0)
        if trial is None:
            argv = [*self.prefix, sys.executable, "-m", *((f"gpt.{self.command}",) if self.via == "process"
                                                          else ("launcher", self.command)), *args, f"run.dir={run_dir}"]
            logger.info("trial %d: %s -> %s", index, name, run_dir)
            rc, last_lines = self._run(argv)
            trial = self._result(name, run_dir, args, rc, last_lines)
            _write_json(run_dir / RECORD, asdict(trial))
        else:
            logger.info("trial %d: %s finished earlier (%s=%s), not run again", index, name, self.objective,
                        _fmt(getattr(trial, self.objective)))
        self.trials.append(trial)
        value = getattr(trial, self.objective)
        ret = JobReturn(overrides=overrides, working_dir=str(run_dir), task_name=self.command)
        if trial.status == "finished":
            ret.status, ret.return_value = JobStatus.COMPLETED, value
        else:
            ret.status, ret.return_value = JobStatus.FAILED, TrialFailed(f"trial {name}: {trial.error}")
        if trial.status == "stopped":
            code = 130 if self.signum == signal.SIGINT else 0
            raise SweepStopped(f"trial {name} stopped at step {trial.step} ({trial.error}); re-run the same command "
                               f"to continue the sweep (finished trials are kept, this one resumes)", code)
        return ret

    def _reuse(self, run_dir: Path, args: List[str]) -> Optional[Trial]:
        try:
            saved = json.loads((run_dir / RECORD).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("status") != "finished" or not isinstance(saved.get("args"), list) \
                or self.identity(saved["args"]) != self.identity(args):
            return None  # changed settings or unfinished: run it (its run.dir resumes)
        known = Trial.__dataclass_fields__
        return Trial(**{**{k: v for k, v in saved.items() if k in known}, "reused": True})

    def identity(self, args: List[str]) -> list:
        """What makes two trials the same run, whichever sweeper wrote their overrides (order, `1e-3` or
        `0.001`): Hydra overrides canonical and sorted, free-text ones exactly as typed."""
        hydra = sorted(f"{o.partition('=')[0]}={_canonical(o.partition('=')[2])}" for o in args
                       if _key(o) not in self.text_keys)
        return hydra + [o for o in args if _key(o) in self.text_keys]

    def _run(self, argv: List[str]) -> tuple[int, list]:
        """Run one trial, its stderr passed through (SIGTERM/SIGUSR1 reach it through `forward`, Ctrl-C from
        the terminal). Returns (exit status, its last stderr lines)."""
        last = deque(maxlen=20)
        try:
            self._child = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, errors="replace")
            try:
                for line in self._child.stderr:
                    sys.stderr.write(line)
                    last.append(line.rstrip("\n"))
                return self._child.wait(), list(last)
            except KeyboardInterrupt:
                self.signum = signal.SIGINT
                if self._child.poll() is None:
                    self._child.send_signal(signal.SIGTERM)  # finish the step and save, as the trainer does for Ctrl-C
                for line in self._child.stderr:
                    sys.stderr.write(line)
                    last.append(line.rstrip("\n"))
                return self._child.wait(), list(last)
        finally:
            self._child = None

    def forward(self, signum, frame) -> None:
        self.signum = signum
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)

    def _result(self, name: str, run_dir: Path, args: List[str], rc: int, last_lines: list) -> Trial:
        best, final = val_losses(run_dir)
        step, done = progress(run_dir)
        trial = Trial(name=name, run_dir=str(run_dir), args=args, status="finished", step=step, best_val_loss=best,
                      final_val_loss=final)
        saved_after_ctrl_c = self.signum == signal.SIGINT and rc == 128 + signal.SIGINT  # the trainer's exit after Ctrl-C
        if rc != 0 and not saved_after_ctrl_c:
            errors = [line for line in last_lines if ": error: " in line]
            trial.status, trial.error = "failed", (errors[-1] if errors else
                                                   f"exit status {rc}: {last_lines[-1] if last_lines else ''}")
        elif not done or self.signum:
            trial.status = "stopped"
            trial.error = "signal" if self.signum else "train.stop_at"
        elif best is None:
            trial.status, trial.error = "failed", "no validation loss in metrics.jsonl (set eval.every>0)"
        return trial

    # -- the end -----------------------------------------------------------------------------------
    def summary(self) -> str:
        """Every trial of this run of the sweep, in order, the best marked; one table for people."""
        rows = [("", "trial", "status", "step", "best val", "final val", "run.dir")]
        best = self.best()
        for t in self.trials:
            mark = "*" if best is not None and t is best else ""
            status = t.status + (" (earlier)" if t.reused else "")
            rows.append((mark, t.name, status, str(t.step), _fmt(t.best_val_loss), _fmt(t.final_val_loss), t.run_dir))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if best is not None:
            lines.append(f"best: {best.name} ({self.objective} {_fmt(getattr(best, self.objective))}) in {best.run_dir}")
        return "\n".join(lines)

    def best(self) -> Optional[Trial]:
        done = [t for t in self.trials if t.status == "finished" and getattr(t, self.objective) is not None]
        return min(done, key=lambda t: getattr(t, self.objective)) if done else None

    def write_summary(self) -> None:
        best = self.best()
        _write_json(self.sweep_dir / SUMMARY, {"objective": self.objective, "best": best.name if best else None,
                                               "trials": [asdict(t) for t in self.trials]})


def sweep(prog: str, config_name: str, overrides: List[str]) -> int:
    """`<prog> -m ...`: run every point of the sweep (see the module docstring); 0 when all finished."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gpt.config import loader, store
    from gpt.config.text import text_keys
    from gpt.config.training import TrainingConfig

    schema = loader.schema(config_name)
    if not issubclass(schema, TrainingConfig):
        raise ConfigError(f"-m runs a sweep of training runs; {prog} is not a training command")
    for o in overrides:
        if o.startswith(("hydra/launcher=", "hydra.launcher._target_")):
            raise ConfigError(f"{o}: sweeps run their trials with gpt's own launcher (hydra.launcher.via=process|launcher,"
                              f" hydra.launcher.prefix=[...]); see docs/training.md, sweeps")
    keys = set(text_keys(schema))
    aliased = loader.with_aliases(config_name, overrides)
    text_args = [o for o in aliased if "=" in o and o.partition("=")[0].lstrip("+") in keys]
    hydra_args = _last_per_key(loader.hydra_overrides(config_name, overrides, sweep=True))
    parser = OverridesParser.create()
    last = {}  # key -> is its last override a sweep (Hydra's later overrides win)
    for o in hydra_args:
        if "=" in o and not o.startswith("hydra") and _key(o) not in keys:
            last[_key(o)] = parser.parse_override(o).is_sweep_override()
    fixed = {k for k, swept in last.items() if not swept}
    extra = ["hydra/launcher=gpt_trials", "hydra.sweep.dir=${run.dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    if any(o.replace(" ", "") == "hydra/sweeper=optuna" for o in overrides):
        import optuna

        optuna.logging.disable_default_handler()  # its messages go through our log lines (stderr)
        optuna.logging.enable_propagation()
        sampler = [o.partition("=")[2] for o in overrides if o.startswith("hydra/sweeper/sampler=")]
        if not any(o.startswith("hydra.sweeper.sampler.seed=") for o in overrides) and sampler[-1:] != ["grid"]:
            extra.append("hydra.sweeper.sampler.seed=${train.seed}")  # the same points on a re-run: finished ones are reused

    store.register()
    try:  # Hydra's plugin scan finds it too; importing it here names the problem if it is not installed
        import hydra_plugins.gpt_trials.gpt_trials  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"sweeps need gpt's Hydra launcher plugin (hydra_plugins/gpt_trials), which is not "
                          f"importable ({e}); reinstall gpt (pip install -e .)") from None
    runner = TrialRunner(config_name, text_args, fixed, keys)
    GlobalHydra.instance().clear()
    failure: Optional[BaseException] = None
    code = 0
    # SIGTERM/SIGUSR1 (SLURM, kill): passed to the running trial, which saves; no other trial starts.
    previous = {s: signal.signal(s, runner.forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with initialize_config_dir(config_dir=str(loader.conf_dir()), version_base="1.3", job_name=config_name):
            GlobalHydra.instance().hydra.multirun(config_name=config_name, task_function=runner,
                                                  overrides=[*hydra_args, *extra], with_log_configuration=False)
    except SweepStopped as e:
        failure, code = e, e.exit_code
    except GptError:
        raise
    except Exception as e:  # a failed trial (the sweeper re-raises it) or a Hydra error
        failure, code = e, 1 if runner.trials else 2
    finally:
        GlobalHydra.instance().clear()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not runner.trials:
        if failure is not None:
            raise ConfigError(loader.one_line(failure))
        raise ConfigError("the sweep ran no trial")
    runner.write_summary()
    print(runner.summary(), flush=True)
    if failure is not None:
        message = str(failure) if isinstance(failure, (GptError, TrialFailed)) else loader.one_line(failure)
        print(f"{prog}: sweep {'stopped' if isinstance(failure, SweepStopped) else 'failed'}: {message}",
              file=sys.stderr, flush=True)
    elif any(t.status != "finished" for t in runner.trials):
        code = 1
    return code


def trial_name(swept: List[str]) -> str:
    """A directory name from a trial's swept overrides, the same whichever sweeper produced them
    (`optim.lr=1e-3` and Optuna's `optim.lr=0.001` are one trial)."""
    if not swept:
        return "default"
    parts = []
    for o in swept:
        key, _, value = o.partition("=")
        parts.append(f"{key.lstrip('+')}={_canonical(value)}")
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    if len(name) > 120:
        import hashlib

        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def _canonical(value: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        v = OverridesParser.create().parse_override(f"k={value}").value()
    except Exception:
        return value
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v) if isinstance(v, (int, str)) else value


def val_losses(run_dir: Path) -> tuple[Optional[float], Optional[float]]:
    """(best, final) validation loss of a run's metrics.jsonl; None where it has none."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None, None
    losses = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        v = record.get("val_loss") if isinstance(record, dict) else None
        if isinstance(v, (int, float)) and math.isfinite(v):
            losses.append(float(v))
    return (min(losses), losses[-1]) if losses else (None, None)


def progress(run_dir: Path) -> tuple[int, bool]:
    """(step of the latest checkpoint, whether the run is over: train.steps reached or stopped early)."""
    from gpt.checkpoint import format as fmt

    try:
        for ckpt in fmt.candidates(run_dir):
            meta = fmt.read_meta(ckpt)
            state, train = meta.get("trainer", {}), meta.get("config", {}).get("train", {})
            patience = meta.get("config", {}).get("eval", {}).get("early_stopping", {}).get("patience", 0)
            step = int(meta.get("step", 0))
            early = bool(patience) and state.get("evals_without_improvement", 0) >= patience
            return step, step >= int(train.get("steps", step + 1)) or early
    except (GptError, OSError, ValueError, TypeError):
        pass
    return 0, False


def _last_per_key(overrides: List[str]) -> List[str]:
    """Each key's last override only (what a single run would compose): sweepers differ on repeated keys
    (Optuna lets a fixed `optim.lr=...` beat a later `optim.lr=choice(...)`)."""
    last = {(_key(o) if "=" in o else o): i for i, o in enumerate(overrides)}
    return [o for i, o in enumerate(overrides) if last[_key(o) if "=" in o else o] == i]


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def _write_json(path: Path, obj) -> None:
    from gpt.checkpoint.format import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")
