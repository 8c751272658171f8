"""The documentation's sources: every public name has a reference entry, every entry names a real
object, the pages speak to users, and the site checker (scripts/check_site.py) flags what it should.
Read from docs/*.md and README.md, so these run without mkdocs."""
import importlib
import importlib.util
import inspect
import os
import re
import sys

import pytest

import fastnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
API = os.path.join(DOCS, "api")
pytestmark = pytest.mark.skipif(not os.path.isdir(API), reason="no docs/ beside the tests (an installed copy)")

# the public submodules users call, beside fastnn.__all__
SUBMODULES = ["optim", "schedules", "losses", "callbacks", "data", "io", "onnx", "sklearn", "distributed",
              "diagnostics"]
# functions and classes defined in those modules that serve fastnn's own code, not users
INTERNAL = {
    "fastnn.optim.check_optimizer", "fastnn.losses.check_loss", "fastnn.losses.reduce_loss",
    "fastnn.data.check_X", "fastnn.data.check_seed", "fastnn.data.rng_for", "fastnn.data.epoch_order",
}


def resolve(path):
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def entries():
    """{page: [dotted path]} of the reference pages' ``::: path`` directives and their ``members:``."""
    out = {}
    for fname in sorted(os.listdir(API)):
        if not fname.endswith(".md"):
            continue
        paths, current, in_members = [], None, False
        with open(os.path.join(API, fname), encoding="utf-8") as f:
            for line in f:
                m = re.match(r":::\s*(\S+)", line)
                if m:
                    current, in_members = m.group(1), False
                    paths.append(current)
                elif current and re.match(r"\s+members:\s*$", line):
                    in_members = True
                elif in_members and re.match(r"\s+-\s*\w+", line):
                    paths.append(current + "." + line.strip().lstrip("-").strip())
                elif in_members and line.strip():
                    in_members = False
        out[fname] = paths
    return out


def documented():
    """(dotted paths, ids of the objects they name) of every reference entry but the developers' page."""
    paths = [p for page, ps in entries().items() if page != "bench.md" for p in ps]
    return set(paths), {id(resolve(p)) for p in paths}


def public_names(modname):
    """A submodule's public names: its ``__all__``, else the functions and classes it defines."""
    mod = importlib.import_module(f"fastnn.{modname}")
    if hasattr(mod, "__all__"):
        return list(mod.__all__)
    return [k for k, v in vars(mod).items()
            if not k.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
            and v.__module__ == mod.__name__ and f"{mod.__name__}.{k}" not in INTERNAL]


def test_every_reference_entry_names_an_object():
    for page, paths in entries().items():
        assert paths, f"docs/api/{page} documents nothing"
        for p in paths:
            try:
                resolve(p)
            except (ImportError, AttributeError) as e:
                pytest.fail(f"docs/api/{page}: '::: {p}' names nothing importable ({e})")


def test_every_name_in_fastnn_all_has_a_reference_entry():
    paths, ids = documented()
    missing = []
    for name in fastnn.__all__:
        obj = getattr(fastnn, name)
        if inspect.ismodule(obj):
            # a module is covered by its members' entries
            covered = any(p.startswith(obj.__name__ + ".") or getattr(resolve(p), "__module__", "") == obj.__name__
                          for p in paths)
        else:
            covered = f"fastnn.{name}" in paths or id(obj) in ids
        if not covered:
            missing.append(name)
    assert not missing, f"no entry in docs/api/*.md for fastnn.{', fastnn.'.join(missing)}"


@pytest.mark.parametrize("modname", SUBMODULES)
def test_every_public_name_of_a_submodule_has_a_reference_entry(modname):
    if modname == "sklearn":
        pytest.importorskip("sklearn")
    _, ids = documented()
    mod = importlib.import_module(f"fastnn.{modname}")
    missing = [n for n in public_names(modname) if id(getattr(mod, n)) not in ids]
    assert not missing, f"no entry in docs/api/*.md for {', '.join(f'fastnn.{modname}.{n}' for n in missing)}"


def test_entries_check_catches_a_missing_name(monkeypatch):
    """The name check fails for a public name without an entry (here: one added for the test)."""
    def new_public_function():
        """Not in the docs."""
    new_public_function.__module__ = "fastnn.optim"
    monkeypatch.setattr(fastnn.optim, "new_public_function", new_public_function, raising=False)
    assert "new_public_function" in public_names("optim")
    with pytest.raises(AssertionError, match="fastnn.optim.new_public_function"):
        test_every_public_name_of_a_submodule_has_a_reference_entry("optim")


def test_entries_read_directives_and_member_lists(tmp_path, monkeypatch):
    (tmp_path / "p.md").write_text("# P\n\n::: fastnn.Dense\n\n::: fastnn.layers\n    options:\n"
                                   "      members:\n        - LSTM\n        - GRU\n      heading_level: 3\n"
                                   "\nText.\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "API", str(tmp_path))
    assert entries() == {"p.md": ["fastnn.Dense", "fastnn.layers", "fastnn.layers.LSTM", "fastnn.layers.GRU"]}


def test_every_page_is_in_the_nav():
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        config = f.read()
    nav = config[config.index("\nnav:"):]
    for root, _, files in os.walk(DOCS):
        for fname in files:
            if fname.endswith(".md"):
                page = os.path.relpath(os.path.join(root, fname), DOCS)
                assert f": {page}" in nav or f"- {page}" in nav, f"docs/{page} is not in mkdocs.yml's nav"


def user_pages():
    """README.md and every docs/*.md page, as (name, text)."""
    names = ["README.md"] + [os.path.relpath(os.path.join(r, f), ROOT) for r, _, fs in os.walk(DOCS)
                             for f in fs if f.endswith(".md")]
    for name in names:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            yield name, f.read()


def test_pages_speak_to_users():
    """No notes a user cannot open, and the distribution's own name in every install line."""
    for name, text in user_pages():
        for word in ("SEED-NOTES", "DESIGN.md", "this round", "last round", "not kept"):
            assert word not in text, f"{name} mentions {word!r}"
        for m in re.finditer(r"pip install[^\n`&;|#]*", text):
            line = m.group()
            assert not re.search(r"[\s'\"]fastnn(?![-\w])", line), f"{name}: {line!r} installs someone else's fastnn"


def test_readme_is_a_users_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:40])
    assert "pip install . && fastnn train" in head
    assert 'pip install ".[test]" && pytest' in head
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert '\npip install ".[test]" && pytest\n' in f.read(), ".ci/run must run the README's test command"


# ------------------------------------------------------------------ scripts/check_site.py
def checker():
    spec = importlib.util.spec_from_file_location("check_site", os.path.join(ROOT, "scripts", "check_site.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write(site, files):
    for name, body in files.items():
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><body>{body}</body></html>", encoding="utf-8")


GOOD = {
    "index.html": '<h1 id="top">fastnn</h1><p>See <a href="guide/a.html#fit">fit</a>, <a href="#top">up</a>,'
                  ' <a href="https://example.org/x">elsewhere</a> and <img src="img/p.png">.</p>'
                  "<p><em>neural\nnetworks: tips and tricks</em>, a lecture; (<em>classic</em>) dropout.</p>",
    "guide/a.html": '<h2 id="fit">fit</h2><p>Text with <code>**kwargs</code> and <code>`x`</code>\n'
                    '<code>- x</code> - inside code; x * y.</p>'
                    '<pre><code>**bold** `tick` [a](b)\n# comment\n- item\n</code></pre>'
                    '<a href="../index.html">home</a> <a href="/index.html">root</a>',
}


def test_checker_passes_a_good_site(tmp_path):
    write(tmp_path, GOOD)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "p.png").write_bytes(b"\x89PNG")
    assert checker().check(str(tmp_path)) == []


@pytest.mark.parametrize("body, expect", [
    ('<a href="missing.html">x</a>', "broken link 'missing.html'"),
    ('<a href="index.html#nowhere">x</a>', "has no anchor #nowhere"),
    ('<a href="#nowhere">x</a>', "has no anchor #nowhere"),
    ('<img src="img/none.png">', "no file img/none.png"),
    ("<p>a **bold** word</p>", "raw bold marker"),
    ("<p>call `fit` here</p>", "raw backtick"),
    ("<p>see [the guide](guide.md)</p>", "raw link syntax"),
    ("<p>a list:\n- one\n- two</p>", "a paragraph line starts with Markdown: '- one'"),
    ("<p>text\n# Heading</p>", "a paragraph line starts with Markdown: '# Heading'"),
    ("<p>fastnn/<em>core/recurrent.pxi, [x_t, h</em>{t-1}]</p>", "italics opened inside a word"),
    ("<p>a <em>b, h</em>{t-1}</p>", "italics closed inside a word"),
])
def test_checker_flags_a_bad_page(tmp_path, body, expect):
    write(tmp_path, {"index.html": '<h1 id="top">t</h1>', "page.html": body})
    problems = checker().check(str(tmp_path))
    assert problems and all(p.startswith("page.html: ") for p in problems), problems
    assert any(expect in p for p in problems), problems


def test_checker_fails_where_there_is_no_site(tmp_path, capsys):
    assert checker().main([str(tmp_path)]) == 1
    assert "no HTML page" in capsys.readouterr().err
