"""The code that the handbook's pages teach.

One module (or subpackage) per chapter, named as its page: the code of page
``docs/<lang>/X.py`` is ``tutorials_pkg.X``, and its ``__all__`` is its API.
The other modules are shared page code, each named for what it holds:
"""

__version__ = "0.1.0"

# Not chapters: the pages' furniture and what several pages share.
SUPPORT_MODULES = (
    "runtime",      # what a page ran on: versions, device
    "source",       # show_source: a recipe's real source, with its imports
    "digits",       # scikit-learn's digits, small models for them, one training loop
    "demo_models",  # small models that several pages and tests use
    "measure",      # median time and peak memory (pages and benchmarks)
    "launcher",     # run_on_ranks: a small cluster of processes on one machine
    "unwrap",       # the model inside DDP / torch.compile; the tensors inside nested values
)
