"""mkdocs hook: one page per example script (examples/*.py), made of its own docstring and code,
so that the pages cannot drift from the scripts."""
import ast
import os

from mkdocs.structure.files import File

# pictures an example draws that are kept in docs/ (made with the command shown on the page)
PICTURES = {"vanishing_gradients": ("diagnostics.png", "--plot docs/diagnostics.png")}


def _page(name, source):
    doc = ast.get_docstring(ast.parse(source)) or name
    title, _, body = doc.partition("\n")
    parts = [f"# {title.strip().rstrip('.')}", "", body.strip(), "",
             f"The script is `examples/{name}.py` in a checkout (`--help` lists its options)."]
    if name in PICTURES:
        png, cmd = PICTURES[name]
        parts += ["", f"`python examples/{name}.py {cmd}` draws:", "", f"![{name}](../{png})"]
    parts += ["", "## The script", "", "```python", source.rstrip(), "```", ""]
    return "\n".join(parts)


def on_files(files, config):
    root = os.path.join(os.path.dirname(config["config_file_path"]), "examples")
    for fname in sorted(os.listdir(root)):
        if not fname.endswith(".py") or fname.startswith("_"):
            continue
        with open(os.path.join(root, fname), encoding="utf-8") as f:
            source = f.read()
        name = fname[:-3]
        files.append(File.generated(config, f"examples/{name}.md", content=_page(name, source)))
    return files
