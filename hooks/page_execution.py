"""Execute the handbook's tutorial pages: once per page for both languages, in parallel, cached.

The zh and en pages of a chapter have the same code cells (tests/test_parity.py),
so a page's code runs once, and each language's page is rendered from its own
Markdown plus these shared outputs (``with_outputs``).

A page runs with nbclient in a fresh kernel whose working directory is a fresh
temporary directory, each cell with ``cell_timeout`` seconds, tracebacks in
IPython's "Minimal" mode (the exception and its message). Pages run in parallel,
``workers`` kernels at a time (0: one per core). Both come from mkdocs.yml
(``extra.handbook``). Where coverage measures the build (its ``patch = ["subprocess"]``
setting, as the tests run it), each kernel is measured too, and saves what it
measured before it is stopped.

The cache (``ExecutionCache``) keys a page by what shapes its outputs:

- its code cells (source, tags, ``raises``): a prose edit re-executes nothing;
- the versions of Python and of the packages pages run or print (``DISTRIBUTIONS``),
  the machine and its CUDA devices, and the code here that runs a page and cleans
  its outputs (``execution_code``);
- the ``tutorials_pkg`` modules the page imported, with a hash of each file,
  recorded when it ran: an edit to one chapter module re-executes only the
  pages that imported it.

Reproducible outputs: consecutive stream outputs become one block per stream
(stdout before stderr), as nbconvert's ``CoalesceStreamsPreprocessor`` does for
consecutive chunks of one stream; warnings print as ``Category: message``
without the path of the file that warned.

Checks, each failing the build with a message that names the page and cell:

- an untagged cell that raises;
- a cell tagged ``raises-exception`` that raises nothing, raises another
  exception than its ``raises`` metadata names, or names none;
- a DeprecationWarning or FutureWarning from page code (a cell, or
  ``tutorials_pkg``), unless the cell is tagged ``shows-warning``; a cell
  tagged ``shows-warning`` that warns nothing.

Nothing here imports MkDocs: ``hooks/notebook_pages.py`` calls it.
"""

import asyncio
import copy
import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

PACKAGE = "tutorials_pkg"
RAISES_TAG = "raises-exception"
SHOWS_WARNING_TAG = "shows-warning"
MEASURED_TAG = "measured"
# Packages whose version can change what a page prints or how it runs.
DISTRIBUTIONS = ("torch", "torchvision", "torchinfo", "torchsummary", "scikit-learn", "numpy",
                 "matplotlib", "safetensors", "nbconvert", "nbclient", "nbformat", "ipykernel",
                 "ipython", "jupyter_client", "jupytext")
DEPRECATIONS = ("DeprecationWarning", "FutureWarning")
WARNING_MIME = "application/vnd.handbook.warning+json"
MODULES_MIME = "application/vnd.handbook.modules+json"
BOOKKEEPING = (WARNING_MIME, MODULES_MIME)
KEY_FORMAT = "handbook-execution-1"

# Run in the kernel before the page: warnings print without a path, are recorded
# for the checks above, and DeprecationWarnings of page code are not hidden.
SETUP_CODE = f"""\
def _handbook_setup():
    import sys, warnings
    from IPython.display import publish_display_data

    def showwarning(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(f"{{category.__name__}}: {{message}}\\n")
        publish_display_data({{{WARNING_MIME!r}: {{
            "category": category.__name__, "message": str(message),
            "deprecation": issubclass(category, (DeprecationWarning, FutureWarning))}}}})

    warnings.showwarning = showwarning
    warnings.filterwarnings("default", category=DeprecationWarning,
                            module=r"(__main__|{PACKAGE})(\\.|$)")


_handbook_setup()
del _handbook_setup
"""

# Run in the kernel after the page: which modules of the package it imported; and,
# where coverage measures this kernel, its data saved (the kernel is stopped, not exited).
MODULES_CODE = f"""\
def _handbook_modules():
    import sys
    from IPython.display import publish_display_data

    publish_display_data({{{MODULES_MIME!r}: sorted(
        getattr(module, "__file__", None) or name for name, module in list(sys.modules.items())
        if name == {PACKAGE!r} or name.startswith({PACKAGE + "."!r}))}})
    coverage = sys.modules.get("coverage")
    measuring = coverage and coverage.Coverage.current()
    if measuring:
        measuring.stop()
        measuring.save()


_handbook_modules()
del _handbook_modules
"""


class PageError(Exception):
    """A page that failed to run, or ran otherwise than its tags say."""


# --- what a page is, and its key --------------------------------------------------------

@dataclass
class Page:
    """One tutorial page: its id (``definition.py``), its source per language, its code."""

    page_id: str
    sources: dict[str, Path]
    notebook: nbformat.NotebookNode = field(repr=False)  # the first language's, for its code
    key: str = ""


_remembered: dict[str, str] = {}  # key -> text, in this process
MEMO_DAYS = 14


def remembered(key: str, compute, memo_dir: Path | None = None) -> str:
    """``compute()``, a text, remembered under ``key``: in this process, and in ``memo_dir``
    across builds (kept while used in the last MEMO_DAYS days)."""
    text = _remembered.get(key)
    memo = memo_dir / f"{key[:40]}.json" if memo_dir else None
    if text is None and memo and memo.exists():
        text = memo.read_text(encoding="utf-8")
        os.utime(memo)
    if text is None:
        text = compute()
        if memo:
            write_atomic(memo, text)
    _remembered[key] = text
    return text


def forget(key: str, memo_dir: Path | None = None) -> None:
    """Drop what ``remembered`` keeps under ``key``."""
    _remembered.pop(key, None)
    if memo_dir:
        (memo_dir / f"{key[:40]}.json").unlink(missing_ok=True)


def bytes_key(path: Path, *context: str) -> str:
    data = Path(path).read_bytes()
    return hashlib.sha256(data + json.dumps([jupytext.__version__, *context]).encode()).hexdigest()


def read_notebook(path: Path, memo_dir: Path | None = None) -> nbformat.NotebookNode:
    """``jupytext.read(path)``, remembered by the file's bytes (jupytext takes ~0.1 s a
    page, and a build reads each page several times). Each call returns a new object."""
    text = remembered(bytes_key(path, "read"),
                      lambda: nbformat.v4.writes_json(jupytext.read(path)), memo_dir)
    return nbformat.v4.reads_json(text)


def forget_old_memos(memo_dir: Path | None) -> None:
    """Remove remembered pages not used for MEMO_DAYS days."""
    if memo_dir is None or not memo_dir.is_dir():
        return
    limit = time.time() - MEMO_DAYS * 86400
    for memo in memo_dir.glob("*.json"):
        if memo.stat().st_mtime < limit:
            memo.unlink(missing_ok=True)


def code_cells(notebook) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]


def tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def device_description() -> str:
    """The machine and its NVIDIA devices, read without importing torch (which takes seconds)."""
    parts = [platform.system(), platform.machine(),
             f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}"]
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        parts.append(info.read_text(errors="replace"))
    driver = Path("/proc/driver/nvidia/version")
    if driver.exists():
        parts.append(driver.read_text(errors="replace"))
    return " | ".join(parts)


def normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def versions() -> dict[str, str]:
    """What runs the pages: Python, the packages in ``DISTRIBUTIONS``, the machine.

    A package's version is that of the first distribution of that name on
    ``sys.path``, as ``importlib.metadata.version`` finds it (one scan for all).
    """
    installed: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            installed.setdefault(normalized(name), distribution.version)
    found = {"python": f"{platform.python_implementation()} {platform.python_version()}",
             "device": device_description()}
    found.update({name: installed.get(normalized(name), "absent") for name in DISTRIBUTIONS})
    return found


def page_key(page_id: str, notebook, versions: dict[str, str]) -> str:
    """The key of a page's code cells run on ``versions`` by this file's code."""
    digest = hashlib.sha256()
    cells = [[cell.source, sorted(tags(cell)), cell.metadata.get("raises")]
             for _, cell in code_cells(notebook)]
    digest.update(json.dumps([KEY_FORMAT, page_id, cells, sorted(versions.items())],
                             ensure_ascii=False).encode())
    digest.update(execution_code().encode())
    return digest.hexdigest()


def execution_code() -> str:
    """The code in this file that shapes what an executed page holds."""
    functions = (kernel_environment, run_page, imported_files, clean_outputs,
                 warnings_in_stderr, check_and_clean)
    return "\n".join([SETUP_CODE, MODULES_CODE, *map(inspect.getsource, functions)])


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every Python file of the package at ``root``, by path relative to ``root``."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted((root / PACKAGE).rglob("*.py"))}


def read_pages(docs_dir: Path, languages, page_ids, memo_dir: Path | None = None) -> list[Page]:
    """The pages, with their code checked to be the same in every language."""
    pages, errors = [], []
    for page_id in page_ids:
        sources = {language: docs_dir / language / page_id for language in languages}
        missing = [str(path) for path in sources.values() if not path.is_file()]
        if missing:
            errors.append(f"{page_id}: missing {', '.join(missing)}; every page exists in "
                          f"every language ({', '.join(languages)}), at the same path")
            continue
        notebooks = {language: read_notebook(path, memo_dir) for language, path in sources.items()}
        first, *others = languages
        reference = [cell.source for _, cell in code_cells(notebooks[first])]
        for language in others:
            theirs = [cell.source for _, cell in code_cells(notebooks[language])]
            if theirs != reference:
                where = next((i for i, (a, b) in enumerate(zip(reference, theirs)) if a != b),
                             min(len(reference), len(theirs)))
                errors.append(f"{language}/{page_id}: code cell {where} differs from "
                              f"{first}/{page_id} ({len(theirs)} code cells, {first} has "
                              f"{len(reference)}); the code cells of a page must be identical "
                              "in every language, only the Markdown differs")
        pages.append(Page(page_id, sources, notebooks[first]))
    if errors:
        raise PageError("\n".join(errors))
    return pages


# --- the cache --------------------------------------------------------------------------

class ExecutionCache:
    """Executed notebooks in ``directory``, one file per page and key.

    An entry holds the package files the page imported with their hashes; it
    is used only while every one of those files still has that hash. With
    ``directory=None`` nothing is kept: every page runs.
    """

    def __init__(self, directory: Path | None, root: Path):
        self.directory = directory
        self.root = root
        self.hashes = file_hashes(root)

    def path(self, page: Page) -> Path:
        return self.directory / f"{page.page_id.replace('/', '__')}.{page.key[:20]}.ipynb"

    def get(self, page: Page):
        if self.directory is None or not self.path(page).exists():
            return None
        notebook = nbformat.v4.reads_json(self.path(page).read_text(encoding="utf-8"))
        recorded = notebook.metadata.get("handbook", {})
        if recorded.get("key") != page.key or not self.still_valid(recorded.get("modules", {})):
            return None
        return notebook

    def still_valid(self, modules: dict[str, str]) -> bool:
        return all(self.current_hash(path) == digest for path, digest in modules.items())

    def current_hash(self, path: str) -> str | None:
        if path in self.hashes:
            return self.hashes[path]
        file = Path(path)
        return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None

    def put(self, page: Page, notebook) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(page), nbformat.writes(notebook))

    def keep_only(self, pages: list[Page]) -> None:
        """Remove the entries of pages and keys that this build does not use."""
        if self.directory is None or not self.directory.is_dir():
            return
        used = {self.path(page) for page in pages}
        for entry in self.directory.glob("*.ipynb"):
            if entry not in used:
                entry.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


# --- running a page ---------------------------------------------------------------------

def kernel_environment(root: Path, threads: int) -> dict[str, str]:
    """The page kernel's environment: the package of the site being built comes first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("JUPYTER_PATH", None)  # the site's nbconvert templates are for rendering only
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The same order of str sets in every build: messages from libraries print them as they are.
    env["PYTHONHASHSEED"] = "0"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # parallel kernels share the cores
        env.setdefault(name, str(threads))
    return env


def hidden_cell(code: str):
    cell = nbformat.v4.new_code_cell(code)
    cell.metadata["tags"] = ["handbook-bookkeeping"]
    return cell


async def run_page(page: Page, root: Path, hashes: dict[str, str], threads: int,
                   cell_timeout: int):
    """Execute ``page`` in a fresh kernel and directory; the executed notebook, cleaned."""
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    notebook = copy.deepcopy(page.notebook)
    notebook.cells = [hidden_cell(SETUP_CODE), *notebook.cells, hidden_cell(MODULES_CODE)]
    scratch = Path(tempfile.mkdtemp(prefix="handbook-page-"))
    workdir = scratch / "work"  # the page's working directory, empty
    workdir.mkdir()
    # Local sockets (ipykernel warns about TCP), beside the page's directory, not in it.
    manager = AsyncKernelManager(kernel_name="python3", transport="ipc",
                                 connection_file=str(scratch / "kernel.json"))
    client = NotebookClient(notebook, km=manager, timeout=cell_timeout, allow_errors=False,
                            record_timing=False, resources={"metadata": {"path": str(workdir)}},
                            extra_arguments=["--InteractiveShell.xmode=Minimal"])
    start = time.perf_counter()
    try:
        await client.async_execute(env=kernel_environment(root, threads))
    except CellExecutionError as error:
        raise PageError(f"{page.page_id}: {failing_cell(notebook)} raised, and it is not tagged "
                        f"{RAISES_TAG!r}:\n{error}") from None
    except (CellTimeoutError, DeadKernelError) as error:
        raise PageError(f"{page.page_id}: {failing_cell(notebook, any_cell=True)}: "
                        f"{type(error).__name__}: {error}") from None
    finally:
        if manager.has_kernel:
            await manager.shutdown_kernel(now=True)
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - start
    modules = imported_files(notebook.cells[-1], root)
    notebook.cells = notebook.cells[1:-1]
    notebook.metadata["handbook"] = {
        "page": page.page_id, "key": page.key, "seconds": round(seconds, 2),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "modules": {path: hashes.get(path) or file_hash(Path(path)) for path in modules}}
    return notebook


def failing_cell(notebook, any_cell: bool = False) -> str:
    """``cell N`` (N counted in the page, as jupytext reads it) of the cell that failed."""
    cells = notebook.cells[1:-1]
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        errored = any(o.output_type == "error" for o in cell.get("outputs", []))
        if errored and RAISES_TAG not in tags(cell):
            return f"cell {index}"
    if any_cell:  # a timeout or a dead kernel: the last cell that started
        started = [i for i, c in enumerate(cells) if c.cell_type == "code" and c.get("outputs")]
        return f"cell {started[-1]} or the one after it" if started else "its first code cell"
    return "a cell"


def file_hash(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def imported_files(cell, root: Path) -> list[str]:
    """The package files the page imported (bookkeeping cell), relative to ``root`` if in it."""
    for output in cell.get("outputs", []):
        if output.output_type == "display_data" and MODULES_MIME in output.data:
            found = []
            for name in output.data[MODULES_MIME]:
                path = Path(name)
                if not path.is_absolute():
                    continue  # a namespace package: no file of its own
                try:
                    found.append(path.resolve().relative_to(root.resolve()).as_posix())
                except ValueError:
                    found.append(str(path))
            return sorted(set(found))
    raise PageError(f"the bookkeeping cell recorded no modules: {cell.get('outputs')!r}")


# --- what a cell shows ------------------------------------------------------------------

def clean_outputs(cell) -> list[dict]:
    """Strip the bookkeeping outputs and make the rest reproducible; the warnings recorded.

    Each run of consecutive stream outputs becomes one stdout block then one
    stderr block (the kernel sends a stream in chunks, at times that vary).
    """
    warnings, outputs, run = [], [], {}

    def end_run():
        for name in ("stdout", "stderr"):
            if name in run:
                outputs.append(nbformat.v4.new_output("stream", name=name, text=run[name]))
        run.clear()

    for output in cell.get("outputs", []):
        if output.output_type == "display_data" and WARNING_MIME in output.data:
            warnings.append(dict(output.data[WARNING_MIME]))
        elif output.output_type == "display_data" and any(m in output.data for m in BOOKKEEPING):
            continue
        elif output.output_type == "stream":
            run[output.name] = run.get(output.name, "") + output.text
        else:
            end_run()
            outputs.append(output)
    end_run()
    cell.outputs = outputs
    # nbconvert's preprocessor for the rest: joins what is still consecutive, applies "\r".
    CoalesceStreamsPreprocessor().preprocess_cell(cell, {}, 0)
    cell.execution_count = None
    cell.metadata.pop("execution", None)
    for output in cell.outputs:
        if "execution_count" in output:
            output.execution_count = None
    return warnings


def warnings_in_stderr(cell) -> list[dict]:
    """Deprecation warnings printed without the kernel's hook (by a child process, say)."""
    import re

    pattern = re.compile(r"^(?:.*?:\d+: )?(\w*(?:DeprecationWarning|FutureWarning)): (.*)$", re.M)
    found = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stderr":
            found += [{"category": c, "message": m, "deprecation": True}
                      for c, m in pattern.findall(output.text)]
    return found


def check_and_clean(page_id: str, notebook) -> list[str]:
    """Clean every code cell's outputs; the problems found, one message each."""
    problems = []
    for index, cell in code_cells(notebook):
        where = f"{page_id}, cell {index}"
        recorded = clean_outputs(cell)
        shown = recorded or warnings_in_stderr(cell)
        deprecations = [w for w in shown if w["deprecation"]]
        if deprecations and SHOWS_WARNING_TAG not in tags(cell):
            first = deprecations[0]
            problems.append(
                f"{where} warns {first['category']}: {first['message']}\n"
                f"  Change the code so that it does not warn (it will break on a later release), "
                f"or, if the cell shows the warning on purpose, tag it "
                f"(# %% tags=[\"{SHOWS_WARNING_TAG}\"]) and name {first['category']} in the "
                f"text before it.")
        if SHOWS_WARNING_TAG in tags(cell) and deprecations:
            cell.metadata["handbook_warnings"] = sorted({w["category"] for w in deprecations})
        if SHOWS_WARNING_TAG in tags(cell) and not deprecations:
            problems.append(f"{where} is tagged {SHOWS_WARNING_TAG!r} but warned no "
                            f"DeprecationWarning or FutureWarning: remove the tag")
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if RAISES_TAG in tags(cell):
            expected = cell.metadata.get("raises")
            if not expected:
                problems.append(f"{where} is tagged {RAISES_TAG!r} but names no exception: "
                                f"write # %% tags=[\"{RAISES_TAG}\"] raises=\"ExceptionName\"")
            elif not errors:
                problems.append(f"{where} should raise {expected} (raises=\"{expected}\") "
                                "and raised nothing")
            elif errors[0].ename != expected:
                problems.append(f"{where} should raise {expected} and raised {errors[0].ename}: "
                                f"{errors[0].evalue}")
    return problems


# --- every page, in parallel ------------------------------------------------------------

def worker_count(workers: int = 0) -> int:
    """``workers``, or one kernel per core where it is 0."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Outcome:
    executed: dict[str, nbformat.NotebookNode]  # page id -> executed notebook
    ran: list[str]        # page ids executed in this build
    cached: list[str]     # page ids taken from the cache
    seconds: float


def execute_pages(pages: list[Page], root: Path, cache_dir: Path | None, workers: int = 0,
                  cell_timeout: int = 600, report=None) -> Outcome:
    """Each page's executed notebook, from the cache or run now (longest first, in parallel).

    ``report(message)`` hears of each page as it finishes: its time, and how many of
    those to run are done."""
    start = time.perf_counter()
    all_versions = versions()
    for page in pages:
        page.key = page_key(page.page_id, page.notebook, all_versions)
    cache = ExecutionCache(cache_dir, root)
    executed, todo = {}, []
    for page in pages:
        found = cache.get(page)
        if found is not None:
            executed[page.page_id] = found
        else:
            todo.append(page)
    todo.sort(key=lambda p: -len(code_cells(p.notebook)))
    slots_count = min(worker_count(workers), max(1, len(todo)))
    threads = max(1, worker_count(workers) // slots_count)
    if report and todo:
        report(f"Executing {len(todo)} of {len(pages)} pages ({len(pages) - len(todo)} from the "
               f"cache), {slots_count} at a time")
    done = 0

    async def run_all():
        slots = asyncio.Semaphore(slots_count)

        async def one(page):
            nonlocal done
            async with slots:
                began = time.perf_counter()
                try:
                    return await run_page(page, root, cache.hashes, threads, cell_timeout)
                finally:
                    done += 1
                    if report:
                        report(f"  {page.page_id}: {time.perf_counter() - began:.1f} s "
                               f"({done} of {len(todo)})")

        return await asyncio.gather(*(one(page) for page in todo), return_exceptions=True)

    problems = []
    results = asyncio.run(run_all()) if todo else []
    for page, result in zip(todo, results):
        if isinstance(result, PageError):
            problems.append(str(result))
            continue
        if isinstance(result, BaseException):
            problems.append(f"{page.page_id}: {type(result).__name__}: {result}")
            continue
        found = check_and_clean(page.page_id, result)
        if found:
            problems += found
            continue
        cache.put(page, result)
        executed[page.page_id] = result
    if problems:
        raise PageError("\n\n".join(problems))
    cache.keep_only(pages)
    return Outcome(executed, [p.page_id for p in todo],
                   [p.page_id for p in pages if p not in todo], time.perf_counter() - start)


# --- one language's page, with the shared outputs ---------------------------------------

def with_outputs(source: Path, executed, memo_dir: Path | None = None):
    """``source`` (one language's page) as a notebook, with the outputs of ``executed``."""
    notebook = read_notebook(source, memo_dir)
    ours, shared = code_cells(notebook), code_cells(executed)
    if [c.source for _, c in ours] != [c.source for _, c in shared]:
        raise PageError(f"{source}: its code cells are not those that were executed; "
                        "the code cells of a page must be identical in every language")
    for (_, cell), (_, done) in zip(ours, shared):
        cell.outputs = copy.deepcopy(done.outputs)
        cell.execution_count = None
    return notebook


def shows_warning_prose_problems(source: Path, executed, memo_dir: Path | None = None) -> list[str]:
    """A cell tagged shows-warning needs the text just before it to name what it warns."""
    notebook = read_notebook(source, memo_dir)
    problems, prose = [], ""
    shared = iter(code_cells(executed))
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            prose = cell.source
            continue
        _, done = next(shared)
        categories = done.metadata.get("handbook_warnings", [])
        missing = [c for c in categories if c not in prose]
        if SHOWS_WARNING_TAG in tags(cell) and missing:
            problems.append(f"{source}, cell {index} shows {', '.join(missing)} on purpose: "
                            "the text just before it should name it")
    return problems
