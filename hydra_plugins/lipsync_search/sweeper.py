"""The search as a Hydra sweeper: one reference run of the base settings, then batches of trials asked from an
Optuna study (ask/tell), launched through whatever launcher is configured, each told its sustained fps and drift
read back from its run folder. The study lives in SQLite, so a stopped search resumes where it was and a later
one with a larger `n_trials` adds to it. What is decided (grammar, objectives, tables) is lipsync_lab.search.

Optuna and lipsync_lab.search are imported when a search starts, not here: Hydra's plugin scan imports this
module on every `python -m lipsync_lab`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

_ABSENT = object()


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


class LipsyncSearchSweeper(Sweeper):
    def __init__(self, study_name: str, storage: Optional[str], n_trials: int, n_jobs: int, sampler: Any,
                 enqueue: Any, params: Any, objective: str = "drift") -> None:
        super().__init__()
        self.objective = str(objective)
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.sampler = sampler  # instantiated by Hydra (the node's _target_)
        self.enqueue = _plain(enqueue) or []
        self.params = _plain(params) or {}
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # -- composing ---------------------------------------------------------------------------------------------

    def _compose(self, overrides: List[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    @staticmethod
    def _value(cfg: DictConfig, key: str):
        """The value of `key` in a composed job config: a group's chosen option, or the key's value."""
        from lipsync_lab.search import SearchError

        choices = cfg.hydra.runtime.choices
        if key in choices:
            return choices[key]
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            raise SearchError(key, "no such key in the experiment's config: a searched key must be one it has")
        return _plain(value)

    def _base(self, arguments: List[str]):
        """The search space and the base overrides: the command line's fixed values, then the fixed entries of
        `params` that change the command line's config (the others would only lengthen every folder name)."""
        from lipsync_lab import search

        space = search.parse_space(self.params, arguments)
        if not space.axes:
            raise search.SearchError("hydra.sweeper.params", f"nothing to search: give a key an entry of the "
                                                             f"grammar ({search.GRAMMAR})")
        command_line = search.parse_space(None, arguments).fixed
        plain = self._compose(list(command_line.values()))
        base = []
        for key, text in space.fixed.items():
            if key not in command_line:
                override = search.parse_override(text)
                if override.type.name == "CHANGE" and \
                        search.render(override.value()) == search.render(self._value(plain, key)):
                    continue
            base.append(text)
        return space, base

    # -- running -----------------------------------------------------------------------------------------------

    @staticmethod
    def _run_dir(result, fallback: Optional[Path] = None) -> Optional[Path]:
        try:
            return Path(result.hydra_cfg.hydra.runtime.output_dir)
        except AttributeError:  # a launcher that returned no job config
            return fallback

    def _reference(self, study, base: List[str], sweep_dir: Path) -> dict:
        """The reference run's crops: run once per study (the base settings, no searched value), then reused."""
        from lipsync_lab import search

        known = study.user_attrs.get("reference_dir")
        if known:
            log.info("Reference (the base settings): %s, from the study", known)
            return search.load_reference(known)
        run_dir = sweep_dir / search.REFERENCE
        log.info("Reference run (the base settings, no searched value): %s", run_dir)
        job = [*base, f"hydra.sweep.subdir={search.REFERENCE}"]
        self.validate_batch_is_legal([job])
        (result,) = self.launcher.launch([job], initial_job_idx=0)
        run_dir = self._run_dir(result, run_dir)
        crops = search.load_reference(run_dir)  # raises, one line, when it did not finish: nothing to measure against
        study.set_user_attr("reference_dir", str(run_dir))
        return crops

    def sweep(self, arguments: List[str]) -> Any:
        from lipsync_lab import search

        # everything that can be wrong with the space is said before anything is written or run
        space, base = self._base(arguments)
        base_cfg = self._compose(base)
        keys = dict.fromkeys([*space.axes, *(k for item in self.enqueue if isinstance(item, dict) for k in item)])
        base_values = {key: self._value(base_cfg, key) for key in keys}
        self._check_objective(base_cfg)
        seeds = search.seed_points(self.enqueue, space, base_values)

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        storage = search.storage_url(self.storage, sweep_dir)
        with search.study_lock(storage, self.study_name, sweep_dir):
            study = search.open_study(self.study_name, storage, self.sampler, self.objective)
            return self._search(study, space, base, base_values, seeds, sweep_dir)

    def _check_objective(self, cfg: DictConfig) -> None:
        """A sync search needs SyncNet's scores from every trial, on the official weights, of an output video: said
        in one line before anything runs."""
        from lipsync_lab import search

        if self.objective not in search.OBJECTIVES:
            raise search.SearchError(f"hydra.sweeper.objective={self.objective}",
                                     f"expects one of {', '.join(search.OBJECTIVES)}")
        if self.objective != "sync":
            return
        if cfg.hydra.runtime.choices.get("quality") != "syncnet" or not cfg.quality.get("syncnet"):
            raise search.SearchError("hydra.sweeper.objective=sync", "needs quality=syncnet "
                                     "quality.syncnet=syncnet_v2.model (random weights judge nothing)")
        if cfg.hydra.runtime.choices.get("sink") == "none":
            raise search.SearchError("hydra.sweeper.objective=sync", "needs an output video to score: sink=mp4")

    def _search(self, study, space, base: List[str], base_values: dict, seeds: list, sweep_dir: Path) -> Any:
        from optuna.trial import TrialState

        from lipsync_lab import search
        from lipsync_lab.errors import one_line

        search.stamp(study, base, space)
        stale = search.fail_stale(study)
        if stale:
            log.warning("Trials %s were left running by a stopped search: marked failed", stale)
        if not study.get_trials(deepcopy=False):  # a new study: the enqueued points are its first trials
            for label, params, extra in seeds:
                study.enqueue_trial(params, user_attrs=dict(seed_variant=label, extra=extra))
        log.info("Study %r: %d of %d trials done (%s)", self.study_name, search.finished(study), self.n_trials,
                 search.storage_url(self.storage, sweep_dir))
        # drift is measured against a reference run; LSE-C needs none
        reference = self._reference(study, base, sweep_dir) if self.objective == "drift" else None

        returns = []
        while search.finished(study) < self.n_trials:
            size = min(self.n_jobs, self.n_trials - search.finished(study))
            trials = [study.ask() for _ in range(size)]
            jobs = {}
            for trial in trials:
                params = {key: axis.suggest(trial) for key, axis in space.axes.items()}
                own = search.trial_overrides(params, base_values, trial.user_attrs.get("extra") or {})
                trial.set_user_attr("overrides", own)
                jobs[trial.number] = search.merge_overrides(base, own)
            told = set()
            try:
                refused = self._refused(jobs)
            except Exception as e:  # a sampled point that does not compose: the space is wrong, not the trial
                self._fail(study, trials, told, sweep_dir, f"cannot compose: {one_line(e)}")
                raise
            for number, why in refused.items():  # settings the run would refuse together: failed without a run
                trial = next(t for t in trials if t.number == number)
                trial.set_user_attr("error", f"refused: {why}")
                study.tell(trial, state=TrialState.FAIL)
                told.add(number)
                del jobs[number]
                log.warning("Trial %d refused by the config check, not run: %s", number, why)
            try:
                for numbers in search.consecutive(sorted(jobs)):  # job number = trial number: folder <number>_…
                    results = self.launcher.launch([jobs[n] for n in numbers], initial_job_idx=numbers[0])
                    returns.append(results)
                    for number, result in zip(numbers, results):
                        trial = next(t for t in trials if t.number == number)
                        self._tell(study, trial, result, reference, self.objective)
                        told.add(number)
            except BaseException as e:  # a signal stopped a job (or the launcher failed): the rest are failed
                self._fail(study, trials, told, sweep_dir, f"stopped: {one_line(e)}")
                raise
            search.write_tables(study, sweep_dir)

        trials = search.write_tables(study, sweep_dir)
        print(search.format_front(trials))
        print(f"Search: {sweep_dir / search.PARETO_CSV}, {search.TRIALS_CSV}, {search.PARETO_YAML}")
        return returns

    def _refused(self, jobs: dict[int, list[str]]) -> dict[int, str]:
        """Each job composed as the launcher will compose it (a composition error is raised: the space is wrong) and
        checked by the run's own config check (schema.check): {trial number: the one-line reason} of the jobs it
        refuses — settings each valid alone but not together, e.g. Stream Batch with DeepCache's shallow steps."""
        from lipsync_lab.errors import LipsyncInputError
        from lipsync_lab.schema import check

        refused = {}
        for number, job in jobs.items():
            cfg = self._compose(job)
            cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
            try:
                check(cfg)
            except LipsyncInputError as e:
                refused[number] = str(e)
        return refused

    @staticmethod
    def _fail(study, trials, told: set, sweep_dir: Path, why: str) -> None:
        """The batch's trials not told yet are failed with `why`, and the tables written, before the search stops."""
        from optuna.trial import TrialState

        from lipsync_lab import search

        for trial in trials:
            if trial.number not in told:
                trial.set_user_attr("error", why)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        search.write_tables(study, sweep_dir)

    @staticmethod
    def _tell(study, trial, result, reference, objective: str = "drift") -> None:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        from lipsync_lab import search
        from lipsync_lab.errors import one_line

        run_dir = LipsyncSearchSweeper._run_dir(result)
        trial.set_user_attr("run_dir", str(run_dir) if run_dir else "")
        values, why = search.evaluate(run_dir, reference, objective)
        if values is None and result.status == JobStatus.FAILED and not (run_dir and run_dir.is_dir()):
            why = one_line(result._return_value)  # failed before its run folder held anything
        if values is None:
            trial.set_user_attr("error", why)
            study.tell(trial, state=TrialState.FAIL)
            log.warning("Trial %d failed: %s (%s)", trial.number, why, run_dir)
        else:
            study.tell(trial, list(values))
            log.info("Trial %d: %.2f fps, %s %.3f (%s) %s", trial.number, values[0], objective, values[1],
                     " ".join(trial.user_attrs.get("overrides") or []) or "the base settings", run_dir)
