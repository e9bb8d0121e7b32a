"""Documentation checks.

- Every public function and class has a docstring with an ``Examples:`` section.
- Every public object's doctests pass (one test per name).
- The Python code blocks of the README and of ``docs/*.md`` run.
- The generated API reference (``docs/gen_api.py``) lists every public name on a page in the nav.
"""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest

import torchopt_fn as tf

ROOT = Path(__file__).resolve().parents[1]
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PUBLIC_NAMES = list(dict.fromkeys(tf.__all__))  # dict.fromkeys: unique, in order


def documented_objects() -> dict[str, object]:
    """The public functions and classes defined here (not type aliases such as ``Params = Any``)."""
    out = {}
    for name in PUBLIC_NAMES:
        obj = getattr(tf, name)
        ours = getattr(obj, "__module__", "").startswith("torchopt_fn")
        if ours and (inspect.isfunction(obj) or inspect.isclass(obj)):
            out[name] = obj
    return out


def test_every_public_function_and_class_has_examples():
    missing = [
        name
        for name, obj in documented_objects().items()
        if "Examples:" not in (obj.__doc__ or "")  # the object's own docstring, not inherited
    ]
    assert not missing, f"{len(missing)} public names lack an `Examples:` section: {missing}"


@pytest.mark.parametrize("name", list(documented_objects()))
def test_doctests(name):
    obj = getattr(tf, name)
    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(obj, name, globs={}) if t.examples]
    if not tests:
        pytest.skip("no doctest (test_every_public_function_and_class_has_examples reports it)")
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


MARKDOWN_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


SNIPPET = re.compile(r'^--8<-- "([^":]+):([\w-]+)"$', re.MULTILINE)


def expand_snippets(block: str) -> str:
    """A block with pymdownx.snippets' ``--8<-- "file:section"`` lines, as the site shows it."""

    def section(match: re.Match) -> str:
        text = (ROOT / match.group(1)).read_text()
        start, end = f"# --8<-- [start:{match.group(2)}]\n", f"# --8<-- [end:{match.group(2)}]"
        return text[text.index(start) + len(start) : text.index(end)]

    return SNIPPET.sub(section, block)


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_code_blocks_run(path):
    """Each page's ```python blocks run in order, in one namespace, as a reader would (with
    the sections of files that they include)."""
    blocks = [expand_snippets(b) for b in CODE_BLOCK.findall(path.read_text())]
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{path.name}, code block {i} failed:\n{block}") from e


def load_gen_api():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_covers_every_public_name_once():
    pages = load_gen_api().pages()
    listed = re.findall(r"^::: torchopt_fn\.(\w+)$", "\n".join(pages.values()), re.MULTILINE)
    expected = [n for n in PUBLIC_NAMES if not inspect.ismodule(getattr(tf, n))]
    assert sorted(listed) == sorted(expected)
    nav = (ROOT / "mkdocs.yml").read_text()
    missing_from_nav = [page for page in pages if f"api/{page}" not in nav]
    assert not missing_from_nav, f"add these API pages to mkdocs.yml's nav: {missing_from_nav}"


def test_every_docs_page_is_in_the_nav():
    """mkdocs --strict does not complain about a page left out of the nav; this test does."""
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.name for p in (ROOT / "docs").glob("*.md")]
    missing = [page for page in pages if not re.search(rf"\s{re.escape(page)}\s", nav)]
    assert not missing, f"add these pages to mkdocs.yml's nav: {missing}"


def test_readme_catalogue_lists_every_public_function():
    readme = (ROOT / "README.md").read_text()
    catalogue = readme[readme.index("## Catalogue") :]
    functions = [n for n, obj in documented_objects().items() if inspect.isfunction(obj)]
    missing = [n for n in functions if f"`{n}`" not in catalogue]
    assert not missing, f"add these to the README's catalogue: {missing}"


def test_optax_coverage_classifies_every_name_and_claims_only_what_exists():
    gen = load_gen_api()
    names = json.loads(gen.OPTAX_NAMES.read_text())
    notes = json.loads(gen.COVERAGE.read_text())
    statuses = {
        (module, name): gen.optax_status(module, name)
        for module, module_names in names.items()
        for name in module_names
    }
    unclassified = [f"{m}.{n}" for (m, n), (s, _) in statuses.items() if s == "unclassified"]
    assert not unclassified, f"add these to docs/optax_coverage.json: {unclassified}"
    # A name we now have must leave the notes (not applicable or missing).
    have = {n for (_, n), (s, _) in statuses.items() if s == "have"}
    stale = sorted(have & (set(notes["missing"]) | set(notes["not_applicable"])))
    assert not stale, f"implemented, remove from docs/optax_coverage.json: {stale}"
    page = gen.coverage_page()
    assert page.count("\n| `optax") == len(statuses)


def test_every_contrib_name_has_examples_and_its_doctests_pass():
    for name in tf.contrib.__all__:
        obj = getattr(tf.contrib, name)
        assert "Examples:" in (obj.__doc__ or ""), name
        finder = doctest.DocTestFinder(recurse=False)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        for test in finder.find(obj, name, globs={}):
            runner.run(test)
        assert runner.failures == 0, name


def test_contrib_has_every_public_name_of_optax_contrib():
    names = json.loads(load_gen_api().OPTAX_NAMES.read_text())["optax.contrib"]
    missing = [n for n in names if n not in tf.contrib.__all__]
    assert not missing, f"optax.contrib names missing from tf.contrib: {missing}"
