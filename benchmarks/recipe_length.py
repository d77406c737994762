"""How long is what a reader copies: every recipe the English pages show. Prints a table.

    python -m benchmarks.recipe_length [--over]

One row per ``show_source`` call: the page, what it shows, its non-blank lines
(what Material's copy button copies: the source with the imports and helpers
``show_source`` brings along) and its budget: 40 lines, 80 for a model class
(an ``nn.Module`` subclass) or a whole program (``main``); the median at most 20
(issue 22; ``tests/test_recipes.py`` fails on a recipe over its budget).
"""

import argparse
import statistics

from handbook_tools import RECIPE_MEDIAN, shown_recipes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--over", action="store_true", help="only the recipes over budget")
    args = parser.parse_args()
    recipes = shown_recipes("en")
    print(f"{'page':<38} {'recipe':<44} {'lines':>5} {'budget':>6}")
    for r in sorted(recipes, key=lambda r: -r.lines):
        if args.over and r.lines <= r.budget:
            continue
        mark = "  OVER" if r.lines > r.budget else ""
        print(f"{r.page:<38} {', '.join(r.names)[:44]:<44} {r.lines:>5} {r.budget:>6}{mark}")
    over = sum(r.lines > r.budget for r in recipes)
    median = statistics.median(r.lines for r in recipes)
    print(f"\n{len(recipes)} recipes, {over} over budget; median {median:g} lines "
          f"(target <= {RECIPE_MEDIAN})")


if __name__ == "__main__":
    main()
