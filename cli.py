"""Command line and files for every stage, without torch (01_generate_data.py's workers and
tasks.py import only this): one-line errors, dataclass arguments with profiles, files written
atomically, the resume rule. common.py re-exports all of it."""
import argparse
import json
import os
import platform
import re
import sys
import threading
import time
from dataclasses import MISSING, asdict, field, fields


class UsageError(Exception):
    """Bad input from the user: the stage prints one line and exits with code 2."""


def die(msg: str, code: int = 2):
    """Print one clear line to stderr and exit (code 2 = bad input, as argparse does)."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad input in one line (no usage dump) and exits with code 2, and
    takes comma lists that start with a negative number as values (`--guidance -1,-0.5,0`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\d*\.?\d+(,-?\d*\.?\d+)*$")

    def error(self, message):
        die(f"{self.prog}: {message}")


def arg(default, help: str):
    """A dataclass field whose help text shows in `--help` (CleanRL-style documented Args)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def parse_args(args_cls, profiles: dict, argv=None, description: str = "", presets: dict = None,
               check=None):
    """Build an argparse parser from a dataclass (each field: --flag-name, its help text), apply
    the chosen profile's defaults, then the flags given on the command line. Lists are given as
    comma-separated values. Bad values exit with one line and code 2.
    `presets` = {field: {value: defaults}}: a second table of defaults chosen by a field's value
    (00_toy.py's --design); precedence: command line > profile > preset > the dataclass default.
    --print-config prints the resolved settings as JSON (after `check`, if given) and exits."""
    p = ArgumentParser(description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(profiles),
                   help="preset of defaults, flags override it; each flag's help names the "
                        "profiles that change its default (default: cpu)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings (profile + flags) as JSON and exit without running")
    for f in fields(args_cls):
        if f.name == "profile":
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, **flag_kwargs(f, default, profiles, presets))
    ns = p.parse_args(argv)
    values = {}
    for f in fields(args_cls):
        if f.name == "profile":
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        raw = getattr(ns, f.name)
        if raw is None:
            values[f.name] = profiles[ns.profile].get(f.name, default)
            continue
        values[f.name] = _convert(raw, default, f.name, p)
    for key, table in (presets or {}).items():
        if values[key] not in table:
            p.error(f"argument --{key.replace('_', '-')}: invalid choice {values[key]!r} "
                    f"(choose from {', '.join(map(str, table))})")
        for name, v in table[values[key]].items():
            if getattr(ns, name) is None and name not in profiles[ns.profile]:
                values[name] = v
    a = args_cls(profile=ns.profile, **values)
    if ns.print_config:
        if check is not None:
            try:
                check(a)
            except UsageError as e:
                die(str(e))
        print(json.dumps(asdict(a), indent=1))
        sys.exit(0)
    return a


DEFAULT_PROFILE = "cpu"  # what a stage runs with when no --profile is given

# The dataset set of each profile (Sec. 4: 50 scripted seed demos -> M MimicGen source demos, N
# expert demos per target domain; the paper's M = 3000): 01_generate_data.py makes it, 02_train.py
# reads its files by dataset_names(). Profiles not listed use the cpu set.
DATASET_SETS = {"cpu": dict(seeds=50, source=500, target=50), "paper": dict(seeds=50, source=3000, target=50),
                "smoke": dict(seeds=2, source=2, target=1)}


def dataset_names(profile: str) -> dict:
    """The target and source file names (no suffix) of a profile's dataset set, as 02_train.py's
    --target-name / --source-name take them."""
    s = DATASET_SETS.get(profile, DATASET_SETS["cpu"])
    return dict(target_name=f"demos_{s['target']}", source_name=f"mimicgen_{s['source']}")


def flag_kwargs(f, default, profiles: dict, presets: dict = None) -> dict:
    """A flag's argparse settings; its help ends with the value a plain run uses (the default
    profile's), then each other profile's and preset's where it differs, e.g. "(default: 20000 with
    --profile cpu; paper: 100000; smoke: 20)". A help text that explains its own empty default
    keeps only that explanation."""
    value = lambda prof: profiles[prof].get(f.name, default)  # noqa: E731
    text = f.metadata.get("help", "")
    plain = value(DEFAULT_PROFILE) if DEFAULT_PROFILE in profiles else default
    others = [f"{name}: {fmt_value(value(name))}" for name in profiles
              if name != DEFAULT_PROFILE and value(name) != plain]
    for key, table in (presets or {}).items():
        others += [f"--{key.replace('_', '-')} {choice}: {fmt_value(d[f.name])}" for choice, d in table.items()
                   if f.name in d and d[f.name] != plain]
    if plain in ("", []) and ("(default" in text or "empty" in text):  # the help says what empty means
        text += f" ({'; '.join(others)})" if others else ""
    elif plain in ("", []):
        text += f" (default: none{''.join('; ' + o for o in others)})"
    else:
        where = f" with --profile {DEFAULT_PROFILE}" if others and DEFAULT_PROFILE in profiles else ""
        text += f" (default: {fmt_value(plain)}{where}{''.join('; ' + o for o in others)})"
    if isinstance(default, bool):
        return dict(action=argparse.BooleanOptionalAction, default=None, help=text)
    return dict(type=str, default=None, help=text)


def fmt_value(v) -> str:
    """A default as typed on the command line (lists comma-separated)."""
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def _convert(raw, default, name, parser):
    if isinstance(default, bool):
        return raw
    flag = "--" + name.replace("_", "-")
    try:
        if isinstance(default, list):
            elem = type(default[0]) if default else str
            return [elem(v) for v in str(raw).split(",") if v.strip() != ""]
        if default is None:
            return raw
        return type(default)(raw)
    except ValueError:
        parser.error(f"argument {flag}: invalid value {raw!r}")


def write_text(path: str, text: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj):
    write_text(path, json.dumps(obj, indent=1))


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def check_same_settings(old: dict, new: dict, where: str, free=(),
                        hint: str = "--overwrite to start over or another --out"):
    """The resume rule of every stage: what an output folder already holds was made with the
    settings `old`; continuing it with `new` is refused (UsageError) if any setting other than
    the `free` ones differs (compared as stored in JSON)."""
    new = json.loads(json.dumps(new))
    diff = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
    if diff:
        raise UsageError(f"{where} holds a run with a different config (different settings: "
                         f"{', '.join(diff)}); {hint}")


def exit_with_parent(poll_s: float = 1.0):
    """In a pool worker: exit when the process that started it is gone (killed), instead of
    running on as an orphan that takes a core from whatever runs next."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


# Datasets bitwise equal across x86-64 CPUs (docs/datasets.md, "Bitwise across machines"): at load
# time numpy picks AVX-512 kernels for its ufuncs and OpenBLAS picks GEMM kernels for the CPU it
# finds; their last bits differ from the AVX2 ones, and a scripted expert's or MimicGen's episode
# amplifies one ulp into another trajectory (measured: NutAssembly's 50 target demos gave digest
# fd97d463 with 15,597 steps on an AVX-512 machine, 0d8ece99 with 15,596 with both settings below).
PORTABLE_SIMD = {"NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL",
                 "OPENBLAS_CORETYPE": "Haswell"}


def portable_simd():
    """Re-execute this script with PORTABLE_SIMD in its environment (x86-64 only; nothing when it is
    already set, so the re-executed process goes on). Call before main() in a stage's __main__."""
    if platform.machine() not in ("x86_64", "AMD64") or all(os.environ.get(k) == v for k, v in PORTABLE_SIMD.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **PORTABLE_SIMD})


def machine() -> dict:
    """What made a record, for tracing a difference: the CPU model, its SIMD flags (avx*, fma,
    sse4*), the machine type and the SIMD settings in force (PORTABLE_SIMD's variables)."""
    model, flags = platform.processor(), []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), model)
        line = next((x for x in info.splitlines() if x.startswith("flags")), "")
        flags = sorted({x for x in line.split(":", 1)[-1].split() if x.startswith(("avx", "fma", "sse4"))})
    except OSError:
        pass
    return {"cpu": model, "simd": flags, "arch": platform.machine(),
            "env": {k: os.environ.get(k, "") for k in PORTABLE_SIMD}}



def check_writable(path: str, what: str = "--out"):
    """UsageError (one line) when the folder `path` cannot be made or written (a path under a
    regular file, a read-only place), checked before any work; creates nothing."""
    p = os.path.abspath(path or ".")
    while not os.path.exists(p):
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        raise UsageError(f"{what} {path}: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: {p} is not writable")
