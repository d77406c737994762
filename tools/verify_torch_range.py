"""Check the handbook against one torch/torchvision pair, in a fresh virtual environment.

    python tools/verify_torch_range.py --torch 2.9.0 --torchvision 0.24.0
    python tools/verify_torch_range.py --torch 2.15.0 --torchvision 0.29.2

It makes a virtual environment under .cache/torch-range/ (git ignores .cache/),
installs ``torch==X torchvision==Y`` and then the project with its test extra
(``pip install -e ".[test]"``, with both pinned so that nothing upgrades them;
for a pair outside the range pyproject.toml declares, the test extra's
requirements and then the project with ``--no-deps``),
runs the package tests (not the slow ``site`` and ``browser`` ones, no coverage)
and every page once (tests/test_pages.py reads every page as the shared site
build executed it), and
prints a table: page or test module, passed/failed, the first error. The exit
status is 0 only if everything passed and the venv really has the asked-for pair.

pip's configuration files are ignored for this script's own pip calls
(``PIP_CONFIG_FILE=/dev/null``): a machine-wide cap on torch must not decide
which release gets checked (so is PIP_CONSTRAINT; the other PIP_* variables apply: CI
offers the CPU wheels through PIP_EXTRA_INDEX_URL). ``--torch-index-url`` takes
torch and torchvision from another index, e.g. https://download.pytorch.org/whl/cpu
(PyPI's Linux wheels are CUDA builds of several GB). The venv is removed
afterwards unless ``--keep`` is given; its log stays next to it.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "torch-range"
# tests of the built site or a browser: checked on the development pair; here the
# pages run once in the shared build that test_pages reads.
DESELECT = "not site and not browser"
PAGE_TEST = "test_page_fails_and_warns_only_where_it_says"
VERSION = re.compile(r"^\d+(\.\d+)*$")


def pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_CONFIG_FILE"] = os.devnull  # ignore pip.conf files (e.g. a cap on torch)
    env.pop("PIP_CONSTRAINT", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("VIRTUAL_ENV", None)
    return env


def run(command: list[str], *, env=None, log=None, timeout=None, cwd=ROOT) -> int:
    """Run ``command``, its output appended to ``log``; return its exit status."""
    print("+", " ".join(map(str, command)), flush=True)
    with open(log, "a") as out:
        out.write("+ " + " ".join(map(str, command)) + "\n")
        out.flush()
        return subprocess.run(command, check=False, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def install(python: Path, torch: str, torchvision: str, args, log: Path) -> None:
    env = pip_env()
    pip = [str(python), "-m", "pip", "--no-input"]
    if run(pip + ["install", "-q", "--upgrade", "pip"], env=env, log=log):
        raise SystemExit(f"upgrading pip in the venv failed; see {log}:\n{tail(log)}")
    pair = [f"torch=={torch}", f"torchvision=={torchvision}"]
    where = []
    if args.torch_index_url:
        where += ["--index-url", args.torch_index_url]
    for links in args.find_links:
        where += ["--find-links", links]
    if run(pip + ["install", "-q", *where, *pair], env=env, log=log):
        raise SystemExit(f"installing {' '.join(pair)} failed; see {log}:\n{tail(log)}")
    # The project next, with the pair pinned: a constraint that the installed
    # torch already satisfies, so pip neither upgrades nor reinstalls it.
    constraints = log.parent / "constraints.txt"
    constraints.write_text("\n".join(pair) + "\n")
    if in_declared_range(torch, torchvision):
        steps = [["-e", ".[test]"]]
    else:
        # pip refuses a pair the project does not declare: install what the test
        # extra needs, then the project without its dependencies (the pair stays).
        print(f"torch {torch} / torchvision {torchvision} is outside the declared range "
              f"({', '.join(declared_range().values())}): installing the project with --no-deps")
        steps = [test_requirements(), ["--no-deps", "-e", "."]]
    for step in steps:
        if run(pip + ["install", "-q", "-c", str(constraints), *step], env=env, log=log):
            raise SystemExit(f"installing the project failed; see {log}:\n{tail(log)}")


def pyproject() -> dict:
    import tomllib  # Python 3.11+

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared_range() -> dict[str, str]:
    """``{"torch": "torch>=2.9,<2.16", ...}`` from pyproject.toml's dependencies."""
    found = {}
    for requirement in pyproject()["dependencies"]:
        name = re.match(r"[\w.-]+", requirement).group(0)
        if name in ("torch", "torchvision"):
            found[name] = requirement.replace(" ", "")
    return found


def release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split("."))


def admits(requirement: str, version: str) -> bool:
    """Whether ``name>=A,<B`` (the comparisons >=, >, <=, <, ==, != of releases) admits ``version``."""
    checks = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
              "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
    specifiers = re.sub(r"^[\w.-]+", "", requirement).split(",")
    ok = True
    for specifier in specifiers:
        match = re.fullmatch(r"(>=|<=|==|!=|>|<)([\d.]+)", specifier)
        if not match:
            raise SystemExit(f"cannot read {specifier!r} in {requirement!r}: "
                             "write the range as name>=A,<B")
        op, bound = match.groups()
        a, b = release(version), release(bound)
        width = max(len(a), len(b))
        ok &= checks[op](a + (0,) * (width - len(a)), b + (0,) * (width - len(b)))
    return ok


def in_declared_range(torch: str, torchvision: str) -> bool:
    declared = declared_range()
    return admits(declared["torch"], torch) and admits(declared["torchvision"], torchvision)


def test_requirements() -> list[str]:
    """The requirements of the test extra, the project's own extras (tutorials_pkg[docs]) expanded."""
    project = pyproject()
    extras = project["optional-dependencies"]
    requirements, todo = [], ["test"]
    while todo:
        for requirement in extras[todo.pop()]:
            own = re.fullmatch(rf"{project['name']}\[([\w,]+)\]", requirement.replace(" ", ""))
            if own:
                todo += own.group(1).split(",")
            elif requirement not in requirements:
                requirements.append(requirement)
    return requirements


def installed_versions(python: Path) -> dict[str, str]:
    code = ("import sys, torch, torchvision; "
            "print(sys.version.split()[0], torch.__version__, torchvision.__version__)")
    result = subprocess.run([str(python), "-c", code], check=False, capture_output=True, text=True)
    if result.returncode:
        return {"error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    py, torch, torchvision = result.stdout.split()
    return {"python": py, "torch": torch, "torchvision": torchvision}


def same_release(installed: str, asked: str) -> bool:
    """2.9.0+cpu is the release 2.9.0; a local label (+cpu, +cu128) says only which build."""
    return installed.split("+")[0] == asked


def first_error(case) -> str:
    """One line: the assertion or exception that failed a test case."""
    for kind in ("failure", "error"):
        node = case.find(kind)
        if node is None:
            continue
        text = (node.get("message") or "").strip()
        if text in ("", "collection failure") and node.text:
            # a module that does not import: the "E   ..." lines of its traceback
            errors = [line[1:].strip() for line in node.text.splitlines() if line.startswith("E ")]
            text = next((e for e in reversed(errors) if re.match(r"\w+(Error|Exception)\b", e)),
                        errors[-1] if errors else text or kind)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # test_pages' messages are "<page>, cell N:\n<source>\nraised <error>": keep the
        # cell number and the error, not the cell's source.
        # pytest cuts a long message short; the element's text has all of it ("E   " lines)
        full = lines + [line[1:].strip() for line in (node.text or "").splitlines()
                        if line.startswith("E ")]
        raised = next((line for line in full if line.startswith(("raised ", "should raise"))), None)
        head = lines[0] if lines else kind
        if head.endswith(":") and len(lines) > 1:  # "AssertionError:" and the comparison below it
            head = f"{head} {lines[1]}"
        if raised is not None:
            cell = re.search(r"cell \d+", head)
            return f"{cell.group(0) if cell else head}: {raised}"
        return head
    return ""


def results(junit: Path) -> list[tuple[str, str, str]]:
    """Rows (page or test module, passed/failed with counts, first error) from a JUnit file."""
    rows: dict[str, dict] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        module = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        if not case.get("classname"):  # a whole module: collected with an error, or skipped
            name = "collection"
        key = module
        if name.startswith(PAGE_TEST + "["):
            key = "page " + name[len(PAGE_TEST) + 1:-1]
        row = rows.setdefault(key, {"passed": 0, "failed": 0, "skipped": 0, "error": ""})
        if case.find("failure") is not None or case.find("error") is not None:
            row["failed"] += 1
            if not row["error"]:
                row["error"] = (f"{name}: " if not key.startswith("page ") else "") + first_error(case)
        elif case.find("skipped") is not None:
            row["skipped"] += 1
        else:
            row["passed"] += 1
    table = []
    for key in sorted(rows, key=lambda k: (k.startswith("page "), k)):
        row = rows[key]
        status = "failed" if row["failed"] else "passed" if row["passed"] else "skipped"
        counts = f"{row['passed']} passed" + (f", {row['failed']} failed" if row["failed"] else "")
        counts += f", {row['skipped']} skipped" if row["skipped"] else ""
        table.append((key, f"{status} ({counts})", row["error"]))
    return table


def markdown(rows: list[tuple[str, str, str]], width: int = 200) -> str:
    lines = ["| page or test module | result | first error |", "|---|---|---|"]
    for what, status, error in rows:
        error = error.replace("|", "\\|")
        if len(error) > width:
            error = error[:width - 1] + "…"
        lines.append(f"| {what} | {status} | {error} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", required=True, help="a release, e.g. 2.9.0")
    parser.add_argument("--torchvision", required=True, help="its torchvision, e.g. 0.24.0")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the venv")
    parser.add_argument("--torch-index-url", help="index for torch and torchvision only "
                        "(e.g. https://download.pytorch.org/whl/cpu)")
    parser.add_argument("--find-links", action="append", default=[],
                        help="a folder of wheels to look in first (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the venv afterwards")
    parser.add_argument("--venv", type=Path, help="use this existing venv as it is: no new venv, "
                        "no install (to re-run the tests in a kept one)")
    parser.add_argument("--report", type=Path, help="also write the table to this file")
    parser.add_argument("--timeout", type=int, default=3 * 3600, help="seconds for the tests")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    for name in ("torch", "torchvision"):
        if not VERSION.match(getattr(args, name)):
            parser.error(f"--{name} takes a release like 2.6.0, not {getattr(args, name)!r}")

    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"torch-{args.torch}-", dir=CACHE))
    venv, log, junit = args.venv or work / "venv", work / "log.txt", work / "junit.xml"
    python = venv / "bin" / "python"
    started = time.monotonic()
    try:
        if args.venv is None:
            if run([args.python, "-m", "venv", str(venv)], log=log):
                raise SystemExit(f"making the venv failed; see {log}:\n{tail(log)}")
            install(python, args.torch, args.torchvision, args, log)
        versions = installed_versions(python)
        if "error" in versions:
            raise SystemExit(f"torch/torchvision do not import: {versions['error']}")
        print(f"venv: Python {versions['python']}, torch {versions['torch']}, "
              f"torchvision {versions['torchvision']}", flush=True)
        pair_ok = (same_release(versions["torch"], args.torch)
                   and same_release(versions["torchvision"], args.torchvision))
        env = pip_env()
        env["MPLBACKEND"] = "Agg"
        env["NO_MKDOCS_2_WARNING"] = "1"
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        status = run([str(python), "-m", "pytest", "-q", "--no-cov", "-p", "no:cacheprovider",
                      "-m", DESELECT, "--continue-on-collection-errors", f"--junitxml={junit}", "-o", "junit_family=xunit1",
                      *args.pytest_args], env=env, log=log, timeout=args.timeout)
        if not junit.exists():
            raise SystemExit(f"pytest wrote no results (exit {status}); see {log}:\n{tail(log)}")
        rows = results(junit)
        minutes = (time.monotonic() - started) / 60
        title = (f"torch {versions['torch']}, torchvision {versions['torchvision']}, "
                 f"Python {versions['python']} ({minutes:.0f} min, pytest exit {status}); "
                 + ("inside" if in_declared_range(args.torch, args.torchvision) else "OUTSIDE")
                 + f" the declared {', '.join(declared_range().values())}")
        table = f"{title}\n\n{markdown(rows)}\n"
        print("\n" + table)
        if args.report:
            args.report.write_text(table)
        if not pair_ok:
            print(f"the venv has torch {versions['torch']} / torchvision "
                  f"{versions['torchvision']}, not the pair asked for", file=sys.stderr)
        failed = any(result.startswith("failed") for _, result, _ in rows)
        return 0 if pair_ok and status == 0 and not failed else 1
    finally:
        if args.keep or args.venv is not None:
            print(f"kept: {venv}")
        else:
            shutil.rmtree(venv, ignore_errors=True)
            print(f"log: {log}")


if __name__ == "__main__":
    sys.exit(main())
