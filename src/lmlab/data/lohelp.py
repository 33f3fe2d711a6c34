"""LibreOffice's help in two languages as parallel text (`builtin:lohelp-en-de`): CoVe's translation data.

Source: the Debian packages `libreoffice-help-en-us` and `libreoffice-help-de` (MPL-2.0). `apt-get
download` fetches the .deb files (nothing is installed) into lmlab's cache (`$LMLAB_CACHE/debian/`),
`dpkg -x` unpacks them beside; the corpus is built from `usr/share/libreoffice/help/<LANG>/text/**.html`
at run time and cached as JSON lines, never shipped. `lmlab data fetch` (and `make data`) fetches
the .deb files ahead of time.

Alignment: the two languages have the same 2,560 pages, and every paragraph and heading carries a
stable id (`<p id="par_id3149489">`, `<h2 id="hd_id3150040">`; the hidden bookmark paragraphs
`bm_*` of every page are left out). A block's key is (page path
relative to the language folder, id, occurrence of that id in the page); keys present in both
languages pair their texts. A block's text is its text content without the subtrees the page hides
(`hidden` attributes: the macOS variants of menu paths), whitespace collapsed. Pairs with an empty
side, identical sides (untranslated) or more than 100 words on a side are dropped. Debian 12's
7.4.7 packages give 53,798 pairs (34,828 distinct) from 2,545 pages, ~590k English and ~570k German
words.

Alignment over all pages takes about half a minute; the result is cached per package version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from lmlab.data.corpora import cache_dir
from lmlab.errors import DataError

HELP = "usr/share/libreoffice/help"
LANGUAGES = {"en": ("libreoffice-help-en-us", "en-US"), "de": ("libreoffice-help-de", "de")}
MAX_WORDS = 100
FORMAT = 1  # of the cached pairs: a new alignment rule, a new cache file
_SKIP_ID = re.compile(r"bm_")  # the hidden bookmark paragraphs every page has
_BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def debian_dir() -> Path:
    return cache_dir() / "debian"


def _deb(package: str) -> Path | None:
    """The newest cached .deb of `package`, or None."""
    found = sorted(debian_dir().glob(f"{package}_*.deb"))
    return found[-1] if found else None


def fetch_debs(languages: tuple[str, ...] = ("en", "de")) -> str | None:
    """Download the help packages' .deb files into the cache (`apt-get download`, no install);
    None when they are there, else why not (one line)."""
    missing = [LANGUAGES[lang][0] for lang in languages if _deb(LANGUAGES[lang][0]) is None]
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"no apt-get here to download {' and '.join(missing)} (Debian packages)"
    debian_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".apt-", dir=debian_dir()))
    try:
        cmd = ["apt-get", "download", "-q", "-o", "Acquire::Retries=0", "-o", "Acquire::http::Timeout=15",
               *missing]
        try:
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"apt-get download {' '.join(missing)} failed ({e})"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            return f"apt-get download {' '.join(missing)} failed ({last}); try apt-get update first"
        for deb in tmp.glob("*.deb"):
            os.replace(deb, debian_dir() / deb.name)  # whole files only: a rename
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return None


def _unpacked(package: str) -> Path:
    """The folder the package's .deb is unpacked into (dpkg -x), fetched and unpacked on first use."""
    deb = _deb(package)
    if deb is None:
        why = fetch_debs(tuple(lang for lang, (p, _) in LANGUAGES.items() if p == package))
        deb = _deb(package)
        if deb is None:
            raise DataError(f"builtin:lohelp-en-de needs the Debian package {package}: {why}")
    target = deb.with_suffix("")
    if not (target / HELP).is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".dpkg-", dir=deb.parent))
        try:
            done = subprocess.run(["dpkg", "-x", str(deb), str(tmp)], capture_output=True, text=True,
                                  timeout=600)
            if done.returncode != 0 or not (tmp / HELP).is_dir():
                raise DataError(f"{deb}: dpkg -x failed ({done.stderr.strip() or 'no help folder inside'}); "
                                f"delete it to fetch it again")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except OSError as e:
            raise DataError(f"{deb}: cannot unpack ({e}); is dpkg installed?") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class _Blocks(HTMLParser):
    """(id, text) of every paragraph and heading with an id (not bm_*), in page order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.hidden: int | None = None  # the depth at which a hidden subtree started
        self.current: tuple[str, list[str], int] | None = None
        self.blocks: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            if tag == "br" and self.current is not None:
                self.current[1].append(" ")
            return
        self.stack.append(tag)
        attrs = dict(attrs)
        if self.hidden is None and "hidden" in attrs:
            self.hidden = len(self.stack)
        block_id = attrs.get("id") or ""
        if tag in _BLOCKS and self.current is None and block_id and not _SKIP_ID.match(block_id):
            self.current = (block_id, [], len(self.stack))

    def handle_endtag(self, tag):
        if tag in _VOID or tag not in self.stack:
            return
        while self.stack:
            depth = len(self.stack)
            top = self.stack.pop()
            if self.hidden is not None and depth <= self.hidden:
                self.hidden = None
            if self.current is not None and depth == self.current[2]:
                self.blocks.append((self.current[0], " ".join("".join(self.current[1]).split())))
                self.current = None
            if top == tag:
                break

    def handle_data(self, data):
        if self.current is not None and self.hidden is None:
            self.current[1].append(data)


def page_blocks(html: str) -> dict[tuple[str, int], str]:
    """{(id, occurrence): text} of one help page."""
    parser = _Blocks()
    parser.feed(html)
    parser.close()
    seen: dict[str, int] = {}
    out = {}
    for block_id, text in parser.blocks:
        n = seen.get(block_id, 0)
        seen[block_id] = n + 1
        out[(block_id, n)] = text
    return out


def align(source_root: Path, target_root: Path) -> list[dict]:
    """[{"page", "key", "source", "target"}] of the help pages under the two language folders, in
    (page, position) order, after the drops of the module docstring."""
    pairs = []
    for path in sorted(source_root.rglob("*.html")):
        rel = path.relative_to(source_root).as_posix()
        other = target_root / rel
        if not other.is_file():
            continue
        src = page_blocks(path.read_text(encoding="utf-8", errors="replace"))
        tgt = page_blocks(other.read_text(encoding="utf-8", errors="replace"))
        for key, s in src.items():
            t = tgt.get(key)
            if not t or not s or s == t or len(s.split()) > MAX_WORDS or len(t.split()) > MAX_WORDS:
                continue
            pairs.append({"page": rel, "key": f"{key[0]}#{key[1]}", "source": s, "target": t})
    return pairs


def lohelp_pairs(source_lang: str = "en", target_lang: str = "de") -> list[dict]:
    """Every aligned pair of the two languages' help (cached after the first alignment)."""
    roots, versions = [], []
    for lang in (source_lang, target_lang):
        package, folder = LANGUAGES[lang]
        unpacked = _unpacked(package)
        roots.append(unpacked / HELP / folder / "text")
        versions.append(unpacked.name)
    key = hashlib.sha256(json.dumps([FORMAT, MAX_WORDS, *versions]).encode()).hexdigest()[:16]
    cached = cache_dir() / "parallel" / f"lohelp-{source_lang}-{target_lang}-{key}.jsonl"
    if cached.is_file():
        return [json.loads(line) for line in cached.read_text(encoding="utf-8").splitlines()]
    pairs = align(*roots)
    if not pairs:
        raise DataError(f"{roots[0]} and {roots[1]}: no aligned paragraphs; the unpacked packages look "
                        f"damaged")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    os.replace(tmp, cached)
    return pairs


def deb_status() -> tuple[bool, str]:
    """(whether both .deb files are in the cache, how to get them) without touching the network."""
    missing = [LANGUAGES[lang][0] for lang in ("en", "de") if _deb(LANGUAGES[lang][0]) is None]
    if not missing:
        return True, ""
    return False, f"fetched on first use: apt-get download {' '.join(missing)}"
