"""Mutation testing with mutmut 3: plant each small bug mutmut knows, one at a time, in the modules
where a silent bug costs users most, and run only that module's fast tests. A bug no test notices
"survived"; one that cannot change behaviour is "equivalent" (justified in bench/mutation_equivalent.md).

    python bench/mutation.py                          every module of MODULES, one after the other
    python bench/mutation.py training/decision.py     the named ones only

Each module runs in its own copy of the working tree (mutmut writes `mutants/` and `setup.cfg`
there), one test process at a time (the machine is shared). Writes `bench/mutation_results.md` (the
table, one row per module measured; rows of modules not run are kept) and
`bench/mutation_status.json` (each mutant's status), and prints the survivors with their diffs.
`--table` rebuilds the table from the saved statuses (after justifying equivalents), running nothing.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "mutation_results.md"
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.md"
STATUS = ROOT / "bench" / "mutation_status.json"
KILLED = ("killed", "timeout")  # a mutant that hangs the tests is caught too
PYTEST_ARGS = ["-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:timeout"]


@dataclass(frozen=True)
class Target:
    """A module under src/gpt_classifier, the functions mutated (mutmut name globs) and its tests."""

    module: str
    functions: tuple[str, ...]
    tests: tuple[str, ...]


MODULES = [
    Target("training/decision.py", ("*",), ("tests/training/test_decision.py",)),
    Target("training/reports.py", ("*x_per_class_report__*",), ("tests/training/test_reports.py",)),
    Target(
        "model/classifier.py",
        (
            "*ǁReadingǁ*",
            "*x_per_example__*",
            "*x_decide__*",
            "*ǁTextClassifierǁdecide__*",
            "*ǁTextClassifierǁdecision__*",
            "*ǁTextClassifierǁset_decision__*",
        ),
        ("tests/model/test_reading.py",),
    ),
    Target(
        "deploy/server.py",
        ("*x_parse_texts__*", "*x_read_body__*"),
        ("tests/deploy/test_server_requests.py",),
    ),
    Target("deploy/batching.py", ("*",), ("tests/deploy/test_batching.py",)),
]


def copy_working_tree(into: Path) -> None:
    """Tracked and new (not ignored) files as they are now: the tests being written count."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def write_config(work: Path, target: Target) -> None:
    """mutmut reads `setup.cfg` when pyproject.toml has no [tool.mutmut]."""
    lines = "\n    ".join
    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        f"only_mutate = src/gpt_classifier/{target.module}\n"
        f"pytest_add_cli_args_test_selection =\n    {lines(target.tests)}\n"
        f"pytest_add_cli_args =\n    {lines(PYTEST_ARGS)}\n"
        "process_isolation = forkserver\n"
    )


def run_module(target: Target) -> dict[str, str]:
    """Mutant name -> mutmut's status, for the mutants of `target.functions`."""
    with tempfile.TemporaryDirectory(prefix="mutation-") as folder:
        work = Path(folder)
        copy_working_tree(work)
        write_config(work, target)
        mutmut = [sys.executable, "-m", "mutmut"]
        subprocess.run([*mutmut, "run", "--max-children", "1", *target.functions], cwd=work, check=False)
        listed = subprocess.run(
            [*mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True
        ).stdout
        statuses = dict(re.findall(r"^\s*(\S+): (.+)$", listed, flags=re.MULTILINE))
        statuses = {
            name: status
            for name, status in statuses.items()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in target.functions)
        }
        for name in sorted(n for n, status in statuses.items() if status not in KILLED):
            shown = subprocess.run([*mutmut, "show", name], cwd=work, capture_output=True, text=True)
            print(shown.stdout, flush=True)  # the survivor's diff, to kill or justify it
    return statuses


def equivalent_mutants() -> dict[str, str]:
    """`- `name`: why it cannot change behaviour` lines of bench/mutation_equivalent.md."""
    text = EQUIVALENT.read_text(encoding="utf-8") if EQUIVALENT.exists() else ""
    return dict(re.findall(r"^- `([^`]+)`: (.+)$", text, flags=re.MULTILINE))


def function_name(pattern: str) -> str:
    """`*x_decide__*` -> decide, `*ǁReadingǁ*` -> Reading (mutmut's names for functions and methods)."""
    return pattern.strip("*").removeprefix("x_").removesuffix("__").replace("ǁ", ".").strip(".")


def table_row(target: Target, statuses: dict[str, str], seconds: float) -> str:
    equivalent = set(equivalent_mutants())
    killed = sum(status in KILLED for status in statuses.values())
    survived = [name for name, status in statuses.items() if status not in KILLED]
    justified = [name for name in survived if name in equivalent]
    relevant = len(statuses) - len(justified)
    score = f"{100 * killed / relevant:.1f} %" if relevant else "-"
    scope = "all" if target.functions == ("*",) else ", ".join(map(function_name, target.functions))
    tests = ", ".join(Path(t).name for t in target.tests)
    return (
        f"| {target.module} | {scope} | {tests} | {len(statuses)} | {killed} | "
        f"{len(survived) - len(justified)} | {len(justified)} | {score} | {seconds / 60:.1f} |"
    )


HEADER = [
    "| module | functions | tests | mutants | killed | survived | equivalent | score | minutes |",
    "|---|---|---|---|---|---|---|---|---|",
]


def save(target: Target, statuses: dict[str, str], seconds: float) -> None:
    """Keep this module's statuses (replacing an earlier run's), then rewrite the table."""
    saved = json.loads(STATUS.read_text()) if STATUS.exists() else {}
    saved[target.module] = {"seconds": round(seconds, 1), "statuses": dict(sorted(statuses.items()))}
    STATUS.write_text(json.dumps(saved, indent=1) + "\n")
    write_table()


def write_table() -> None:
    """The table of every module with saved statuses, in the order of MODULES."""
    saved = json.loads(STATUS.read_text()) if STATUS.exists() else {}
    rows = [
        table_row(t, saved[t.module]["statuses"], saved[t.module]["seconds"])
        for t in MODULES
        if t.module in saved
    ]
    RESULTS.write_text("\n".join([*HEADER, *rows]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to run (default: all of MODULES)")
    parser.add_argument("--table", action="store_true", help="only rebuild the table from saved statuses")
    args = parser.parse_args()
    if args.table:
        write_table()
        print(RESULTS.read_text(), end="")
        return
    known = {t.module: t for t in MODULES}
    unknown = [m for m in args.modules if m not in known]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}: use one of {', '.join(known)}")
    equivalent = equivalent_mutants()
    for target in [known[m] for m in args.modules] or MODULES:
        start = time.monotonic()
        statuses = run_module(target)
        save(target, statuses, time.monotonic() - start)
        print(table_row(target, statuses, time.monotonic() - start))
        for name, status in sorted(statuses.items()):
            if status not in KILLED:
                print(
                    f"  {status}: {name}"
                    + (f" (equivalent: {equivalent[name]})" if name in equivalent else "")
                )


if __name__ == "__main__":
    main()
