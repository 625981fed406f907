"""A paper's LaTeX read as TeX would, before anything looks for floats: decoding, comments,
`verbatim`-like environments, `\\verb` and `\\iffalse` blocks dropped; brace and bracket
matching; `\\input`, `\\include`, `\\subfile` and `\\import`/`\\subimport` followed from each
root document into one flattened text (marks record which file and graphics folder each part
comes from); the paper's simple `\\newcommand`/`\\def` macros collected and expanded.

Everything is bounded, since the sources are a stranger's: inputs nest at most
`MAX_INPUT_DEPTH` deep and a loop is cut, the flattened document is capped at `MAX_DOCUMENT_CHARS`,
macro expansion stops after `MAX_EXPANSIONS` steps, and braces are matched within
`MAX_CAPTION_CHARS`. `pipeline.latex` reads the floats and captions of the result.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import PurePosixPath

MAX_INPUT_DEPTH = 24
MAX_DOCUMENT_CHARS = 16_000_000
MAX_EXPANSIONS = 2_000
MAX_EXPANDED_CHARS = 50_000
MAX_CAPTION_CHARS = 20_000

# The commands a graphic's path comes from, and sub-figure commands: the float reader's words.
SUB_COMMANDS = {"subfloat", "subfigure", "sidesubfloat", "subtable"}
GRAPHIC_COMMANDS = {"includegraphics", "includesvg", "epsfbox", "epsffile", "adjincludegraphics"}
# Commands the readers handle themselves: a paper redefining one of them is not expanded.
_STRUCTURE = {"caption", "captionof", "subcaption", "subcaptionbox", "label", "begin", "end",
              "input", "include", "subfile", "import", "subimport"} | SUB_COMMANDS | GRAPHIC_COMMANDS


# --- reading the text -----------------------------------------------------------------------------

def decode_tex(data: bytes) -> str:
    """A LaTeX source's text: UTF-8, else Latin-1 (older papers' usual `inputenc`), never failing."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_VERBATIM_ENVS = r"(?:verbatim\*?|Verbatim\*?|lstlisting|minted|comment|filecontents\*?|alltt)"
_VERBATIM = re.compile(r"\\begin\s*\{(" + _VERBATIM_ENVS + r")\}.*?\\end\s*\{\1\}", re.S)
_VERB = re.compile(r"\\verb\*?([^A-Za-z\s*])(?:(?!\1).)*?\1")
_IF_TOKEN = re.compile(r"\\(iffalse|if[A-Za-z@]*|fi)(?![A-Za-z@])")


def strip_comments(text: str) -> str:
    """`text` without TeX comments (an escaped `\\%` stays, `\\\\%` starts a comment), without
    `verbatim`-like environments, `\\verb|...|` and `\\iffalse ... \\fi` blocks, cut at `\\endinput`."""
    out = []
    for line in text.split("\n"):
        i = line.find("%")
        while i >= 0:
            slashes = len(line[:i]) - len(line[:i].rstrip("\\"))
            if slashes % 2 == 0:
                line = line[:i]
                break
            i = line.find("%", i + 1)
        out.append(line)
    text = "\n".join(out)
    text = _VERBATIM.sub(" ", text)
    text = _VERB.sub(" ", text)
    text = _drop_iffalse(text)
    end = re.search(r"\\endinput(?![A-Za-z@])", text)
    return text[: end.start()] if end else text


def _drop_iffalse(text: str) -> str:
    """Remove `\\iffalse ... \\fi` (nested conditionals counted; unclosed: to the end)."""
    if "\\iffalse" not in text:
        return text
    out, pos, depth, start = [], 0, 0, 0
    for m in _IF_TOKEN.finditer(text):
        name = m.group(1)
        if depth == 0:
            if name == "iffalse":
                out.append(text[pos:m.start()])
                depth, start = 1, m.start()
            continue
        if name == "fi":
            depth -= 1
            if depth == 0:
                pos = m.end()
        elif name.startswith("if") and name != "ifthenelse":
            depth += 1
    if depth:
        return "".join(out)
    out.append(text[pos:])
    return "".join(out)


_BRACE = re.compile(r"\\.|[{}]", re.S)


def match_brace(text: str, i: int, limit: int = MAX_CAPTION_CHARS) -> int:
    """Index just past the `}` closing the `{` at `text[i]`, or -1 (unbalanced within `limit`)."""
    depth = 0
    for m in _BRACE.finditer(text, i, min(len(text), i + limit)):
        c = m.group(0)
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return m.end()
    return -1


def _match_bracket(text: str, i: int, limit: int = MAX_CAPTION_CHARS) -> int:
    """Index just past the `]` closing the `[` at `text[i]` (braces may hold `]`), or -1."""
    depth, end, j = 0, min(len(text), i + limit), i + 1
    while j < end:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "]" and depth <= 0:
            return j + 1
        j += 1
    return -1


def skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


class Args:
    """Parse a command's arguments from `pos`: `optional()` and `mandatory()` return the inside
    of `[...]` / `{...}` (None when absent or unbalanced) and move on."""

    def __init__(self, text: str, pos: int, limit: int = MAX_CAPTION_CHARS):
        self.text, self.pos, self.limit, self.broken = text, pos, limit, False

    def optional(self) -> str | None:
        i = skip_space(self.text, self.pos)
        if i < len(self.text) and self.text[i] == "[":
            j = _match_bracket(self.text, i, self.limit)
            if j < 0:
                self.broken = True
                return None
            self.pos = j
            return self.text[i + 1: j - 1]
        return None

    def mandatory(self) -> str | None:
        i = skip_space(self.text, self.pos)
        if i >= len(self.text):
            self.broken = True
            return None
        if self.text[i] == "{":
            j = match_brace(self.text, i, self.limit)
            if j < 0:
                self.broken = True
                return None
            self.pos = j
            return self.text[i + 1: j - 1]
        m = re.compile(r"\\[A-Za-z@]+|[^\s{}%]").match(self.text, i)  # a single-token argument
        if not m:
            self.broken = True
            return None
        self.pos = m.end()
        return m.group(0)


# --- following \input & co ----------------------------------------------------------------------

_INPUT = re.compile(
    r"\\(input|include|subfile|import|subimport|inputfrom|subinputfrom|includefrom|subincludefrom)"
    r"(?![A-Za-z@])\s*")
_DOCUMENT = re.compile(r"\\begin\s*\{document\}(.*?)(?:\\end\s*\{document\}|$)", re.S)
MARK_DIR = "\\CVFgraphicsdir"   # marks where graphics start resolving against another folder
MARK_FILE = "\\CVFsourcefile"   # marks which file the following text comes from


def normalise(path: str) -> str:
    """A POSIX path without `.`, empty parts and resolvable `..`."""
    parts: list[str] = []
    for part in path.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts:
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def folder_of(path: str) -> str:
    parent = str(PurePosixPath(path).parent)
    return "" if parent == "." else parent


def join_path(folder: str, name: str) -> str:
    return normalise(f"{folder}/{name}" if folder else name)


def _find_tex(name: str, folders: list[str], files: dict[str, str]) -> str | None:
    name = name.strip().strip('"').strip()
    for folder in folders:
        for candidate in (name, name + ".tex"):
            path = join_path(folder, candidate)
            if path in files:
                return path
    return None


@dataclasses.dataclass
class _Flattening:
    files: dict[str, str]          # comment-stripped sources
    problems: list[str]
    size: int = 0


def flatten(root: str, files: dict[str, str], problems: list[str]) -> str:
    """The document `root` with every `\\input`/`\\include`/`\\subfile`/`\\import` replaced by the
    file it names (`files`: comment-stripped sources by archive path). Loops, missing files and
    oversize documents are noted in `problems` and skipped."""
    state = _Flattening(files, problems)
    base = folder_of(root)
    return _flatten(root, base, base, [root], state)


_PLAIN_NAME = re.compile(r"[^\s{}\\%]+")


def _inputs(text: str):
    """(start, end, command, names) of each `\\input`-like command of `text`: one name, or
    (folder, file) for `\\import` and its kin; `\\input file` without braces too."""
    for m in _INPUT.finditer(text):
        command = m.group(1)
        if command == "input" and m.end() < len(text) and text[m.end()] != "{":
            plain = _PLAIN_NAME.match(text, m.end())  # \input file (TeX's own syntax)
            if plain:
                yield m.start(), plain.end(), command, [plain.group(0)]
            continue
        args = Args(text, m.end(), limit=2000)
        names = [args.mandatory()]
        if command not in ("input", "include", "subfile"):
            names.append(args.mandatory())
        if None not in names:
            yield m.start(), args.pos, command, names


def _flatten(path: str, cwd: str, graphics_dir: str, stack: list[str], state: _Flattening) -> str:
    text = state.files[path]
    out = [f"{MARK_FILE}{{{path}}}{MARK_DIR}{{{graphics_dir}}}"]
    pos = 0
    for start, end, command, names in _inputs(text):
        if start < pos:
            continue
        out.append(text[pos:start])
        pos = end
        here = folder_of(path)
        if len(names) == 2:  # \import{dir}{file}: the file and its graphics live in dir
            folder = join_path(here if command.startswith("sub") else cwd, names[0])
            target = _find_tex(names[1], [folder], state.files)
            child_cwd = child_graphics = folder
            shown = f"{names[0]}{names[1]}"
        else:
            target = _find_tex(names[0], [cwd, here], state.files)
            child_cwd, child_graphics, shown = cwd, graphics_dir, names[0]
        if target is None:
            state.problems.append(f"\\{command}{{{shown}}} names a file the archive lacks")
            continue
        if target in stack:
            state.problems.append(f"\\{command} loop: {' -> '.join(stack + [target])}")
            continue
        if len(stack) >= MAX_INPUT_DEPTH:
            state.problems.append(f"\\{command} nested deeper than {MAX_INPUT_DEPTH}")
            continue
        state.size += len(state.files[target])
        if state.size > MAX_DOCUMENT_CHARS:
            state.problems.append(f"document over {MAX_DOCUMENT_CHARS} characters: "
                                  f"{target} and later inputs skipped")
            continue
        child = _flatten(target, child_cwd, child_graphics, stack + [target], state)
        if command == "subfile":  # a standalone document: its body only
            body = _DOCUMENT.search(child)
            child = f"{MARK_FILE}{{{target}}}{MARK_DIR}{{{child_graphics}}}" + (
                body.group(1) if body else child)
        out.append(child)
        out.append(f"{MARK_FILE}{{{path}}}{MARK_DIR}{{{graphics_dir}}}")
    out.append(text[pos:])
    return "".join(out)


def root_documents(files: dict[str, str]) -> list[str]:
    """The tree's documents to read, best first: files no other file includes, those with a
    `\\documentclass` and `\\begin{document}` first, then those with more graphics."""
    included = set()
    for path, text in files.items():
        for _, _, _, names in _inputs(text):
            if len(names) == 2:
                target = _find_tex(names[1], [join_path(folder_of(path), names[0]), names[0]], files)
            else:
                target = _find_tex(names[0], [folder_of(path), ""], files)
            if target and target != path:
                included.add(target)

    def full(path: str) -> bool:
        return is_full_document(files[path])
    # a full document is a root even where a file (in a loop) includes it back
    roots = [p for p in files if p not in included or full(p)]
    return sorted(roots, key=lambda p: (not full(p), -files[p].count("\\includegraphics"), p))


def is_full_document(text: str) -> bool:
    """Whether a LaTeX file is a whole document (`\\documentclass` ... `\\begin{document}`)."""
    return "\\documentclass" in text and "\\begin{document}" in text.replace(" ", "")


# --- macros ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Macro:
    n_args: int
    body: str
    default: str | None = None  # the first argument's default (it is then optional)


_GRAPHIC_IN_BODY = re.compile(r"\\(?:includegraphics|includesvg|epsfig|psfig|epsfbox)(?![A-Za-z@])")
_DEFINITION = re.compile(
    r"\\(newcommand|renewcommand|providecommand|DeclareRobustCommand|def|gdef|edef|xdef)\*?\s*")


def collect_macros(text: str) -> dict[str, Macro]:
    """The simple macros `text` defines: `\\newcommand` & co (with arguments and an optional
    first-argument default) and `\\def\\name#1#2{...}` (undelimited parameters only)."""
    macros: dict[str, Macro] = {}
    for m in _DEFINITION.finditer(text):
        kind, i = m.group(1), m.end()
        braced = i < len(text) and text[i] == "{"
        name_m = re.compile(r"\{?\s*\\([A-Za-z@]+|.)\s*\}?" if braced else r"\\([A-Za-z@]+|.)")\
            .match(text, i)
        if not name_m:
            continue
        name, i = name_m.group(1), name_m.end()
        if kind.endswith("def"):
            params = re.compile(r"((?:#\d)*)\s*").match(text, i)
            if params is None or (i + len(params.group(0)) < len(text)
                                  and text[params.end()] != "{"):
                continue  # delimited parameters: not a simple macro
            args = Args(text, params.end(), limit=MAX_EXPANDED_CHARS)
            body = args.mandatory()
            n_args, default = len(params.group(1)) // 2, None
        else:
            args = Args(text, i, limit=MAX_EXPANDED_CHARS)
            count = args.optional()
            default = args.optional()
            body = args.mandatory()
            try:
                n_args = int(count) if count is not None else 0
            except ValueError:
                continue
        if body is None or name in _STRUCTURE or not 0 <= n_args <= 9:
            continue
        if kind == "providecommand" and name in macros:
            continue
        macros[name] = Macro(n_args, body, default)
    return macros


class ExpansionError(Exception):
    """A macro expands forever (or past the bounds)."""


CONTROL_WORD = re.compile(r"\\([A-Za-z@]+)")


MAX_NESTING = 64  # macros expanding inside macros
_DEFINING = re.compile(r"\\(?:newcommand|renewcommand|providecommand|DeclareRobustCommand|[gex]?def)"
                       r"\*?\s*\{?\s*$")


def expand_macros(latex: str, macros: dict[str, Macro], max_steps: int = MAX_EXPANSIONS,
                  max_chars: int = MAX_EXPANDED_CHARS) -> str:
    """`latex` with the paper's macros expanded, in one pass (an expansion's own macros
    expanded inside it), at most `max_steps` expansions, MAX_NESTING deep and `max_chars`
    characters out (ExpansionError beyond). A macro's name in its own definition stays."""
    if not macros:
        return latex
    budget = [max_steps, max_chars]
    return _expand(latex, macros, budget, 0)


def _expand(text: str, macros: dict[str, Macro], budget: list[int], depth: int) -> str:
    out, pos = [], 0
    while True:
        m = CONTROL_WORD.search(text, pos)
        if m is None:
            break
        macro = macros.get(m.group(1))
        if macro is None or _DEFINING.search(text, max(0, m.start() - 40), m.start()):
            out.append(text[pos:m.end()])
            pos = m.end()
            continue
        budget[0] -= 1
        if budget[0] < 0 or depth >= MAX_NESTING:
            raise ExpansionError(f"macro expansion did not end (\\{m.group(1)} recursive?)")
        args = Args(text, m.end(), limit=MAX_EXPANDED_CHARS)
        values = []
        for k in range(macro.n_args):
            if k == 0 and macro.default is not None:
                value = args.optional()
                value = macro.default if value is None else value
            else:
                value = args.mandatory()
            values.append(value or "")
        body = re.sub(r"#(\d)", lambda a: values[int(a.group(1)) - 1]
                      if 0 < int(a.group(1)) <= len(values) else "", macro.body)
        end = args.pos if macro.n_args else m.end()
        body = _expand(body, macros, budget, depth + 1)
        if not macro.n_args and text[end:end + 1] == " " and body[-1:].isalpha():
            body += " "  # a control word eats the space after it; its expansion must not
        out.append(text[pos:m.start()])
        out.append(body)
        budget[1] -= len(body)
        if budget[1] < 0:
            raise ExpansionError("macro expansion past its size limit")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def expand_graphic_macros(document: str, macros: dict[str, Macro]) -> str:
    """`document` with the uses of macros that draw a graphic (`\\newcommand{\\fig}[1]{...
    \\includegraphics{#1}...}`) expanded, so the graphics they place are seen in their floats."""
    drawing = {name: m for name, m in macros.items() if _GRAPHIC_IN_BODY.search(m.body)}
    for _ in range(MAX_NESTING):  # ... and the macros that call those
        callers = {name: m for name, m in macros.items() if name not in drawing and
                   any(n in drawing for n in CONTROL_WORD.findall(m.body))}
        if not callers:
            break
        drawing.update(callers)
    if not drawing:
        return document
    try:
        return expand_macros(document, drawing, max_steps=50_000, max_chars=MAX_DOCUMENT_CHARS)
    except ExpansionError:
        return document
