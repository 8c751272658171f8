#!/usr/bin/env python3
"""Check a built documentation site (the HTML that `mkdocs build` writes) for what a reader would
trip over:

- a relative link or image (``href``/``src``) to a file that is not there, or to an anchor
  (``#id``) that the target page does not have;
- Markdown that was not rendered and shows as text: ``**``, a backtick, ``](``, a paragraph line
  that starts with ``#``, ``- ``, ``* `` or ``1. `` (a heading or a list that ran into a paragraph), or an
  italic span opened or closed inside a word (a ``_`` in a file name or formula read as emphasis).

Text inside ``<pre>``, ``<code>``, ``<script>`` and ``<style>`` is never checked.

    python scripts/check_site.py SITE_DIR        # exit status 1 and one line per problem if any
"""
import os
import re
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

SKIP_TEXT = {"pre", "code", "script", "style", "kbd", "samp", "textarea"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
RAW = [("**", "raw bold marker '**'"), ("`", "raw backtick"), ("](", "raw link syntax '](")]
LINE_START = re.compile(r"^(#{1,6} |- |\* |\d+\. )")


class Page(HTMLParser):
    """One page's ids, links and the text of its elements (code left out)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.problems = set(), [], []
        self.stack = []            # open elements: [tag, skip_text, collected text]
        self.last_text = ""        # the text just before the current position (outside code)
        self.em_after = None       # an <em> just closed: the next text must not start inside a word

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.links.append(a[key])
        skip = tag in SKIP_TEXT or any(s for _, s, _ in self.stack)
        if tag == "em" and not skip and re.search(r"[\w/]$", self.last_text):
            self.problems.append(f"italics opened inside a word, after {self.last_text[-30:]!r}")
        self.last_text, self.em_after = "", None
        if tag not in VOID:
            self.stack.append([tag, skip, []])

    def handle_endtag(self, tag):
        self.last_text, self.em_after = "", None
        if tag in VOID or not any(t == tag for t, _, _ in self.stack):
            return
        while self.stack:
            t, skip, text = self.stack.pop()
            if self.stack and not self.stack[-1][1]:
                # code stands in as one character, so the text after it does not start a line
                self.stack[-1][2].append("\x00" if skip else "".join(text))
            if t == tag:
                break
        if skip:
            return
        if tag == "p":
            self._paragraph("".join(text))
        if tag == "em":
            self.em_after = "".join(text)

    def handle_data(self, data):
        if not self.stack or self.stack[-1][1]:
            return
        self.stack[-1][2].append(data)
        if self.em_after is not None and re.match(r"[\w{]", data):
            self.problems.append(f"italics closed inside a word: {self.em_after[-30:]!r} then {data[:20]!r}")
        self.em_after = None
        for marker, what in RAW:
            if marker in data:
                self.problems.append(f"{what} in {data.strip()[:60]!r}")
        self.last_text = data

    def _paragraph(self, text):
        for line in text.split("\n"):
            if LINE_START.match(line.strip()):
                shown = line.strip().replace("\x00", "<code>")[:60]
                self.problems.append(f"a paragraph line starts with Markdown: {shown!r}")


def parse(path):
    page = Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    page.close()
    return page


def check(site):
    """Every problem of the site under ``site``, as 'page: message' lines."""
    pages = {}
    for root, _, files in os.walk(site):
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(root, name)
                pages[os.path.relpath(path, site)] = parse(path)
    problems = [f"{name}: {p}" for name, page in sorted(pages.items()) for p in page.problems]
    for name, page in sorted(pages.items()):
        for link in page.links:
            msg = _broken(site, name, link, pages)
            if msg:
                problems.append(f"{name}: {msg}")
    return problems


def _broken(site, name, link, pages):
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith("//"):
        return None                                  # another site: not checked here
    path = unquote(parts.path)
    if path:
        # "/x" is the site's root (mkdocs's 404 page links so, as it is served at any path)
        base = "" if path.startswith("/") else os.path.dirname(name)
        target = os.path.normpath(os.path.join(base, path.lstrip("/")))
        full = os.path.join(site, target)
        if os.path.isdir(full):
            target, full = os.path.join(target, "index.html"), os.path.join(full, "index.html")
        if target.startswith(".."):
            return f"link {link!r} leaves the site"
        if not os.path.isfile(full):
            return f"broken link {link!r}: no file {target}"
    else:
        target = name
    if parts.fragment and target.endswith(".html"):
        if unquote(parts.fragment) not in pages[os.path.normpath(target)].ids:
            return f"broken link {link!r}: {target} has no anchor #{parts.fragment}"
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    problems = check(argv[0])
    for p in problems:
        print(p)
    n = len([f for _, _, fs in os.walk(argv[0]) for f in fs if f.endswith(".html")])
    print(f"{n} pages checked, {len(problems)} problems", file=sys.stderr)
    if n == 0:
        print(f"no HTML page under {argv[0]}: is that the built site?", file=sys.stderr)
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
