"""`experiment=search`: a multi-objective search over the variant space (sustained fps up, drift down) instead of
a grid. The Hydra sweeper (hydra_plugins/lipsync_search) launches the jobs; what it decides with lives here: the
search space's grammar, the objectives read back from a trial's run folder, the study and its tables.

The search space is `hydra.sweeper.params` (then the command line's overrides, which win per key), one entry per
key, in a small grammar:

    choice(a, b, …)               one of these values (numbers, true/false, words)
    a, b, …                       the same (Hydra's comma list; the way to offer null: `null, math, flash`)
    int(lo, hi)                   an integer, lo ≤ x ≤ hi
    float(lo, hi)                 a real number, lo ≤ x ≤ hi
    tag(log, int(lo, hi))         the same on a log scale (lo > 0); also tag(log, float(lo, hi))
    anything else                 one value, set for every trial and the reference (e.g. model=tiny)

Every form is also valid Hydra override syntax, so `python -m lipsync_lab`'s config check (lipsync_lab/schema.py)
composes every choice and both ends of every range before the first job runs.

Objectives, from each trial's own run folder (so `python -m lipsync_lab.compare <reference> <trial>` re-checks a
point): `summary.stream.sustained_fps` (maximised) and, by the sweeper's `objective`:
  drift (minimised, the default) = the mean |Δ| in grey levels of the trial's generated mouth crops (crops.npz)
        against one reference run of the base settings (the experiment's config without any searched value), run
        once per study (compare.drift);
  sync  (maximised) = SyncNet's confidence LSE-C of the trial's output (`summary.quality.syncnet.lse_c`, written by
        quality=syncnet): what a lip-sync user cares about, but only with the official weights
        (quality.syncnet=syncnet_v2.model) — a trial scored on random weights is failed, never told.
A trial whose run did not end `ok`, or that lacks either figure, is told to Optuna as failed, its reason kept.

The study (Optuna, SQLite: <sweep folder>/study.db by default) records its base overrides, its space and its
reference run, so the same command resumes it (a different base or space stops with one line), and a lock file
beside it keeps a second search off it while one runs. Tables: trials.csv (every trial), pareto.csv and pareto.yaml
(Optuna's best_trials: the Pareto front).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lipsync_lab.errors import LipsyncInputError

# the second objective (the first is sustained fps, up): its column in the tables and its direction
OBJECTIVES = {"drift": ("drift", "minimize"), "sync": ("lse_c", "maximize")}
GRAMMAR = ("choice(a, b, …), a comma list a, b, …, int(lo, hi), float(lo, hi), tag(log, int(lo, hi)), "
           "tag(log, float(lo, hi)) or one value")
TRIALS_CSV, PARETO_CSV, PARETO_YAML = "trials.csv", "pareto.csv", "pareto.yaml"
STUDY_FILE = "study.db"      # the default storage: <sweep folder>/study.db
REFERENCE = "reference"      # the reference run's folder in the sweep folder

try:  # a line the CLI prints without a traceback (lipsync_lab.__main__ prints Hydra's errors in one line)
    from hydra.errors import HydraException as _HydraException
except ImportError:  # pragma: no cover — hydra-core is a dependency
    _HydraException = Exception


class SearchError(LipsyncInputError, _HydraException):
    """A bad search space, a study that does not match the command, a reference that did not finish: one line."""


# -- the search space ---------------------------------------------------------------------------------------------

_RANGE = re.compile(r"(?P<log>tag\(\s*log\s*,\s*)?(?P<kind>int|float)\((?P<args>[^()]*)\)(?(log)\s*\))", re.S)


@dataclass(frozen=True)
class Axis:
    """One searched key: a choice among values, or an int / float range (both ends included), optionally on a log
    scale. `text` is the entry as written."""

    key: str
    kind: str  # choice | int | float
    text: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def suggest(self, trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def contains(self, value) -> bool:
        if self.kind == "choice":  # 1 == True in Python: compare as written, so true is not taken for 1
            return render(value) in {render(c) for c in self.choices}
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Space:
    """axes: the searched keys; fixed: key → the override (as written) set for every trial and the reference."""

    axes: dict[str, Axis] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)


def render(value) -> str:
    """A value as override text that Hydra reads back as the same value (None → null, True → true, a string that
    would read as something else is quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z_][\w./:-]*", value) and value.lower() not in ("null", "true", "false", "nan",
                                                                               "inf"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    from hydra.core.override_parser.types import Override  # lists and dicts, as Hydra writes them

    return Override._get_value_element_as_str(value)


def parse_override(text: str):
    """One `key=value` entry parsed by Hydra's override parser; what it cannot parse is one line naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except OverrideParseException as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 else lines[0]
        if "NoneType" in reason and "choice(" in text:
            reason = "Hydra's choice() takes no null: write these options as a comma list (null, a, b)"
        raise SearchError(text, f"cannot parse this entry ({reason}); expects {GRAMMAR}") from None


def _number(text: str, kind: str, entry: str):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or math.isinf(value) or (kind == "int" and value != int(value)):
        raise SearchError(entry, f"{kind}(lo, hi) takes two {'integers' if kind == 'int' else 'numbers'}, "
                                 f"not {text.strip() or 'nothing'}")
    return int(value) if kind == "int" else value


def parse_entry(text: str) -> tuple[str, Axis | str]:
    """One `key=value` entry → (key, Axis) for a searched key, (key, the override as written) for a fixed one."""
    override = parse_override(text)
    key = override.key_or_group
    if not override.is_sweep_override():
        return key, text
    if override.type.name != "CHANGE":
        raise SearchError(text, "a searched key must be one the config has: no +, ++ or ~ before it")
    value = text.split("=", 1)[1].strip()
    ranged = _RANGE.fullmatch(value)
    if ranged:
        kind, args = ranged["kind"], ranged["args"].split(",")
        if len(args) != 2:
            raise SearchError(text, f"{kind}(lo, hi) takes two numbers, not {len(args)}")
        low, high = (_number(a, kind, text) for a in args)
        if low > high:
            raise SearchError(text, f"{kind}(lo, hi) needs lo ≤ hi")
        if ranged["log"] and low <= 0:
            raise SearchError(text, "a log scale needs lo > 0")
        return key, Axis(key, kind, value, low=low, high=high, log=bool(ranged["log"]))
    sweep = override.value()
    if type(sweep).__name__ == "ChoiceSweep" and not sweep.tags and (value.startswith("choice(") or
                                                                     sweep.simple_form):
        if len(set(map(render, sweep.list))) != len(sweep.list):
            raise SearchError(text, "a choice lists each value once")
        return key, Axis(key, "choice", value, choices=tuple(sweep.list))
    raise SearchError(text, f"not in the search grammar; expects {GRAMMAR}")


def parse_space(params: Mapping[str, Any] | None, arguments: list[str] = ()) -> Space:
    """`hydra.sweeper.params` (key → entry: a string in the grammar, or a plain YAML value) then the command line's
    overrides; a key given twice takes its last entry."""
    texts = [f"{key}={value if isinstance(value, str) else render(value)}" for key, value in (params or {}).items()]
    axes, fixed = {}, {}
    for text in [*texts, *arguments]:
        key, item = parse_entry(text)
        axes.pop(key, None)
        fixed.pop(key, None)
        if isinstance(item, Axis):
            axes[key] = item
        else:
            fixed[key] = item
    return Space(axes, fixed)


def seed_points(enqueue, space: Space, base: Mapping[str, Any]) -> list[tuple[str, dict, dict]]:
    """The trials to enqueue first (e.g. the seed's three variants): each item of `enqueue` is the base settings
    with these values. Returns (label, params: every axis's value, extra: the item's keys that are not searched and
    change the base, as override text). `base`: the base config's value of each axis key and of each key the items
    set."""
    points = []
    for item in enqueue or []:
        if not isinstance(item, Mapping) or not item:
            raise SearchError(f"hydra.sweeper.enqueue={item!r}", "each item is a mapping of key: value "
                                                                 "(e.g. {compile: unet})")
        params = {key: base[key] for key in space.axes}
        extra = {}
        for key, value in item.items():
            if key in space.axes:
                if not space.axes[key].contains(value):
                    raise SearchError(f"hydra.sweeper.enqueue: {key}={render(value)}",
                                      f"outside the searched {key}={space.axes[key].text}")
                params[key] = value
            elif render(value) != render(base.get(key)):  # (compile=none where none is the base: nothing to set)
                extra[key] = f"{key}={render(value)}"
        for key, value in params.items():
            if not space.axes[key].contains(value):
                raise SearchError(f"{key}={render(value)}", f"the base setting is outside the searched "
                                                            f"{key}={space.axes[key].text}: the enqueued trials "
                                                            f"(hydra.sweeper.enqueue) run at the base settings")
        points.append((" ".join(f"{k}={render(v)}" for k, v in item.items()), params, extra))
    return points


def trial_overrides(params: Mapping[str, Any], base: Mapping[str, Any], extra: Mapping[str, str] = ()) -> list[str]:
    """A trial's own overrides: its values that differ from the base settings (so its folder and variant name say
    what it changed), then its extra overrides."""
    own = [f"{key}={render(value)}" for key, value in params.items() if render(value) != render(base.get(key))]
    return own + list(dict(extra).values())


def merge_overrides(*lists: list[str]) -> list[str]:
    """Override lists joined, a key given again taking the later value in the earlier one's place (Hydra refuses a
    config group chosen twice)."""
    merged: dict[str, str] = {}
    for text in (t for overrides in lists for t in overrides):
        merged[text.split("=", 1)[0].lstrip("+~")] = text
    return list(merged.values())


def consecutive(numbers: list[int]) -> list[list[int]]:
    """Sorted numbers in runs of consecutive ones: a launcher numbers a batch's jobs from its first one on."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


# -- objectives ---------------------------------------------------------------------------------------------------


def directions(objective: str) -> list[str]:
    return ["maximize", OBJECTIVES[objective][1]]


def second(table: pd.DataFrame) -> str:
    """The second objective's column of a trials table: lse_c for a sync search, else drift."""
    return "lse_c" if "lse_c" in table.columns else "drift"


def evaluate(run_dir: str | os.PathLike | None, reference: dict | None,
             objective: str = "drift") -> tuple[tuple[float, float] | None, str]:
    """(sustained fps, drift against the reference's crops (compare.load_crops) | LSE-C) of a trial's run folder,
    or None and why not."""
    from lipsync_lab.compare import drift, load_crops
    from lipsync_lab.results import read_record, run_status

    if run_dir is None:
        return None, "no run folder"
    record = read_record(run_dir)
    status, error = run_status(record)
    if status != "ok":
        return None, f"{status}: {error}"
    fps = ((record.get("summary") or {}).get("stream") or {}).get("sustained_fps")
    if fps is None:
        return None, "no sustained fps: the stream had one batch (lower batch_frames or raise max_frames)"
    if objective == "sync":
        sync = (record["summary"].get("quality") or {}).get("syncnet")
        if not sync:
            return None, "no SyncNet scores (quality=syncnet)"
        if sync.get("random_weights"):
            return None, "SyncNet on random weights judges nothing (quality.syncnet=syncnet_v2.model)"
        if sync.get("lse_c") is None:
            return None, f"no LSE-C: {sync.get('why')}"
        return (float(fps), float(sync["lse_c"])), ""
    crops = load_crops(run_dir)
    if crops is None:
        return None, "no crops.npz to measure drift on (save_crops=0?)"
    mean_abs = drift(crops, reference)["drift_mean_abs"]
    if math.isnan(mean_abs):
        return None, "its crops share no frame or size with the reference's: no drift"
    return (float(fps), float(mean_abs)), ""


def load_reference(run_dir: str | os.PathLike) -> dict:
    """The reference run's crops (compare.load_crops); a reference that did not end `ok` or kept no crops stops the
    search with one line: there is nothing to measure drift against."""
    from lipsync_lab.compare import load_crops
    from lipsync_lab.results import read_record, run_status

    if not Path(run_dir).is_dir():
        raise SearchError(run_dir, "the study's reference run is gone: put its folder back, or start a new study "
                                   "(hydra.sweeper.study_name=…)")
    status, error = run_status(read_record(run_dir))
    if status != "ok":
        raise SearchError(run_dir, f"the reference run (the base settings) did not end ok ({status}: {error}): "
                                   f"drift needs it")
    crops = load_crops(run_dir)
    if crops is None:
        raise SearchError(run_dir, "the reference run kept no crops.npz (save_crops=0?): drift needs them")
    return crops


# -- the study ----------------------------------------------------------------------------------------------------


def storage_url(storage: str | None, sweep_dir: str | os.PathLike) -> str:
    """An SQLAlchemy URL: `storage` if it is one, an SQLite file if it is a path, else <sweep folder>/study.db."""
    if storage and "://" in storage:
        return storage
    path = Path(storage).expanduser() if storage else Path(sweep_dir) / STUDY_FILE
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@contextlib.contextmanager
def study_lock(storage: str, name: str, sweep_dir: str | os.PathLike):
    """Held while a search runs its study: a second search of the same study (which would take the first one's
    running trials for stale ones) stops with one line. The lock is a file beside an SQLite study (in the sweep
    folder for other storages); the system drops it when the process ends, however it ends."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover — not POSIX: no lock
        yield
        return
    db = Path(storage[len("sqlite:///"):]) if storage.startswith("sqlite:///") else Path(sweep_dir) / "study"
    path = db.with_name(f"{db.name}.{name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise SearchError(f"study {name}", f"another search is running it (process {f.read().strip() or '?'}, "
                                               f"lock {path}): let it finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(name: str, storage: str, sampler=None, objective: str = "drift"):
    """The study `name` in `storage`, made if new (two objectives: fps maximised; drift minimised, or LSE-C
    maximised)."""
    import optuna

    want = directions(objective)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=want,
                                load_if_exists=True)
    if [d.name.lower() for d in study.directions] != want:
        raise SearchError(f"study {name}", f"is not a search of fps and {objective} ({', '.join(want)}): name "
                                           f"another study")
    study.set_user_attr("objective", objective)
    return study


def stamp(study, base: list[str], space: Space) -> None:
    """Records what the study searches from (its base overrides and search space); a study resumed with other
    ones would mix incomparable trials, so that stops with one line."""
    mine = dict(base=sorted(base), space={k: a.text for k, a in space.axes.items()})
    known = {k: study.user_attrs.get(k) for k in mine}
    if all(v is None for v in known.values()):
        for key, value in mine.items():
            study.set_user_attr(key, value)
        return
    for key, value in mine.items():
        if known[key] != value:
            raise SearchError(f"study {study.study_name}", f"was made with another {key} ({known[key]}, now "
                                                           f"{value}): resume it with the same settings, or name "
                                                           f"a new one (hydra.sweeper.study_name=…)")


def fail_stale(study) -> list[int]:
    """Trials left running by a search that was stopped (a signal, a kill) are marked failed; their numbers."""
    from optuna.trial import Trial, TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for frozen in stale:
        trial = Trial(study, frozen._trial_id)  # the running trial's handle: its attributes can still be set
        trial.set_user_attr("error", "interrupted: the search stopped while it ran")
        study.tell(trial, state=TrialState.FAIL)
    return [t.number for t in stale]


def finished(study) -> int:
    """Trials that ran to an end, failed ones included: what `n_trials` counts."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)))


def trials_frame(study) -> pd.DataFrame:
    """One row per trial that ran: number, state, fps, drift (lse_c in a sync search), pareto (on the Pareto
    front), seed_variant (the enqueued point it is, else ""), overrides (what it changed from the base settings),
    one column per searched key, run_dir, error, seconds."""
    from optuna.trial import TrialState

    column = OBJECTIVES[study.user_attrs.get("objective", "drift")][0]
    front = {t.number for t in study.best_trials}
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        values = t.values if t.state == TrialState.COMPLETE and t.values else [math.nan, math.nan]
        rows.append(dict(number=t.number, state=t.state.name, fps=values[0], **{column: values[1]},
                         pareto=t.number in front, seed_variant=t.user_attrs.get("seed_variant", ""),
                         overrides=" ".join(t.user_attrs.get("overrides", [])),
                         **{k: render(v) for k, v in t.params.items()},
                         run_dir=t.user_attrs.get("run_dir", ""), error=t.user_attrs.get("error", ""),
                         seconds=t.duration.total_seconds() if t.duration else math.nan))
    head = ["number", "state", "fps", column, "pareto", "seed_variant", "overrides"]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*head, "run_dir", "error", "seconds"])
    params = [c for c in table.columns if c not in head + ["run_dir", "error", "seconds"]]
    return table[[*head, *params, "run_dir", "error", "seconds"]]


def pareto_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """The Pareto front's rows of `trials_frame`, fastest first."""
    column = second(trials)
    return trials[trials["pareto"].astype(bool)].sort_values(["fps", column], ascending=[False, column == "drift"])


def write_tables(study, folder: str | os.PathLike) -> pd.DataFrame:
    """trials.csv (every trial that ran), pareto.csv and pareto.yaml (the Pareto front: trial, overrides, fps,
    drift or lse_c, run folder) in `folder`; returns the trials."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trials = trials_frame(study)
    trials.to_csv(folder / TRIALS_CSV, index=False)
    front = pareto_frame(trials)
    front.to_csv(folder / PARETO_CSV, index=False)
    column = second(trials)
    rows = [dict(trial=int(r.number), overrides=r.overrides, seed_variant=r.seed_variant, fps=float(r.fps),
                 **{column: float(getattr(r, column))}, run_dir=r.run_dir) for r in front.itertuples()]
    (folder / PARETO_YAML).write_text(yaml.safe_dump(rows, sort_keys=False, allow_unicode=True))
    return trials


def read_trials(folder: str | os.PathLike) -> pd.DataFrame:
    """A search's trials.csv (the sweep folder's), as trials_frame wrote it."""
    path = Path(folder) / TRIALS_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trials.csv (not a search's sweep folder, or no trial has ended yet)")
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for column in ("seed_variant", "overrides", "run_dir", "error"):
        table[column] = table[column].fillna("").astype(str)
    table["pareto"] = table["pareto"].astype(str).str.lower() == "true"
    return table


def format_front(trials: pd.DataFrame) -> str:
    """The Pareto front as a Markdown table (what the sweep prints at its end)."""
    front = pareto_frame(trials)
    column = second(trials)
    lines = [f"| trial | fps | {column} | overrides | run |", "|---|---|---|---|---|"]
    for r in front.itertuples():
        what = r.overrides or "(the base settings)"
        if r.seed_variant:
            what += f" [seed: {r.seed_variant}]"
        lines.append(f"| {r.number} | {r.fps:.2f} | {getattr(r, column):.3f} | {what} | "
                     f"{os.path.basename(r.run_dir)} |")
    failed = trials[trials["state"] == "FAIL"]
    tail = f"; {len(failed)} failed: " + ", ".join(f"{r.number} ({r.error})" for r in failed.itertuples()) \
        if len(failed) else ""
    meaning = "SyncNet confidence LSE-C of the output, up" if column == "lse_c" else \
        "mean |Δ| grey levels against the reference, down"
    return "\n".join(lines) + f"\n\nPareto front of {len(trials)} trials (fps: sustained, up; {column}: " \
                              f"{meaning}){tail}"
