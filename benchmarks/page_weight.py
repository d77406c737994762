"""The HTML weight of every tutorial page of a built site: prints a table, asserts nothing.

    python -m benchmarks.page_weight [--site DIR]

``--site`` defaults to ``site/`` (``mkdocs build`` writes it; ``python
handbook_tools.py CHAPTER`` prints where its preview is). Columns: the page's
HTML in bytes, the part of it that is the page's own content (``<article>``;
the rest is the theme's header, navigation and footer), and the HTML gzipped as
GitHub Pages serves it. Target (issue 14): at most 100,000 bytes of HTML.
"""

import argparse
import gzip
import re
import sys
from pathlib import Path

from handbook_tools import LANGUAGES, ROOT, page_ids, page_url

TARGET_BYTES = 100_000
ARTICLE = re.compile(rb"<article\b.*?</article>", re.S)


def weights(site: Path) -> list[tuple[str, int, int, int]]:
    """(page path, HTML bytes, article bytes, gzipped bytes) for each page found in ``site``."""
    rows = []
    for language in LANGUAGES:
        for page in page_ids():
            path = page_url(page, language)
            html_file = site / path / "index.html"
            if not html_file.is_file():
                continue
            html = html_file.read_bytes()
            article = ARTICLE.search(html)
            rows.append((f"/{path}", len(html), len(article.group(0)) if article else 0,
                         len(gzip.compress(html, 9))))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site")
    args = parser.parse_args(argv)
    rows = weights(args.site)
    if not rows:
        sys.exit(f"no tutorial page under {args.site}: build the site first")
    print(f"{'page':42} {'HTML':>9} {'article':>9} {'gzipped':>9}")
    for path, html, article, zipped in sorted(rows, key=lambda r: -r[1]):
        mark = "" if html <= TARGET_BYTES else "   over the target"
        print(f"{path:42} {html:9,d} {article:9,d} {zipped:9,d}{mark}")
    over = sum(r[1] > TARGET_BYTES for r in rows)
    print(f"\n{len(rows)} pages; largest {max(r[1] for r in rows):,d} bytes; "
          f"{over} over the target of {TARGET_BYTES:,d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
