"""The words a paper's LaTeX gives each of its figure files: caption, sub-caption, label, panels.

For every figure file a `\\includegraphics` (or `\\epsfig`, `overpic`, ...) of the paper names,
`figure_texts` finds the enclosing float (`figure`, `figure*`, `wrapfigure`, a `table` holding a
graphic, or any environment with a `\\captionof`), its long `\\caption` (the optional short one
is skipped; before or after the graphics and the label alike), the float's `\\label`, the
graphic's sub-caption (`subfigure`/`subtable` environments, `\\subfloat`, `\\subfigure[...]{...}`,
`\\subcaptionbox`, `\\subcaption`), how many graphics the float holds (`n_panels`) and this
one's place among them (`panel_index`, from 0).

The source tree is read as TeX would: from each root document, `\\input`, `\\include`,
`\\subfile` and `\\import`/`\\subimport` are followed (with or without `.tex`), comments,
`verbatim`-like environments, `\\verb` and `\\iffalse` blocks are dropped, `\\graphicspath` and
references without an extension are resolved against the archive's files, and the paper's
simple `\\newcommand`/`\\def` macros are expanded in captions and graphic paths. Captions become
text through pylatexenc, inline math kept as `$...$`; the raw LaTeX is kept too.

Reading the source tree (flattening, comments, macros) is `pipeline.latex_source`; this module
reads the floats and captions of what it gives. Everything is bounded, since the sources are a
stranger's (the reader's caps there; a float's body within `MAX_BODY_CHARS`, a paper within
`TIME_BUDGET_S`). What cannot be read leaves the caption empty with the reason in
`caption_error`; nothing raises.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import time
from pathlib import PurePosixPath

from pipeline.latex_source import (CONTROL_WORD, GRAPHIC_COMMANDS, SUB_COMMANDS, Args,
                                   ExpansionError, Macro, collect_macros, expand_graphic_macros,
                                   expand_macros, flatten, folder_of, join_path, match_brace,
                                   is_full_document, normalise, root_documents, skip_space,
                                   strip_comments)

MAX_BODY_CHARS = 200_000  # the body of a \subfloat / \subcaptionbox
TIME_BUDGET_S = 20.0  # per paper: past it, the graphics read so far are kept and the rest noted

# Floats whose caption is a figure's (a table holding a graphic included).
FLOAT_ENVS = {"figure", "figure*", "wrapfigure", "wrapfigure*", "table", "table*", "wraptable",
              "SCfigure", "SCfigure*", "sidewaysfigure", "sidewaysfigure*", "sidewaystable",
              "floatingfigure", "teaserfigure", "marginfigure", "figwindow"}
SUB_ENVS = {"subfigure", "subfigure*", "subtable", "subtable*"}
# The extensions pdfLaTeX tries for a graphic named without one, in its order.
EXTENSION_ORDER = (".pdf", ".png", ".jpg", ".jpeg", ".eps", ".ps", ".gif", ".bmp", ".tif", ".tiff")
# Macros most papers get from their conference's style file rather than define themselves.
STYLE_MACROS = {"eg": "e.g.", "ie": "i.e.", "etal": "et al.", "etc": "etc.", "wrt": "w.r.t.",
                "vs": "vs.", "cf": "cf.", "Eg": "E.g.", "Ie": "I.e.", "Cf": "Cf.", "dof": "d.o.f.",
                "aka": "a.k.a.", "iid": "i.i.d.", "xspace": ""}


@dataclasses.dataclass
class FigureText:
    """What the LaTeX says about one figure file."""
    caption: str = ""          # the long caption as text, inline math as $...$
    caption_latex: str = ""    # the same as written in the source (comments dropped)
    subcaption: str = ""       # the graphic's sub-caption as text
    figure_label: str = ""     # the float's \label
    n_panels: int | None = None     # graphics in the float (or in the caption's minipage)
    panel_index: int | None = None  # this graphic's place among them, from 0
    float_env: str = ""        # figure, figure*, table, wrapfigure, center (\captionof), ...
    caption_error: str = ""    # why the caption is empty; '' when there is one
    included: bool = False     # whether a graphic of the LaTeX resolves to this file

    def columns(self) -> dict:
        """The figure-record columns (`pipeline.extract.FIGURE_SCHEMA`)."""
        return {k: getattr(self, k) for k in CAPTION_COLUMNS}


CAPTION_COLUMNS = ("caption", "caption_latex", "subcaption", "figure_label", "n_panels",
                   "panel_index", "caption_error")
# What the selection and every manifest carry of them (the reason stays in the figure records).
TEXT_COLUMNS = ["caption", "caption_latex", "subcaption", "figure_label"]
PANEL_COLUMNS = ["n_panels", "panel_index"]



# --- caption LaTeX to text ------------------------------------------------------------------------

_LABEL = re.compile(r"\\label\s*\{[^{}]*\}")
_INLINE_MATH = re.compile(r"\\\((.*?)\\\)", re.S)
_DROP = re.compile(r"\\(?:vspace|hspace|vskip|hskip)\*?\s*\{[^{}]*\}|\\(?:centering|small|footnotesize|"
                   r"scriptsize|tiny|normalsize|large|Large|noindent|par|protect|bfseries|itshape)"
                   r"(?![A-Za-z@])")
_converter = None


@functools.lru_cache(maxsize=4096)  # a float's caption serves each of its graphics
def latex_to_text(latex: str) -> str:
    """Readable text of a caption's LaTeX (pylatexenc), inline math kept as `$...$`."""
    global _converter
    from pylatexenc.latex2text import LatexNodes2Text

    if _converter is None:
        _converter = LatexNodes2Text(math_mode="verbatim", strict_latex_spaces=True)
    latex = _LABEL.sub("", latex)
    latex = _INLINE_MATH.sub(lambda m: f"${m.group(1)}$", latex)
    latex = _DROP.sub(" ", latex)
    latex = CONTROL_WORD.sub(lambda m: STYLE_MACROS.get(m.group(1), m.group(0)), latex)
    try:
        text = _converter.latex_to_text(latex)
    except Exception:  # pylatexenc fails on some malformed input: a plain fallback
        text = re.sub(r"\\[A-Za-z@]+\*?|[{}]", " ", latex).replace("~", " ")
    return " ".join(text.replace("\xa0", " ").split())


# --- floats and their graphics --------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class _Frame:
    name: str                     # environment or command name
    is_float: bool = False
    is_sub: bool = False
    end: int = -1                 # for command frames (\subfloat{...}): where the body ends
    captions: list = dataclasses.field(default_factory=list)   # (latex or None, error)
    subcaptions: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    graphics: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Graphic:
    """One graphics command of a document, with where its path resolves from."""
    ref: str
    folders: list[str]
    source: str
    text: FigureText


_EVENT = re.compile(
    r"\\(begin|end)\s*\{([^{}]*)\}|\\(includegraphics|includesvg|epsfbox|epsffile|epsfig|psfig|"
    r"adjincludegraphics|caption|captionof|figcaption|subcaption|subcaptionbox|subfloat|subfigure|"
    r"sidesubfloat|subtable|label|graphicspath|CVFgraphicsdir|CVFsourcefile)(?![A-Za-z@])(\*?)")
_EPSFIG_FILE = re.compile(r"(?:file|figure)\s*=\s*([^,}]+)")


_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _paragraph(document: str, start: int, end: int) -> tuple[int, int]:
    """Where the paragraph around document[start:end] begins and ends (blank lines)."""
    before = document.rfind("\n\n", max(0, start - MAX_BODY_CHARS), start)
    after = _BLANK_LINE.search(document, end, end + MAX_BODY_CHARS)
    return before, after.start() if after else len(document)


class OutOfTime(Exception):
    """Reading a paper's LaTeX ran past its time budget."""


def document_graphics(document: str, macros: dict[str, Macro],
                      deadline: float = float("inf")) -> tuple[list[Graphic], list[str]]:
    """Every graphic of a flattened document with the words of its float; and the
    `\\graphicspath` folders it sets. OutOfTime past `deadline` (time.monotonic())."""
    stack: list[_Frame] = []
    raw: list[tuple] = []  # (ref, graphics folder, source file, frames around it, position)
    graphicspath: list[str] = []
    graphics_dir, source = "", ""
    for m in _EVENT.finditer(document):
        if time.monotonic() > deadline:
            raise OutOfTime
        while stack and stack[-1].end >= 0 and stack[-1].end <= m.start():
            stack.pop()
        begin_end, env, command = m.group(1), (m.group(2) or "").strip(), m.group(3)
        args = Args(document, m.end())
        if begin_end == "begin":
            frame = _Frame(env, is_float=env in FLOAT_ENVS, is_sub=env in SUB_ENVS)
            stack.append(frame)
            if env == "overpic":
                args.optional()
                ref = args.mandatory()
                if ref is not None:
                    _add(raw, ref, graphics_dir, source, stack, m.start())
            continue
        if begin_end == "end":
            for k in range(len(stack) - 1, -1, -1):
                if stack[k].name == env and stack[k].end < 0:
                    del stack[k:]
                    break
            continue
        if command == "CVFgraphicsdir":
            graphics_dir = args.mandatory() or ""
        elif command == "CVFsourcefile":
            source = args.mandatory() or ""
        elif command == "graphicspath":
            inner = args.mandatory() or ""
            graphicspath += re.findall(r"\{([^{}]*)\}", inner) or [inner]
        elif command in GRAPHIC_COMMANDS:
            while args.optional() is not None:
                pass
            ref = args.mandatory()
            if ref is not None:
                _add(raw, ref, graphics_dir, source, stack, m.start())
        elif command in ("epsfig", "psfig"):
            found = _EPSFIG_FILE.search(args.mandatory() or "")
            if found:
                _add(raw, found.group(1), graphics_dir, source, stack, m.start())
        elif command == "label":
            label = args.mandatory()
            if label is not None and stack:
                stack[-1].labels.append((label.strip(), m.start()))
        elif command in ("caption", "figcaption", "captionof", "subcaption"):
            kind = args.mandatory() if command == "captionof" else None
            args.optional()
            caption = args.mandatory()
            error = ""
            if caption is None or re.search(r"\\(?:begin|end)\s*\{(?:figure|table|document)", caption):
                caption, error = None, f"unbalanced braces in \\{command}"
            if not stack:
                continue
            if command == "subcaption" or (kind or "").strip().startswith("sub"):
                stack[-1].subcaptions.append((caption, error, m.start()))
            else:  # with its paragraph, for a \captionof outside any environment
                stack[-1].captions.append((caption, error, m.start()) + _paragraph(document, m.start(), args.pos))
        elif command in SUB_COMMANDS or command == "subcaptionbox":
            if command == "subcaptionbox":
                args.optional()
                caption = args.mandatory()
                args.optional(), args.optional()
            else:
                first, second = args.optional(), args.optional()
                caption = second if second is not None else first
            body_start = skip_space(document, args.pos)
            if body_start >= len(document) or document[body_start] != "{":
                continue
            body_end = match_brace(document, body_start, MAX_BODY_CHARS)
            if body_end < 0:
                continue
            frame = _Frame(command, is_sub=True, end=body_end)
            if caption is not None:
                frame.subcaptions.append((caption, "", m.start()))
            stack.append(frame)
    refs = [_expand_path(r[0], macros) for r in raw]
    positions = [r[4] for r in raw]
    graphics = [Graphic(refs[k], [folder], src, _words(frames, k, refs, positions, macros))
                for k, (_, folder, src, frames, _) in enumerate(raw)]
    return graphics, graphicspath


def _add(raw: list, ref: str, graphics_dir: str, source: str, stack: list[_Frame], pos: int) -> None:
    """Note a graphic: every frame around it counts it (its panels)."""
    for frame in stack:
        frame.graphics.append(len(raw))
    raw.append((ref, graphics_dir, source, list(stack), pos))


def _expand_path(ref: str, macros: dict[str, Macro]) -> str:
    """A graphic's path with the paper's macros expanded (`\\figdir/a`); as written if that fails."""
    if "\\" not in ref:
        return ref
    try:
        return expand_macros(ref, macros)
    except ExpansionError:
        return ref


def _panel_key(ref: str) -> str:
    return normalise(ref.replace("{", "").replace("}", "").strip().strip('"'))


def _caption_of(frame: _Frame, pos: int) -> int | None:
    """Which of a frame's captions is a graphic's at `pos`. In a float: the first after it, else
    the last (a float with several \\caption holds several figures, each caption below its
    graphics). In the document itself (a `\\captionof` in a brace group): only one after it in
    the same paragraph."""
    if frame.name == "document":
        return next((i for i, c in enumerate(frame.captions) if c[3] < pos < c[2]), None)
    return next((i for i, c in enumerate(frame.captions) if c[2] > pos), len(frame.captions) - 1)


def _words(frames: list[_Frame], k: int, all_refs: list[str], positions: list[int],
           macros: dict[str, Macro]) -> FigureText:
    """The FigureText of graphic number `k`, inside `frames` (outermost first)."""
    words = FigureText()
    float_i = next((k for k in range(len(frames) - 1, -1, -1) if frames[k].is_float), None)
    inner = frames[float_i:] if float_i is not None else frames
    sub = next((f for f in reversed(inner) if f.is_sub), None)
    if sub is not None:
        cap = next((c for c in sub.subcaptions + sub.captions if c[0] is not None), None)
        if cap is not None:
            words.subcaption = _text_or_empty(cap[0], macros)
    # the caption scope: the innermost frame with a (non-sub) caption, within the float
    scope = None
    for frame in reversed(inner):
        if frame.is_sub:
            continue
        if frame.name == "document":
            scope = frame if _caption_of(frame, positions[k]) is not None else None
            break
        if frame.captions:
            scope = frame
            break
    if scope is not None and not scope.is_float and float_i is not None and \
            frames[float_i].captions:
        # a minipage's \caption inside a float with a caption of its own is a sub-caption
        if not words.subcaption and scope.captions[0][0] is not None:
            words.subcaption = _text_or_empty(scope.captions[0][0], macros)
        scope = frames[float_i]
    if scope is None:
        scope = frames[float_i] if float_i is not None else None
    if scope is None:
        words.caption_error = "the graphic is not in a figure float or a captioned environment"
        return words
    words.float_env = scope.name
    mine = _caption_of(scope, positions[k]) if scope.captions else 0
    group = [j for j in scope.graphics if not scope.captions or _caption_of(scope, positions[j]) == mine]
    if k in group:  # panels are files: a multi-page graphic included thrice is one
        panels = list(dict.fromkeys(_panel_key(all_refs[j]) for j in group))
        words.n_panels, words.panel_index = len(panels), panels.index(_panel_key(all_refs[k]))
    labels = scope.labels or (frames[float_i].labels if float_i is not None else [])
    if scope.name == "document":  # the document's labels: only one in the caption's paragraph
        labels = [lb for lb in labels if scope.captions[mine][3] < lb[1] < scope.captions[mine][4]]
    elif len(scope.captions) > 1:  # the label written with this caption: after it, else before it
        here = scope.captions[mine][2]
        low = scope.captions[mine - 1][2] if mine else -1
        high = scope.captions[mine + 1][2] if mine + 1 < len(scope.captions) else 1 << 62
        labels = ([lb for lb in labels if here <= lb[1] < high]
                  or [lb for lb in labels if low < lb[1] < here] or labels)
    words.figure_label = labels[0][0] if labels else ""
    if not scope.captions:
        words.caption_error = f"the {scope.name} has no \\caption"
        return words
    latex, error = scope.captions[mine][:2]
    if latex is None:
        words.caption_error = error
        return words
    words.caption_latex = latex.strip()
    try:
        words.caption = latex_to_text(expand_macros(latex, macros))
    except ExpansionError as e:
        words.caption_error = str(e)
    if not words.caption and not words.caption_error:
        words.caption_error = "the \\caption is empty"
    return words


def _text_or_empty(latex: str, macros: dict[str, Macro]) -> str:
    try:
        return latex_to_text(expand_macros(latex, macros))
    except ExpansionError:
        return ""


# --- matching graphics to the archive's files -----------------------------------------------------

def _stem(path: str) -> str:
    path = re.sub(r"-(?i:eps|ps)-converted-to\.pdf$", "", path)
    suffix = PurePosixPath(path).suffix
    return path[: -len(suffix)] if suffix.lower() in EXTENSION_ORDER else path


def resolve_graphic(ref: str, folders: list[str], figure_paths: list[str],
                    _index: dict | None = None) -> list[str]:
    """The archive's figure files a graphics reference names: as written, or without its
    extension (every file with that stem: `x.pdf` and `x.eps` alike), tried in each folder;
    failing that, with leading folders dropped (a tree compiled from its parent)."""
    index = _index if _index is not None else _figure_index(figure_paths)
    ref = ref.replace("{", "").replace("}", "").strip().strip('"').strip()
    if not ref or "#" in ref or "\\" in ref:
        return []
    parts = normalise(ref).split("/")
    for drop in range(0, min(len(parts), 4)):
        tail = "/".join(parts[drop:])
        for folder in folders:
            path = join_path(folder, tail)
            if path in index["exact"]:
                return [path]
            found = index["stem"].get(path) or index["stem"].get(_stem(path))
            if found:
                return sorted(found, key=_extension_rank)
    return []


def _extension_rank(path: str):
    suffix = PurePosixPath(path).suffix.lower()
    return (EXTENSION_ORDER.index(suffix) if suffix in EXTENSION_ORDER else len(EXTENSION_ORDER),
            path)


def _figure_index(figure_paths: list[str]) -> dict:
    stems: dict[str, list[str]] = {}
    for path in figure_paths:
        stems.setdefault(_stem(path), []).append(path)
    return {"exact": set(figure_paths), "stem": stems}


# --- the whole paper ------------------------------------------------------------------------------

# The caption_error of a file no graphic of the LaTeX names (an unused copy, a leftover), and
# of one only a stray .tex names that no whole document of the tree reads (an appendix whose
# \\input is commented out): neither is in the paper.
NOT_NAMED = "no \\includegraphics of the LaTeX names this file"
NOT_IN_DOCUMENT = "named only by a .tex file that no whole document reads"
NO_LATEX = "no LaTeX source in the e-print"


_INPUT_LIKE = r"\\(?:input|include|subfile|subimport|import|inputfrom|includefrom)(?![A-Za-z@])[^\n]*"


def _mentioned(path: str, texts: list[str]) -> bool:
    """Whether one of `texts` (comments stripped) names the file `path` in an \\input-like command."""
    pattern = re.compile(_INPUT_LIKE + re.escape(PurePosixPath(path).stem))
    return any(pattern.search(t) for t in texts)


def figure_texts(tex_files: dict[str, str], figure_paths: list[str],
                 time_budget_s: float = TIME_BUDGET_S) -> dict[str, FigureText]:
    """What the LaTeX says about each of `figure_paths` (archive paths). `tex_files`: the
    e-print's LaTeX sources by archive path. Every path gets an entry; one no graphic names
    (or the LaTeX cannot be read) has an empty caption and the reason in `caption_error`."""
    if not tex_files:
        return {p: FigureText(caption_error=NO_LATEX) for p in figure_paths}
    files = {path: strip_comments(text) for path, text in tex_files.items()}
    index = _figure_index(figure_paths)
    found: dict[str, FigureText] = {}
    problems: list[str] = []
    deadline = time.monotonic() + time_budget_s
    roots = root_documents(files)
    whole = {r for r in roots if is_full_document(files[r])}
    # a stray root a whole document still mentions in an \input-like command the reader could
    # not follow (a macro in the path, say) is likely in the paper after all: read as before
    stray = {r for r in roots if whole and r not in whole and not _mentioned(r, [files[w] for w in whole])}
    for root in roots:
        if time.monotonic() > deadline:
            problems.append(f"reading the LaTeX stopped after {time_budget_s:g} s (time budget)")
            break
        document = flatten(root, files, problems)
        macros = collect_macros(document)
        document = expand_graphic_macros(document, macros)
        try:
            graphics, graphicspath = document_graphics(document, macros, deadline)
        except OutOfTime:
            problems.append(f"reading {root} stopped after {time_budget_s:g} s (time budget)")
            break
        for graphic in graphics:
            folders = []
            for base in graphic.folders + [folder_of(root)]:
                folders += [base] + [join_path(base, g) for g in graphicspath]
            folders.append(folder_of(graphic.source))
            for path in resolve_graphic(graphic.ref, list(dict.fromkeys(folders)), figure_paths,
                                        index):
                known = found.get(path)
                if root in stray:  # roots read after every whole document
                    if known is None:
                        found[path] = FigureText(caption_error=f"{NOT_IN_DOCUMENT} ({root})")
                elif known is None or (not known.caption and graphic.text.caption):
                    found[path] = graphic.text
    problems = list(dict.fromkeys(problems))
    out = {}
    for path in figure_paths:
        text = found.get(path)
        if text is None:
            why = NOT_NAMED
            if problems:
                why += "; LaTeX problems: " + "; ".join(problems[:3])
            text = FigureText(caption_error=why)
        elif not text.caption_error.startswith(NOT_IN_DOCUMENT):  # a graphic of the paper names it
            text = dataclasses.replace(text, included=True)
        out[path] = text
    return out
