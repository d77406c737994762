"""Fixtures: the device of the device tests, and the built site."""

from pathlib import Path

import pytest
import torch

from handbook_tools import ROOT, mkdocs_build, site_path

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
def web_root(tmp_path_factory) -> Path:
    """A web server's root with the whole site, both languages, at site_url's path.

    Built once, with the execution cache off, so every page really runs.
    """
    root = tmp_path_factory.mktemp("www")
    result = mkdocs_build(ROOT, root / site_path())
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    return root


@pytest.fixture(scope="session")
def built_site(web_root) -> Path:
    return web_root / site_path()
