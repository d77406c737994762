import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LANGUAGES = ("zh", "en")

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


def build_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MKDOCS_JUPYTER_CACHE"] = "false"   # every build executes every page
    env["NO_MKDOCS_2_WARNING"] = "1"
    return env


def mkdocs_build(config_dir: Path, site_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(site_dir)],
        cwd=config_dir, env=build_env(), capture_output=True, text=True, timeout=3600,
    )


def site_path() -> str:
    """The path part of site_url ("pytorch-model-handbook" for a GitHub project site)."""
    match = re.search(r"^site_url:\s*(\S+)", (ROOT / "mkdocs.yml").read_text(), re.M)
    return urlparse(match.group(1)).path.strip("/") if match else ""


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
