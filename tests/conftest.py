"""Fixtures: the device of the device tests, and the site built once for every test.

The site build (every page executed once) starts in the background as soon as the
tests are collected, if any test needs it; those tests run last, and the others run
while it builds.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# One thread per process: the tests run beside the shared build's kernels (one thread
# each), and more threads than cores spin and wait for each other. Processes the tests
# start (ranks, fresh interpreters) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from handbook_tools import ROOT, TEST_REPOSITORY, build_env, executed_notebooks, site_path

# cpu always; cuda where present, marked so that `pytest -m gpu` selects it.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


SITE_FIXTURES = {"web_root", "built_site", "executed_pages", "build_cache"}


class SharedBuild:
    """``mkdocs build --strict`` of the repository, started in the background.

    Every page runs once (its cache is an empty folder), under coverage where this run
    measures it (pyproject.toml: coverage's subprocess patch reaches the build and its
    kernels); the executed notebooks stay in ``cache`` for the page tests. The build is
    told it is made from TEST_REPOSITORY.
    """

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="handbook-tests-"))
        self.cache, self.web_root = self.folder / "cache", self.folder / "www"
        self.log = self.folder / "build.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
                 "-d", str(self.web_root / site_path())],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                env=build_env(self.cache, measured=True, repository=TEST_REPOSITORY))

    def wait(self) -> None:
        returncode = self.process.wait(timeout=3600)
        output = self.log.read_text(encoding="utf-8", errors="replace")
        assert returncode == 0, f"mkdocs build --strict failed:\n{output[-6000:]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_build: SharedBuild | None = None


def pytest_collection_modifyitems(session, config, items):
    """Tests of the built site last; the build starts now if one of them is selected."""
    global _build
    needs_site = [item for item in items if SITE_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if needs_site and not config.option.collectonly:
        _build = SharedBuild()
        others = [item for item in items if item not in set(needs_site)]
        items[:] = others + needs_site


def pytest_sessionfinish(session, exitstatus):
    if _build is not None:
        _build.stop()


@pytest.fixture(scope="session")
def shared_build() -> SharedBuild:
    assert _build is not None, "the shared build starts when a selected test needs the site"
    _build.wait()
    return _build


@pytest.fixture(scope="session")
def build_cache(shared_build) -> Path:
    return shared_build.cache


@pytest.fixture(scope="session")
def web_root(shared_build) -> Path:
    """A web server's root with the whole site, both languages, at site_url's path."""
    return shared_build.web_root


@pytest.fixture(scope="session")
def built_site(web_root) -> Path:
    return web_root / site_path()


@pytest.fixture(scope="session")
def executed_pages(shared_build) -> dict:
    """Every page as the shared build executed it (page id -> notebook with outputs)."""
    return executed_notebooks(shared_build.cache)
