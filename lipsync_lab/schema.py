"""Checked configs: every key's type and range, checked before anything is built, each problem one line.

Two checks, one schema (`SCHEMA`, every plain key and every key of every group option):

- `check_command_line(overrides, multirun)` runs in `python -m lipsync_lab` before Hydra and before torch is
  imported, so a typo costs a second, not the 8–13 s of importing the models, and leaves no run folder behind. It
  parses the overrides with Hydra's own parser, names an unknown group option or key (with the options or keys
  there are, a close match, and Hydra's `+key=` hint where adding a key is what was meant), composes the config
  once per value of each swept key (so a sweep's bad value stops the sweep before its first job), checks every
  value against the schema, that the input files exist, and that the run's folder can be made.
- `check(cfg)` checks a composed config (the same value checks): `run()` calls it first, so a config composed in
  Python (tests, notebooks) gets the same one-line errors.

Why a validation pass rather than Hydra structured configs: the variant axes are groups whose options have
different keys (`align.threads` exists for cv2 only) and many `_target_` nodes handed to libraries; a table keyed by
the full key covers all of them in one place, checks ranges and choices (which structured configs do not), and is
tested to cover every key of every option (tests/test_schema.py). Keys inside the library nodes (`model.unet.*`,
`vae.arch.*`, `scheduler.scheduler.*`, diffusers' keyword arguments) are checked against their default's type.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from lipsync_lab.errors import LipsyncInputError, one_line
from lipsync_lab.paths import CONF_DIR


# -- value specs ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Spec:
    null: bool = False

    def accepts(self) -> str:
        raise NotImplementedError

    def problem(self, value) -> str | None:
        """None when `value` is acceptable, else what is wrong (the CLI prints `key=value: <this>`)."""
        if value is None:
            return None if self.null else f"expects {self.accepts()}, not null"
        return self._problem(value)

    def _problem(self, value) -> str | None:
        raise NotImplementedError

    def _or_null(self, text: str) -> str:
        return f"{text} or null" if self.null else text


@dataclass(frozen=True, kw_only=True)
class Int(Spec):
    lo: int | None = None
    hi: int | None = None

    def accepts(self) -> str:
        rng = (f" from {self.lo} to {self.hi}" if self.lo is not None and self.hi is not None else
               f" ≥ {self.lo}" if self.lo is not None else f" ≤ {self.hi}" if self.hi is not None else "")
        return self._or_null(f"an integer{rng}")

    def _problem(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expects {self.accepts()}"
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            return f"expects {self.accepts()}"
        return None


@dataclass(frozen=True, kw_only=True)
class Float(Spec):
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded

    def accepts(self) -> str:
        lo = "" if self.lo is None else f" {'>' if self.lo_open else '≥'} {self.lo:g}"
        hi = "" if self.hi is None else f" ≤ {self.hi:g}"
        return self._or_null(f"a number{lo}{' and' if lo and hi else ''}{hi}")

    def _problem(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expects {self.accepts()}"
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return f"expects {self.accepts()}"
        if self.hi is not None and value > self.hi:
            return f"expects {self.accepts()}"
        return None


@dataclass(frozen=True, kw_only=True)
class Bool(Spec):
    hint: str = ""  # what to use instead, for a value that looks like something else (a path, say)

    def accepts(self) -> str:
        return self._or_null("true or false")

    def _problem(self, value):
        if isinstance(value, bool):
            return None
        return f"expects {self.accepts()}" + (f" ({self.hint})" if self.hint else "")


@dataclass(frozen=True, kw_only=True)
class Choice(Spec):
    options: tuple = ()
    pattern: str | None = None  # also accepted: strings matching this regular expression (device names: cuda:1)
    pattern_text: str = ""      # how errors show the pattern

    def accepts(self) -> str:
        text = " | ".join(map(str, self.options)) + (f" | {self.pattern_text or self.pattern}" if self.pattern else "")
        return self._or_null(f"one of {text}")

    def _problem(self, value):
        if value in self.options or (self.pattern and isinstance(value, str) and re.fullmatch(self.pattern, value)):
            return None
        return f"expects {self.accepts()}"


@dataclass(frozen=True, kw_only=True)
class Text(Spec):
    def accepts(self) -> str:
        return self._or_null("a text")

    def _problem(self, value):
        return None if isinstance(value, str) else f"expects {self.accepts()}"


@dataclass(frozen=True, kw_only=True)
class File(Spec):
    """A path to an existing file (`what`: how errors name it) or folder (`folder=True`)."""

    what: str = "file"
    folder: bool = False
    must_exist: bool = True

    def accepts(self) -> str:
        return self._or_null(f"a path to a {self.what}")

    def _problem(self, value):
        if not isinstance(value, str) or not value:
            return f"expects {self.accepts()}"
        if not self.must_exist:
            return None
        path = Path(value).expanduser()
        if not path.exists():
            return f"{self.what} not found"
        if self.folder and not path.is_dir():
            return f"is a file, expected a {self.what}"
        if not self.folder and path.is_dir():
            return f"is a folder, expected a {self.what}"
        return None


@dataclass(frozen=True, kw_only=True)
class ListOf(Spec):
    item: Spec = None

    def accepts(self) -> str:
        return self._or_null(f"a list of {self.item.accepts().removeprefix('one of ')}")

    def _problem(self, value):
        if not isinstance(value, (list, tuple, ListConfig)):
            return f"expects {self.accepts()}"
        for v in value:
            if self.item.problem(v):
                return f"expects {self.accepts()}, not {v!r}"
        return None


@dataclass(frozen=True, kw_only=True)
class Node(Spec):
    """A node that is either null or a group of keys of its own (vad.detector)."""

    def accepts(self) -> str:
        return "null or a group of settings"

    def _problem(self, value):
        return None if isinstance(value, (dict, DictConfig)) else f"expects {self.accepts()}"


INTERPOLATION = "${"
MISSING = "???"  # OmegaConf's mandatory value not given (source.video of source=file)

# -- the schema ------------------------------------------------------------------------------------------------
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
INTERPOLATION_METHODS = ("lanczos", "cubic", "linear")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
SCHEMA: dict[str, Spec] = {
    # plain keys (conf/config.yaml)
    "batch_frames": Int(lo=1, hi=256),
    "steps": Int(lo=1, hi=1000),
    "guidance_scale": Float(lo=0.0),
    "seed": Int(lo=0),
    "max_frames": Int(lo=1, null=True),
    "warmup_batches": Int(lo=0),
    "threads": Int(lo=1, null=True),
    "print_batches": Bool(),
    "save_crops": Int(lo=0),
    "optimize.channels_last": Bool(),
    "optimize.fuse_qkv": Bool(),
    "optimize.sdpa": Choice(options=("flash", "efficient", "cudnn", "math"), null=True),
    "timing.sync": Bool(),
    "profile": Bool(),
    "profiler.wait": Int(lo=0),
    "profiler.warmup": Int(lo=0),
    "profiler.active": Int(lo=1),
    "profiler.record_shapes": Bool(),
    "profiler.with_stack": Bool(),
    "profiler.with_flops": Bool(),
    "profiler.memory": Bool(),
    "profiler.all_threads": Bool(),
    "variant": Text(),
    # source
    "source.seconds": Float(lo=0.0, lo_open=True),
    "source.size": Int(lo=16, hi=8192),
    "source.seed": Int(lo=0),
    "source.pace": Choice(options=("none", "realtime")),
    "source.video": File(what="video file"),
    "source.audio": File(what="audio file", null=True),
    "source.short_side": Int(lo=2, null=True),
    "source.convert": Choice(options=("cv2", "swscale")),
    # model
    "model.name": Text(),
    "model.resolution": Choice(options=(256, 512)),
    "model.vae_size": Choice(options=("small", "full")),
    "model.checkpoint": File(what="UNet checkpoint", null=True),
    # vae
    "vae.name": Text(),
    "vae.scaling_factor": Float(lo=0.0, lo_open=True),
    "vae.shift_factor": Float(),
    "vae.path": File(what="diffusers VAE folder", folder=True, null=True),
    # guidance
    "guidance.delta": Float(lo=0.0),
    "guidance.interval": Int(lo=1),
    # scheduler, precision, device
    "scheduler.name": Text(),
    "precision.name": Choice(options=("fp32", "fp16", "bf16")),
    "precision.dtype": Choice(options=("float32", "float16", "bfloat16")),
    "device.name": Choice(options=("auto", "cpu", "cuda"), pattern=r"cuda:\d+", pattern_text="cuda:N"),
    # compile
    "compile.targets": ListOf(item=Choice(options=("unet", "vae"))),
    "compile.mode": Choice(options=COMPILE_MODES),
    "compile.fullgraph": Bool(),
    "compile.static_shapes": Bool(),
    # cache
    "cache.interval": Int(lo=1),
    "cache.branch": Int(lo=0),
    "cache.compile_mode": Choice(options=COMPILE_MODES),  # ${compile.mode} in conf/cache/deepcache.yaml
    "cache.compile_fullgraph": Bool(),                    # ${compile.fullgraph}
    # face
    "face.detector.detect_size": Int(lo=64),
    "face.detector.upsample": Int(lo=0, hi=3),
    "face.detector.smooth": Bool(),
    "face.detector.detect_every": Int(lo=1),
    "face.nose_bias": Bool(),
    "face.cache": Bool(hint="the cache's folder goes in face.cache_dir"),
    "face.cache_dir": File(what="landmark cache folder", folder=True, must_exist=False, null=True),
    "face.mask_path": File(what="mask image", null=True),
    # align, restore
    "align.threads": Int(lo=1),
    "align.interpolation": Choice(options=INTERPOLATION_METHODS),
    "align.device": Choice(options=("auto", "cpu", "cuda"), pattern=r"cuda:\d+", pattern_text="cuda:N"),
    "restore.threads": Int(lo=1),
    "restore.interpolation": Choice(options=INTERPOLATION_METHODS),
    "restore.device": Choice(options=("auto", "cpu", "cuda"), pattern=r"cuda:\d+", pattern_text="cuda:N"),
    "restore.full_frame": Bool(),
    # audio
    "audio.checkpoint": File(what="whisper checkpoint", null=True),
    "audio.encoder.checkpoint": File(what="whisper checkpoint", null=True),
    "audio.front_end.window_s": Float(lo=0.0, lo_open=True, hi=30.0),
    "audio.front_end.pad": Bool(),
    "audio.front_end.positions": Choice(options=("segment", "window")),
    "audio.lookahead_s": Float(lo=0.0, hi=5.0),
    "audio.allow_official_unet": Bool(),  # the documented +audio.allow_official_unet=true
    # sink
    "sink.crf": Int(lo=0, hi=51),
    "sink.preset": Choice(options=X264_PRESETS),
    "sink.threads": Int(lo=0),
    "sink.convert": Choice(options=("swscale", "cv2")),
    # diffusion
    "diffusion.stream_batch": Bool(),
    # executor
    "executor.queue_batches": Int(lo=1),
    "executor.restore_workers": Int(lo=1),
    # vad
    "vad.detector": Node(null=True),
    "vad.detector.threshold": Float(lo=0.0, hi=1.0),
    "vad.detector.neg_threshold": Float(lo=0.0, hi=1.0, null=True),
    "vad.detector.pad_ms": Int(lo=0),
    # quality
    "quality.name": Choice(options=("none", "syncnet")),
    "quality.syncnet": File(what="SyncNet weights (syncnet_v2.model)", null=True),
    "quality.s3fd": File(what="S3FD weights (sfd_face.pth)", null=True),
    "quality.min_frames": Int(lo=6),  # one 5-frame window and a frame to spare
    "quality.max_frames": Int(lo=6, null=True),
    "quality.vshift": Int(lo=0, hi=100),
    "quality.batch": Int(lo=1),
    "quality.seed": Int(lo=0),
}
# nodes handed whole to a library (diffusers' keyword arguments): each key checked against its default's type
LIBRARY_NODES = ("model.unet", "vae.arch", "scheduler.scheduler")
# groups whose option names come from Hydra's own packages, not conf/ (Hydra checks them)
HYDRA_GROUPS = ("hydra",)


def _is_internal(key: str) -> bool:
    """Hydra's instantiation keys (`_target_`, `_partial_`, ...): written by the options, not settings."""
    return any(part.startswith("_") and part.endswith("_") for part in key.split("."))


def _library_node(key: str) -> str | None:
    return next((n for n in LIBRARY_NODES if key == n or key.startswith(n + ".")), None)


def leaves(node, prefix: str = "") -> dict[str, object]:
    """{full key: value} of a config's settings (lists are values), interpolations unresolved."""
    out = {}
    items = node.items() if isinstance(node, dict) else []
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(leaves(v, key))
        else:
            out[key] = v
    return out


def _type_name(value) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a text", list: "a list",
            dict: "a group of settings"}.get(type(value), type(value).__name__)


def _library_problem(value, default) -> str | None:
    if default is None or value is None or (isinstance(default, str) and INTERPOLATION in default):
        return None  # no default, or one taken from another key: nothing to tell the type by
    if isinstance(default, bool) != isinstance(value, bool):
        return f"expects {_type_name(default)} (the library's keyword argument)"
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        ok = isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
        return None if ok else f"expects {_type_name(default)} (the library's keyword argument)"
    if isinstance(default, (list, str, dict)) and not isinstance(value, type(default)):
        return f"expects {_type_name(default)} (the library's keyword argument)"
    return None


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def check(cfg: DictConfig, defaults: DictConfig | None = None) -> None:
    """Check every setting of a composed config (without the `hydra` node) against SCHEMA; raise the first problem
    as LipsyncInputError("key=value", what it accepts). `defaults`: the same config before key overrides, for the
    type of library keyword arguments (None: those keys are not checked)."""
    values = leaves(OmegaConf.to_container(cfg, resolve=False))
    base = leaves(OmegaConf.to_container(defaults, resolve=False)) if defaults is not None else {}
    for key, value in values.items():
        if key == "hydra" or key.startswith("hydra.") or _is_internal(key):
            continue
        if isinstance(value, str) and INTERPOLATION in value:
            continue  # resolved from other keys, which are checked themselves
        if value == MISSING:
            raise LipsyncInputError(key, f"not set: pass {key}=…")
        if _library_node(key):
            problem = _library_problem(value, base.get(key))
        elif key in SCHEMA:
            problem = SCHEMA[key].problem(value)
        else:
            raise LipsyncInputError(key, f"not a setting lipsync_lab knows{_close(key, values)}")
        if problem:
            if isinstance(SCHEMA.get(key), File) and problem.endswith(("not found", "expected a file",
                                                                        "expected a folder")) and isinstance(value, str):
                raise LipsyncInputError(value, f"{problem} ({key})")
            raise LipsyncInputError(f"{key}={_shown(value)}", problem)
    _check_together(values)


def _check_together(values: dict) -> None:
    """Settings each valid alone that the builders would refuse together, said before anything is built (the
    search's sweeper also runs this check on each trial it asks for, and fails a refused one without running it)."""
    interval, steps = values.get("cache.interval"), values.get("steps")
    if values.get("diffusion.stream_batch") is True and isinstance(interval, int) and isinstance(steps, int) \
            and interval > 1 and steps > 1:
        raise LipsyncInputError("diffusion.stream_batch=true", f"clips at different steps share one UNet call, so "
                                f"every step must run the same UNet callable; cache.interval={interval} makes steps "
                                f"shallow (use cache=none or cache.interval=1)")


def _close(key: str, known) -> str:
    match = difflib.get_close_matches(key, list(known) + list(SCHEMA), n=1, cutoff=0.75)
    return f" (did you mean {match[0]}?)" if match and match[0] != key else ""


# -- the command line ------------------------------------------------------------------------------------------
@functools.cache
def _group_options(group: str) -> tuple[str, ...]:
    folder = CONF_DIR / group
    return tuple(sorted(p.stem for p in folder.glob("*.yaml"))) if folder.is_dir() else ()


def _groups() -> set[str]:
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in HYDRA_GROUPS}


def _options_with_key(group: str, sub: str) -> list[str]:
    """The options of `group` whose YAML holds the key `sub` (for 'it is a setting of …' hints)."""
    out = []
    for option in _group_options(group):
        if _has_key(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), sub):
            out.append(option)
    return out


def _has_key(cfg: DictConfig, key: str) -> bool:
    """Whether `key` exists, a mandatory value not given yet (`???`) included."""
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return isinstance(node, DictConfig) and last in node.keys()


def _unknown_key(key: str, cfg: DictConfig, choices: dict[str, str]) -> LipsyncInputError:
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    keys = [k for k in node.keys() if not str(k).startswith("_")] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(last, [str(k) for k in keys], n=1, cutoff=0.6)
    deeper = [k for k in SCHEMA if k.endswith("." + key)]  # `pad_ms` for vad.detector.pad_ms
    group = key.split(".")[0]
    hint = ""
    if group in _groups():
        elsewhere = [o for o in _options_with_key(group, key.partition(".")[2]) if o != choices.get(group)]
        if elsewhere:
            hint = f"; it is a setting of {', '.join(f'{group}={o}' for o in elsewhere)}"
    where = f"under {group}={choices[group]}" if group in choices else (f"in {parent}" if parent else "")
    text = f"no such key{' ' + where if where else ''}{hint}"
    if close:
        text += f" (did you mean {(parent + '.') if parent else ''}{close[0]}?)"
    elif deeper:
        text += f" (did you mean {' or '.join(deeper)}?)"
    elif keys and not hint:
        text += f"; {parent or 'the config'} has: {', '.join(map(str, sorted(keys, key=str)))}"
    return LipsyncInputError(key, text + f" — to add it as a new key: +{key}=…")


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed += parser.parse_overrides([text])
        except OverrideParseException as e:
            raise LipsyncInputError(text, f"cannot parse this override ({str(e).splitlines()[0]})") from None
    return parsed


def _as_text(o, value: str | None = None) -> str:
    prefix = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}.get(o.type.name, "")
    if o.is_delete():
        return o.input_line
    return f"{prefix}{o.key_or_group}={value if value is not None else o.get_value_element_as_str()}"


def _jobs(parsed, extra: list) -> list[list[str]]:
    """One override list per value of each swept key (the others at their first value): every value of every
    axis is composed once, without the product of the axes."""
    fixed, sweeps = [], []
    for o in list(parsed) + list(extra):
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            sweeps.append([_as_text(o, v) for v in values] or [_as_text(o, "")])
        else:
            fixed.append(_as_text(o))
    first = [s[0] for s in sweeps]
    jobs = [fixed + first]
    for i, s in enumerate(sweeps):
        for value in s[1:]:
            jobs.append(fixed + first[:i] + [value] + first[i + 1:])
    return jobs


def _compose(overrides: list[str]):
    """The job's config with its hydra node (as Hydra's launcher composes it), without resolving anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    import lipsync_lab.config  # noqa: F401 — registers the config's resolvers (lipsync_by_device, the variant)
    from lipsync_lab.paths import IN_CHECKOUT

    init = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3") if IN_CHECKOUT else \
        initialize_config_module("lipsync_lab.conf", version_base="1.3")
    with init:
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _composition_error(error: Exception, overrides: list[str]) -> LipsyncInputError:
    """Hydra's own message for what the checks above did not name, as one line."""
    return LipsyncInputError(" ".join(overrides) or "config", one_line(error, 300))


def _check_keys(parsed, choices: dict[str, str], base) -> None:
    for o in parsed:
        key = o.key_or_group
        if o.is_delete() or key.split(".")[0].split("/")[0] in HYDRA_GROUPS:
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        if key in _groups() or "/" in key:  # a group's option
            options = _group_options(key)
            if options:
                for value in values:
                    if value not in options:
                        raise LipsyncInputError(f"{key}={value}", f"no such option; {key} is one of "
                                                                  f"{', '.join(options)}")
            continue
        exists = _has_key(base, key)
        if o.type.name == "ADD" and exists:
            raise LipsyncInputError(f"+{key}", f"{key} is already a key: set it with {key}={values[0]}")
        if o.type.name == "CHANGE" and not exists:
            raise _unknown_key(key, base, choices)


def _writable(folder: str, key: str) -> None:
    """The run's folder can be made (Hydra would make it with a raw traceback otherwise); folders made to find out
    are removed again."""
    path = Path(folder).expanduser().absolute()
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        test = path / ".lipsync_write_test"
        test.write_text("")
        test.unlink()
    except OSError as e:
        raise LipsyncInputError(f"{key}={folder}", f"cannot make the run's folder ({e.strerror or e})") from None
    finally:
        for made in missing:  # deepest first
            try:
                made.rmdir()
            except OSError:
                pass


def check_command_line(overrides: list[str], multirun: bool) -> None:
    """Everything that can be checked about `python -m lipsync_lab [-m] <overrides>` before running it (see the
    module's docstring). Raises LipsyncInputError with the first problem."""
    parsed = _parse(overrides)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    group_overrides = [o for o in parsed if o.key_or_group in _groups() or "/" in o.key_or_group]
    _check_keys(group_overrides, {}, None)  # an unknown option first: composing would fail on it
    groups_only = [_as_text(o, (list(o.sweep_string_iterator()) or [""])[0]) if o.is_sweep_override() else
                   _as_text(o) for o in group_overrides]
    try:
        base = _compose(groups_only)
    except Exception as e:  # noqa: BLE001 — Hydra's composition errors have no common type worth naming
        raise _composition_error(e, groups_only) from None
    choices = dict(base.hydra.runtime.choices)
    multirun = multirun or str(OmegaConf.select(base, "hydra.mode")) == "RunMode.MULTIRUN" or \
        str(OmegaConf.select(base, "hydra.mode")) == "MULTIRUN"  # an experiment may be a sweep by itself
    if sweeps and not multirun:
        raise LipsyncInputError(sweeps[0].input_line, "a list of values is a sweep: add -m (or --multirun)")
    _check_keys(parsed, choices, base)
    extra = []
    if multirun:  # an experiment's own sweep (hydra.sweeper.params), as Hydra's sweepers read it: the command line
        params = OmegaConf.select(base, "hydra.sweeper.params") or {}  # wins where both set a key
        given = {o.key_or_group for o in parsed}
        extra = _parse([f"{k}={v}" for k, v in params.items() if k not in given]) if params else []
        _check_keys(extra, choices, base)
    for job in _jobs(parsed, extra):
        try:
            cfg = _compose(job)
        except LipsyncInputError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _composition_error(e, job) from None
        check(_without_hydra(cfg), _defaults(tuple(t for t in job if _is_group_override(t))))
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        folder = OmegaConf.select(cfg, key)
    except Exception:  # noqa: BLE001 — a folder that cannot be resolved here is Hydra's to report
        return
    if folder:
        _writable(str(folder), key)


def _is_group_override(text: str) -> bool:
    key = text.split("=")[0].lstrip("+~")
    return key in _groups() or "/" in key


@functools.lru_cache(maxsize=32)
def _defaults(group_overrides: tuple[str, ...]) -> DictConfig:
    """The config of these group choices with no key set: the defaults a job's values are checked against."""
    return _without_hydra(_compose(list(group_overrides)))


def _without_hydra(cfg: DictConfig) -> DictConfig:
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return OmegaConf.create(container)

