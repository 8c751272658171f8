"""mkdocs hook: one page per example script (examples/*.py), made of its own docstring, its picture
and its code, so that the pages cannot drift from the scripts; and an index of them."""
import ast
import os

from mkdocs.structure.files import File


def _doc(source, name):
    doc = ast.get_docstring(ast.parse(source)) or name
    title, _, body = doc.partition("\n")
    return title.strip().rstrip("."), body.strip()


def _page(name, source, has_picture):
    title, body = _doc(source, name)
    parts = [f"# {title}", "", body, "",
             f"Run it from a clone of the repository: `python examples/{name}.py` (`--help` lists its options)."]
    if has_picture:
        # the command scripts/doc_pictures.py runs to draw it
        parts += ["", f"`python examples/{name}.py --plot docs/img/{name}.png` draws:", "",
                  f"![{title}](../img/{name}.png)"]
    parts += ["", "## The script", "", "```python", source.rstrip(), "```", ""]
    return "\n".join(parts)


def _index(entries):
    parts = ["# Examples", "",
             "Each example is a script in the `examples/` folder of a clone that runs one experiment of "
             "the training craft with fastnn's public API and prints what it shows. All but the MPI one "
             "take `--small` (a run of a second or two), `--seed N` and `--threads N` (the numbers do not "
             "depend on it); most draw their result with `--plot out.png` (needs matplotlib).", "",
             "| example | run it |", "|---|---|"]
    parts += [f"| [{title}]({name}.md) | `python examples/{name}.py` |" for name, title in entries]
    return "\n".join(parts + [""])


def _nav_order(config):
    """The example pages' names in the order the nav lists them."""
    order = []

    def walk(items):
        for item in items or []:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                walk(value)
            elif isinstance(value, str) and value.startswith("examples/") and value != "examples/index.md":
                order.append(value[len("examples/"):-len(".md")])

    walk(config["nav"])
    return order


def on_files(files, config):
    base = os.path.dirname(config["config_file_path"])
    root = os.path.join(base, "examples")
    entries = []
    for fname in sorted(os.listdir(root)):
        if not fname.endswith(".py") or fname.startswith("_"):
            continue
        with open(os.path.join(root, fname), encoding="utf-8") as f:
            source = f.read()
        name = fname[:-3]
        has_picture = os.path.exists(os.path.join(base, "docs", "img", f"{name}.png"))
        files.append(File.generated(config, f"examples/{name}.md", content=_page(name, source, has_picture)))
        entries.append((name, _doc(source, name)[0]))
    order = _nav_order(config)
    entries.sort(key=lambda e: order.index(e[0]) if e[0] in order else len(order))
    files.append(File.generated(config, "examples/index.md", content=_index(entries)))
    return files
