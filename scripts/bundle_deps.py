"""Which wheels the GPU bundle (.whl/) must carry, derived from what the benchmark's runs import; used by
scripts/gpu_bundle.sh (`make gpu-bundle`), run with the project's venv python. Subcommands:

  derive LOG     the distributions that installed the files listed in LOG (written by scripts/import_log/
                 sitecustomize.py during a smoke run of scripts/gpu_bench.sh in this environment), less the server's
                 packages and this project, closed under Requires-Dist as evaluated on the server's Python; one
                 `<requirement>\t<why>` line each (`name==version` of this environment, or the requirement's own
                 bounds for a dependency not installed here)
  check WHL_DIR  every Requires-Dist of every wheel in WHL_DIR is bundled or on the server, within its bounds where
                 the server's version is known (a second look, from the wheels' own metadata)
  server-pins    `name==version` of each distribution that is both on the server and installed here: the
                 throw-away venv that stands in for the server
  foreign WHL_DIR  `<file>\t<name>==<version>` of each wheel in WHL_DIR this interpreter cannot install (built for
                 the server's Python): the check installs the same release built for this interpreter instead

The server is described by --server (its package names) and --versions (name=version pairs known there).
Errors are one line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import site
import sys
import sysconfig
import zipfile
from collections import deque
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename
from packaging.version import Version

PROJECT = "lipsync-lab"  # this checkout: it runs from the source tree on the server, never as a wheel


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def server_env(python: str) -> dict[str, str]:
    """Marker values of the server's interpreter (CPython on Linux x86_64)."""
    return dict(python_version=python, python_full_version=f"{python}.0", sys_platform="linux",
                platform_system="Linux", platform_machine="x86_64", os_name="posix", implementation_name="cpython",
                platform_python_implementation="CPython", extra="")


def requirements(texts: list[str] | None, env: dict[str, str], extras: set[str]) -> list[Requirement]:
    """The requirements that apply on the server, for the distribution itself and the extras asked of it."""
    out = []
    for text in texts or []:
        r = Requirement(text)
        if r.marker is None or any(r.marker.evaluate({**env, "extra": e}) for e in {"", *extras}):
            out.append(r)
    return out


def owners() -> dict[str, md.Distribution]:
    """Every installed file (real path) -> the distribution whose RECORD lists it."""
    owner = {}
    for dist in md.distributions():
        base = os.path.realpath(dist.locate_file(""))
        for f in dist.files or ():
            owner[os.path.normpath(os.path.join(base, str(f)))] = dist
    return owner


def module_name(relative: str) -> str:
    """`kornia/geometry/__init__.py` -> kornia.geometry; `yaml/_yaml.cpython-311-x86_64-linux-gnu.so` -> yaml._yaml."""
    parts = list(Path(relative).parts)
    parts[-1] = parts[-1].split(".")[0]
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def derive(args) -> None:
    server = set(map(norm, args.server.split()))
    env = server_env(args.python)
    owner = owners()
    sites = {os.path.realpath(p) for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"],
                                           sysconfig.get_paths()["platlib"]]}
    imported: dict[str, str] = {}  # distribution -> the shortest module name it was imported by
    unowned = set()
    for path in set(Path(args.log).read_text().split("\n")) - {""}:
        dist = owner.get(path)
        rel = next((os.path.relpath(path, s) for s in sites if path.startswith(s + os.sep)), None)
        if dist is None:
            if rel is not None:  # in site-packages but no RECORD lists it: cannot tell which wheel brings it
                unowned.add(path)
            continue  # the standard library, the source tree, torch.compile's generated code
        name = norm(dist.metadata["Name"])
        module = module_name(rel) if rel else name
        if name not in imported or (module.count("."), module) < (imported[name].count("."), imported[name]):
            imported[name] = module
    if unowned:
        sys.exit(f"error: imported files that no installed distribution records: {sorted(unowned)[:5]}")
    if not imported:
        sys.exit(f"error: {args.log} lists no installed package: were the imports recorded?")
    # who asks for each distribution here: an import that only a server package's version here makes (the server's
    # own version may not) shows as such
    wanted_by: dict[str, set[str]] = {}
    for dist in md.distributions():
        for r in requirements(dist.requires, env, set()):
            wanted_by.setdefault(norm(r.name), set()).add(norm(dist.metadata["Name"]))

    def imported_why(name: str) -> str:
        by = sorted("this project" if n == PROJECT else n + (" (server)" if n in server else "")
                    for n in wanted_by.get(name, ()))
        return f"imported ({imported[name]})" + (f"; required here by {', '.join(by)}" if by else "")

    # breadth first from the imported distributions the server lacks: each need is reported with its first reason
    needed: dict[str, tuple[str, str]] = {}
    done: dict[str, set[str]] = {}
    queue = deque((name, set(), "", imported_why(name)) for name in sorted(imported)
                  if name not in server and name != PROJECT)
    while queue:
        name, extras, bounds, why = queue.popleft()
        new = {"", *extras} - done.get(name, set())
        if not new:
            continue
        done.setdefault(name, set()).update(new)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # required on the server's Python only: pip picks a release in the bounds
            needed.setdefault(name, (f"{name}{bounds}", f"{why}, not installed here"))
            continue
        needed.setdefault(name, (f"{name}=={Version(dist.version).public}", why))
        for r in requirements(dist.requires, env, new - {""}):
            if norm(r.name) not in server and norm(r.name) != PROJECT:
                queue.append((norm(r.name), set(r.extras), str(r.specifier), f"required by {name} ({r})"))
    for requirement, why in (needed[n] for n in sorted(needed)):
        print(f"{requirement}\t{why}")


def check(args) -> None:
    server = set(map(norm, args.server.split()))
    versions = {norm(k): v for k, v in (kv.split("=") for kv in args.versions.split())}
    env = server_env(args.python)
    wheels = sorted(Path(args.wheels).glob("*.whl"))
    bundle = {norm(str(parse_wheel_filename(w.name)[0])): str(parse_wheel_filename(w.name)[1]) for w in wheels}
    if len(bundle) != len(wheels):
        sys.exit(f"error: two versions of one package in {args.wheels}: {[w.name for w in wheels]}")
    problems = []
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            reqs = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
        for r in requirements(reqs, env, set()):
            name = norm(r.name)
            have = bundle.get(name) or versions.get(name)
            where = "bundle" if name in bundle else "server" if name in server else None
            if where is None:
                problems.append(f"{w.name} needs {r}, neither bundled nor on the server")
            elif have and r.specifier and not r.specifier.contains(have, prereleases=True):
                problems.append(f"{w.name} needs {r}, the {where} has {have}")
            print(f"  {w.name.split('-')[0]:<24} needs {str(r):<36} -> {where}{' ' + have if have else ''}")
    if problems:
        sys.exit(f"error: the bundle is incomplete: {'; '.join(problems)}")
    print(f"  all requirements met ({len(wheels)} wheels)")


def server_pins(args) -> None:
    server = set(map(norm, args.server.split()))
    for dist in sorted(md.distributions(), key=lambda d: norm(d.metadata["Name"])):
        if norm(dist.metadata["Name"]) in server:
            # the public version: `torch==2.13.0` picks the CPU wheel (2.13.0+cpu) the pip config serves, as `make`
            print(f"{norm(dist.metadata['Name'])}=={Version(dist.version).public}")


def foreign(args) -> None:
    here = set(sys_tags())
    for w in sorted(Path(args.wheels).glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(w.name)
        if not tags & here:
            print(f"{w.name}\t{name}=={version}")


def main() -> None:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--server", default="", help="the server's package names, space separated")
    server.add_argument("--versions", default="", help="name=version pairs known on the server, space separated")
    server.add_argument("--python", default="3.12", help="the server's Python (X.Y), for environment markers")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("derive", parents=[server]).add_argument("log")
    sub.add_parser("check", parents=[server]).add_argument("wheels")
    sub.add_parser("server-pins", parents=[server])
    sub.add_parser("foreign", parents=[server]).add_argument("wheels")
    args = p.parse_args()
    {"derive": derive, "check": check, "server-pins": server_pins, "foreign": foreign}[args.command](args)


if __name__ == "__main__":
    main()
