"""Generate the API reference from ``torchopt_fn.__all__``, so that no public name goes missing.

mkdocs-gen-files runs this file during ``mkdocs build``; the pages exist only in the built site.
Each public name goes to the page of the family that defines it (the subpackage, or the core),
under a heading for its private module taken from that module's docstring.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path
from types import ModuleType

import torchopt_fn

# page file -> (title, intro). A subpackage gets a page of its own name; the order is the nav's.
PAGES = {
    "core.md": ("Core", "The contract, the combinators and applying updates."),
    "transforms.md": ("Transforms", "The building blocks that `chain` composes."),
    "optimizers.md": ("Optimizers", "Named optimizers: chains of transforms with optax's names."),
    "schedules.md": ("Schedules", "Pure torch functions of the 0-d step count."),
    "wrappers.md": ("Wrappers", "Transformations that wrap other transformations."),
    "second_order.md": ("Curvature", "Hessian-vector products, diagonals, eigenvalues, roots."),
    "implicit.md": (
        "Implicit differentiation",
        "`custom_root` and the matrix-free linear solvers it uses.",
    ),
    "projections.md": ("Projections", "Closest points of convex sets, for projected gradients."),
    "interop.md": ("torch.optim interoperability", "From and to `torch.optim`."),
    "tree.md": ("Tree utilities", "Pytree arithmetic; `None` leaves mean 'no value'."),
}


def _modules() -> list[ModuleType]:
    """Every module of the package, imported."""
    found = [torchopt_fn]
    for info in pkgutil.walk_packages(torchopt_fn.__path__, prefix="torchopt_fn."):
        found.append(importlib.import_module(info.name))
    return found


def defining_module(name: str, modules: list[ModuleType]) -> str:
    """The module that defines ``name``: the first implementation module listing it in ``__all__``.

    Type aliases (``Params = Any``) have no ``__module__`` of their own, hence ``__all__``.
    """
    owners = [
        m.__name__
        for m in modules
        if m.__file__ is not None
        and not m.__file__.endswith("__init__.py")
        and name in getattr(m, "__all__", ())
    ]
    if owners:
        return sorted(owners)[0]
    return getattr(getattr(torchopt_fn, name), "__module__", None) or "torchopt_fn"


def page_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 3:  # torchopt_fn.<subpackage>.<_module>
        return f"{parts[1]}.md"
    return "core.md"


def grouping() -> dict[str, dict[str, list[str]]]:
    """page -> defining module -> public names, in ``__all__`` order."""
    modules = _modules()
    pages: dict[str, dict[str, list[str]]] = {}
    for name in dict.fromkeys(torchopt_fn.__all__):  # dict.fromkeys drops duplicates, keeps order
        if inspect.ismodule(getattr(torchopt_fn, name)):
            continue
        module = defining_module(name, modules)
        pages.setdefault(page_of(module), {}).setdefault(module, []).append(name)
    return pages


def _section_title(module: str) -> str:
    doc = inspect.getdoc(importlib.import_module(module)) or module
    return doc.splitlines()[0].rstrip(".")


def pages() -> dict[str, str]:
    """The markdown of every API page, keyed by its path under ``docs/api/``."""
    grouped = grouping()
    order = [p for p in PAGES if p in grouped] + sorted(set(grouped) - set(PAGES))
    out = {}
    for page in order:
        title, intro = PAGES.get(page, (page.removesuffix(".md").capitalize(), ""))
        lines = [f"# {title}", "", intro, ""]
        sections = grouped[page]
        for module, names in sections.items():
            if len(sections) > 1:
                lines += [f"## {_section_title(module)}", ""]
            lines += [f"::: torchopt_fn.{name}\n" for name in names]
        out[page] = "\n".join(lines)
    out["contrib.md"] = "\n".join(
        [
            "# Research optimizers (`tf.contrib`)",
            "",
            _section_title("torchopt_fn.contrib") + ".",
            "",
            *[f"::: torchopt_fn.contrib.{name}\n" for name in torchopt_fn.contrib.__all__],
        ]
    )
    return out


# --------------------------------------------------------------------------- optax coverage

DOCS = Path(__file__).parent
OPTAX_NAMES = DOCS.parent / "tests" / "goldens" / "optax_names.json"  # every public name, by module
COVERAGE = DOCS / "optax_coverage.json"  # the names not here: why (not applicable) or what is due


def optax_status(module: str, name: str) -> tuple[str, str]:
    """``("have", our name)``, ``("not applicable", why)`` or ``("missing", what)``."""
    notes = json.loads(COVERAGE.read_text())
    if module == "optax.contrib":
        if hasattr(torchopt_fn.contrib, name):
            return "have", f"contrib.{name}"
        return "missing", "research optimizers (`tf.contrib`)"
    ours = [name, f"tree_{name}"] if module == "optax.tree" else [name]
    for candidate in ours:
        if hasattr(torchopt_fn, candidate):
            return "have", candidate
    if name in notes["not_applicable"]:
        return "not applicable", notes["not_applicable"][name]
    if name in notes["missing"]:
        return "missing", notes["missing"][name]
    return "unclassified", ""


def coverage_page() -> str:
    """The optax coverage table: every optax 0.2.8 public name outside ``optax.losses``."""
    names = json.loads(OPTAX_NAMES.read_text())
    rows, counts = [], {"have": 0, "not applicable": 0, "missing": 0, "unclassified": 0}
    for module, module_names in names.items():
        for name in module_names:
            status, note = optax_status(module, name)
            counts[status] += 1
            here = f"`tf.{note}`" if status == "have" else ""
            why = "" if status == "have" else note
            rows.append(f"| `{module}.{name}` | {status} | {here} | {why} |")
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return "\n".join(
        [
            "# optax coverage",
            "",
            "Every public name of optax 0.2.8 outside `optax.losses` (the",
            "root namespace and its submodules; the root also re-exports some losses), and where",
            f"it is here. {summary}. Names in `optax.tree` map to `tree_*` names here.",
            "",
            "| optax | status | here | note |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )


# The maths renderer, served with the site so that formulas render offline: MathJax 3's
# self-contained SVG build, from the `django-static-mathjax` wheel (docs extra).
MATHJAX = ("static", "mathjax", "es5", "tex-svg.js")


def mathjax_source() -> str:
    import mathjax  # django-static-mathjax: MathJax's files, no Django needed to read them

    return Path(mathjax.__file__).parent.joinpath(*MATHJAX).read_text(encoding="utf-8")


def main() -> None:
    import mkdocs_gen_files

    for page, text in pages().items():
        with mkdocs_gen_files.open(f"api/{page}", "w") as f:
            f.write(text)
    with mkdocs_gen_files.open("javascripts/tex-svg.js", "w") as f:
        f.write(mathjax_source())
    with mkdocs_gen_files.open("optax_coverage.md", "w") as f:
        f.write(coverage_page())


# mkdocs-gen-files executes this file with runpy.run_path, whose default run name is "<run_path>";
# run directly, it lists what each page would hold.
if __name__ == "<run_path>":
    main()
elif __name__ == "__main__":
    for page, sections in grouping().items():
        print(page, {module: len(names) for module, names in sections.items()})
