"""Fixtures: the device of the device tests, and the site built once for every test."""

from pathlib import Path

import pytest
import torch

from handbook_tools import (ROOT, TEST_REPOSITORY, build_env, executed_notebooks, mkdocs_build,
                            site_path)

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


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory) -> Path:
    """The execution cache of the shared build: empty before it, so every page runs."""
    return tmp_path_factory.mktemp("build-cache")


@pytest.fixture(scope="session")
def web_root(tmp_path_factory, build_cache) -> Path:
    """A web server's root with the whole site, both languages, at site_url's path.

    Built once per test run: every page is executed once (an empty cache), under
    coverage where the run measures it (pyproject.toml: coverage's subprocess patch
    reaches the build and its kernels), and the executed notebooks stay in
    ``build_cache`` for the page tests. It is told it is made from TEST_REPOSITORY.
    """
    root = tmp_path_factory.mktemp("www")
    result = mkdocs_build(ROOT, root / site_path(),
                          env=build_env(build_cache, measured=True, repository=TEST_REPOSITORY))
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    return root


@pytest.fixture(scope="session")
def built_site(web_root) -> Path:
    return web_root / site_path()


@pytest.fixture(scope="session")
def executed_pages(web_root, build_cache) -> dict:
    """Every page as the shared build executed it (page id -> notebook with outputs)."""
    return executed_notebooks(build_cache)
