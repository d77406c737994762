"""What a reader copies stays short: every shown recipe within its budget (issue 22)."""

import statistics

import pytest

from handbook_tools import RECIPE_MEDIAN, shown_recipes

RECIPES = shown_recipes("en")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.page}:{'+'.join(r.names)}")
def test_each_shown_recipe_fits_its_budget(recipe):
    assert recipe.lines <= recipe.budget, (
        f"{recipe.page} shows {', '.join(recipe.names)}: {recipe.lines} non-blank lines, budget "
        f"{recipe.budget}. Show the core as the recipe and link the file for the rest "
        "(design.md, 'Recipes and tools'); python -m benchmarks.recipe_length lists them all")


def test_the_median_recipe_is_short():
    assert statistics.median(r.lines for r in RECIPES) <= RECIPE_MEDIAN


def test_the_count_is_what_the_copy_button_copies():
    """A recipe's lines are those of show_source's text, the imports it brings included."""
    from tutorials_pkg.definition import mlp_sequential
    from tutorials_pkg.source import source_with_imports

    (recipe,) = [r for r in RECIPES if r.names == ["mlp_sequential"]]
    text = source_with_imports(mlp_sequential)
    assert recipe.lines == sum(1 for line in text.splitlines() if line.strip())
    assert text.startswith("from torch import nn") or text.startswith("import")
