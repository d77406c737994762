"""Lighthouse on the built site, as GitHub Pages serves it: prints a table, asserts nothing.

    npm install --no-save --no-audit --no-fund --prefix .tools/lighthouse lighthouse@12
    python -m benchmarks.lighthouse [--site DIR] [--build] [--only definition/,en/] [--keep DIR]

Every tutorial page in both languages and both home pages. The site (``--site``,
default ``site/``; ``--build``, or no site there: ``mkdocs build --strict`` into it
first) is served on loopback at ``site_url``'s path, gzip-compressed as GitHub
Pages compresses text, with its cache header (max-age=600). Lighthouse runs with
its defaults (mobile emulation, simulated throttling) in the system Chromium, one
page at a time. Columns: the four category scores, the bytes transferred, and
the audits that cost a category points. Targets (issue 14): performance >= 95,
accessibility, best practices and SEO 100.
"""

import argparse
import functools
import gzip
import json
import mimetypes
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from handbook_tools import (LANGUAGES, ROOT, build_env, find_chromium, page_ids, page_url,
                           site_path)

LIGHTHOUSE = ROOT / ".tools" / "lighthouse" / "node_modules" / ".bin" / "lighthouse"
INSTALL = ("npm install --no-save --no-audit --no-fund --prefix .tools/lighthouse "
           "lighthouse@12")
CATEGORIES = ("performance", "accessibility", "best-practices", "seo")
COMPRESSED = {"text/html", "text/css", "text/javascript", "application/javascript",
              "application/json", "image/svg+xml", "application/xml", "text/xml", "text/plain"}


class PagesHandler(SimpleHTTPRequestHandler):
    """Static files under ``prefix``, gzip-compressed text, GitHub Pages' cache header."""

    prefix = "/"
    compressed: dict = {}

    def log_message(self, *args):
        pass

    def translate_path(self, path):
        path = path.split("?", 1)[0].split("#", 1)[0]
        if not path.startswith(self.prefix):
            return str(Path(self.directory) / "__outside_site_path__")
        return super().translate_path("/" + path[len(self.prefix):])

    def end_headers(self):
        self.send_header("Cache-Control", "max-age=600")
        super().end_headers()

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            if not self.path.split("?")[0].endswith("/"):
                return super().send_head()  # the redirect to the folder
            path = path / "index.html"
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not path.is_file() or kind not in COMPRESSED \
                or "gzip" not in self.headers.get("Accept-Encoding", ""):
            return super().send_head()
        if path not in self.compressed:
            self.compressed[path] = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
        body = self.compressed[path]
        self.send_response(200)
        self.send_header("Content-Type", f"{kind}; charset=utf-8" if kind.startswith("text/")
                         or kind.endswith(("json", "xml", "javascript")) else kind)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Vary", "Accept-Encoding")
        self.end_headers()
        return _Bytes(body)


class _Bytes:
    """A file-like body for SimpleHTTPRequestHandler.copyfile."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, size=-1):
        data, self.data = (self.data, b"") if size < 0 else (self.data[:size], self.data[size:])
        return data

    def close(self):
        pass


def serve(site: Path, prefix: str) -> tuple[ThreadingHTTPServer, str]:
    handler = type("Handler", (PagesHandler,), {"prefix": prefix, "compressed": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}{prefix}"


def chromium() -> str:
    found = find_chromium()
    if not found:
        raise SystemExit("Chromium not found: apt-get install chromium")
    return found


def pages() -> list[str]:
    """URL paths under the site root: both home pages, every tutorial page in both languages."""
    return [page_url(p, language) for language in LANGUAGES for p in ["index.md", *page_ids()]]


def run_lighthouse(url: str, output: Path) -> dict:
    command = [str(LIGHTHOUSE), url, f"--chrome-path={chromium()}",
               "--chrome-flags=--headless=new --no-sandbox --disable-gpu",
               f"--only-categories={','.join(CATEGORIES)}", "--output=json",
               f"--output-path={output}", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 or not output.is_file():
        raise SystemExit(f"lighthouse failed on {url}:\n{result.stderr[-3000:]}")
    return json.loads(output.read_text(encoding="utf-8"))


def lost_points(report: dict) -> list[str]:
    """The audits that cost a category points, as ``category: audit id``."""
    lost = []
    for name in CATEGORIES:
        category = report["categories"][name]
        for ref in category["auditRefs"]:
            audit = report["audits"].get(ref["id"], {})
            if ref.get("weight", 0) > 0 and audit.get("score") is not None and audit["score"] < 1:
                lost.append(f"{name[:4]}:{ref['id']}")
    return lost


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site")
    parser.add_argument("--build", action="store_true", help="build the site first")
    parser.add_argument("--only", default="", help="comma-separated URL paths (en/definition/)")
    parser.add_argument("--keep", type=Path, help="keep each page's JSON report in this folder")
    args = parser.parse_args(argv)
    if not LIGHTHOUSE.exists():
        raise SystemExit(f"Lighthouse not installed: {INSTALL}")
    if args.build or not (args.site / "index.html").is_file():
        env = build_env(ROOT / ".cache" / "handbook")  # the repository's own cache
        result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d",
                                 str(args.site)], cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"mkdocs build failed:\n{result.stderr[-4000:]}")
    prefix = f"/{site_path()}/" if site_path() else "/"
    server, base = serve(args.site, prefix)
    chosen = [p for p in args.only.split(",") if p] or pages()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        reports = args.keep or Path(scratch)
        reports.mkdir(parents=True, exist_ok=True)
        for path in chosen:
            output = reports / f"{path.strip('/').replace('/', '_') or 'home'}.json"
            report = run_lighthouse(base + path, output)
            scores = [round(100 * (report["categories"][c]["score"] or 0)) for c in CATEGORIES]
            sent = report["audits"]["total-byte-weight"]["numericValue"]
            rows.append(("/" + path, *scores, sent, " ".join(lost_points(report))))
            print(f"  {'/' + path}: {scores} {sent / 1024:.0f} KiB", file=sys.stderr, flush=True)
    server.shutdown()
    print(f"\nLighthouse {report['lighthouseVersion']}, mobile, default (simulated) throttling, "
          f"gzip on loopback\n")
    print("| page | performance | accessibility | best practices | SEO | transferred | lost points |")
    print("|---|---|---|---|---|---|---|")
    for page, perf, a11y, best, seo, sent, lost in rows:
        print(f"| `{page}` | {perf} | {a11y} | {best} | {seo} | {sent / 1024:,.0f} KiB | {lost} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
