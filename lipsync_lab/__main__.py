"""`python -m lipsync_lab [overrides]`: one streamed run (or a sweep with -m), configured by Hydra (conf/).
`python -m lipsync_lab --help` lists the config groups (the variant axes) and their options.

How a command ends (exit code, and what is printed last):
  0        the run (every job of the sweep) finished
  2        bad input: one line `error: <file or key>: <problem>`, checked before anything is built where it can
           be (schema.py: keys, types, ranges, files, the run's folder); a sweep stops before its first job
  1        a job of a sweep failed (after the sweep's comparison table), or a bug (a traceback)
  128 + n  signal n (SIGINT 130, SIGTERM 143, SIGUSR2 140) stopped the run at a batch boundary: one line saying
           how far it got; its output holds every frame written. In a sweep the finished jobs keep their results,
           the comparison lists the interrupted job, and no further job starts
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lipsync_lab.config import HYDRA_CONFIG_PATH
from lipsync_lab.errors import LipsyncInputError, one_line
from lipsync_lab.stopping import HardStop

log = logging.getLogger("lipsync_lab")


class SweepInterrupted(BaseException):
    """A signal stopped a job of a sweep whose jobs run in this process (Hydra's basic launcher): the sweep stops
    too, instead of starting its next job. A BaseException, so Hydra's job runner does not record it as a failed
    job and carry on."""

    def __init__(self, signum: int, sweep_dir: str, line: str):
        self.signum, self.sweep_dir, self.line = signum, sweep_dir, line
        super().__init__(line)


def _signal_number(name: str | None) -> int:
    return int(getattr(signal, name or "SIGINT", signal.SIGINT))


@hydra.main(version_base="1.3", config_path=HYDRA_CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lipsync_lab.run import run  # heavy imports after Hydra has parsed the command line (fast --help)

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        summary = run(cfg, hc.runtime.output_dir)
    except LipsyncInputError as e:
        if multirun:  # one bad job of a sweep: said here, marked failed in its folder; the others run
            log.error("error: %s", e)
            return None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if summary["status"] != "interrupted":
        return summary.get("fps")
    output = f"output {summary['output']}" if summary.get("output") else "no output (no batch was written)"
    line = (f"interrupted ({summary['interrupted_by']}): stopped after {summary['frames_done']} of "
            f"{summary['frames_total']} frames at a batch boundary; {output}; results {hc.runtime.output_dir}")
    signum = _signal_number(summary["interrupted_by"])
    if multirun:
        if "BasicLauncher" in str(hc.launcher.get("_target_", "")):
            raise SweepInterrupted(signum, hc.sweep.dir, line)
        log.error(line)  # a job in a process of its own (submitit): the sweep's parent lists it when all are done
        return None
    print(line, file=sys.stderr)
    sys.exit(128 + signum)


def _hydra_error(error: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(error, (HydraException, OmegaConfBaseException))


def cli(argv: list[str] | None = None) -> None:
    from hydra._internal.utils import get_args_parser

    from lipsync_lab import sweep

    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if not (args.help or args.hydra_help or args.info or args.shell_completion):
        from lipsync_lab.schema import check_command_line

        try:
            check_command_line(list(args.overrides), bool(args.multirun))
        except LipsyncInputError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    # Hydra prints its own errors (multi-line, exit 1) unless HYDRA_FULL_ERROR is set; set, they reach us and are
    # said in one line like every other input error. A user who set it wants Hydra's full report: leave it be.
    ours = "HYDRA_FULL_ERROR" not in os.environ
    if ours:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = [sys.argv[0], *argv]
    try:
        main()
    except SweepInterrupted as e:
        sweep.compare_sweep(e.sweep_dir)
        print(f"{e.line}; the sweep stopped there: finished jobs keep their results", file=sys.stderr)
        sys.exit(128 + e.signum)
    except HardStop as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # before a run took over the signals (Hydra starting up, a sweep between jobs)
        print("interrupted (SIGINT): stopped at once", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if ours and _hydra_error(e):
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        raise
    problems = sweep.unfinished_jobs()
    if problems:
        print(f"error: {len(problems)} job(s) of the sweep did not finish: {'; '.join(problems)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
