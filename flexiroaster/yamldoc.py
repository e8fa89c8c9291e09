"""YAML text to plain data plus the line of every key; every YAML problem becomes a SpecError."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import SpecError

MAX_DEPTH = 64  # a pipeline nests about 8 deep; more is a mistake or a recursive alias
MAX_REPEATS = 100_000  # values reached again through aliases: a small file can expand
# exponentially ("billion laughs"); a big file without aliases is fine
MAX_LINES = 22  # of problems in one error, so that it fits on one screen

_MERGE = "tag:yaml.org,2002:merge"
_UNSUPPORTED = {
    "tag:yaml.org,2002:binary": "binary data (!!binary)",
    "tag:yaml.org,2002:omap": "an ordered map (!!omap)",
    "tag:yaml.org,2002:pairs": "a list of pairs (!!pairs)",
    "tag:yaml.org,2002:set": "a set (!!set)",
}
_HINTS = {
    "found character '\\t' that cannot start any token": "tabs cannot indent YAML; use spaces",
    "expected <block end>": "check the indentation: keys of one mapping must line up",
    "did not find expected key": "check the indentation: keys of one mapping must line up",
    "mapping values are not allowed here": "check the indentation, or quote a value containing ': '",
    "could not find expected ':'": "a key without `: value`, or an unclosed quote?",
    "found unhashable key": "a key must be plain text, not a list or mapping",
    "but got '<stream end>'": "an unclosed [ or {?",
}


def loc_text(loc: tuple) -> str:
    """A location as people write it: `stages[2].config.query`."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def short(value: Any, limit: int = 60) -> str:
    """A repr short enough for an error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def capped(problems: list[str]) -> list[str]:
    """The problems that fit in MAX_LINES lines, then a count of the rest."""
    out: list[str] = []
    used = 0
    for i, problem in enumerate(problems):
        lines = problem.splitlines()[:4] or [""]
        lines = [line if len(line) <= 300 else line[:297] + "..." for line in lines]
        if used + len(lines) > MAX_LINES:
            out.append(f"... and {len(problems) - i} more problem(s)")
            break
        out.append("\n".join(lines))
        used += len(lines)
    return out


class Marks:
    """Line numbers of every mapping key and sequence item in a YAML document.

    Paths use the constructed keys (what pydantic reports), so `1:` is the int 1, not "1".
    """

    def __init__(self, source: str = "<pipeline>", loader: yaml.SafeLoader | None = None):
        self.source = source
        self.lines: dict[tuple, int] = {}
        self.problems: list[str] = []
        self._loader = loader
        self._visited: set[int] = set()
        self._repeats = 0
        self._open: set[int] = set()  # nodes on the current path, to spot recursive aliases

    def line_of(self, loc: tuple) -> int | None:
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None

    def walk(self, node: yaml.Node, path: tuple = (), depth: int = 0) -> None:
        line = node.start_mark.line + 1
        if id(node) in self._visited:
            self._repeats += 1
            if self._repeats > MAX_REPEATS:
                raise SpecError(
                    f"{self.source}: aliases repeat more than {MAX_REPEATS} values"
                    f" (aliases of aliases?) ({self._at(line)})"
                )
        else:
            self._visited.add(id(node))
        if id(node) in self._open:
            raise SpecError(
                f"{loc_text(path) or '(document)'}: a recursive alias ({self._at(line)})"
            )
        if depth > MAX_DEPTH:
            where = loc_text(path[:8]) + ("..." if len(path) > 8 else "")
            raise SpecError(f"{where}: nested more than {MAX_DEPTH} levels deep ({self._at(line)})")
        self.lines.setdefault(path, line)
        if node.tag in _UNSUPPORTED:
            self._problem(path, f"{_UNSUPPORTED[node.tag]} is not supported in a pipeline", line)
            return
        if isinstance(node, yaml.ScalarNode):
            self._scalar(node, path)
            return
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                self._mapping(node, path, depth)
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    self.walk(item, path + (i,), depth + 1)
        finally:
            self._open.discard(id(node))

    def _mapping(
        self, node: yaml.MappingNode, path: tuple, depth: int, merged: bool = False
    ) -> None:
        seen: set = set()
        merges = []
        for key_node, value in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:
                merges.append(value)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(path, "a key must be plain text, not a list or mapping", line)
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, str):
                self._problem(path + (key_node.value,), _key_problem(key_node.value, key), line)
                continue
            if key in seen:
                self._problem(path + (key,), "duplicate key", line)
            seen.add(key)
            if merged:
                self.lines.setdefault(path + (key,), line)
            else:
                self.lines[path + (key,)] = line
            self.walk(value, path + (key,), depth + 1)
        # `<<: *base` copies keys the mapping does not set itself; they count as written at the anchor.
        for value in merges:
            for target in value.value if isinstance(value, yaml.SequenceNode) else [value]:
                if isinstance(target, yaml.MappingNode) and id(target) not in self._open:
                    self._open.add(id(target))
                    try:
                        self._mapping(target, path, depth, merged=True)
                    finally:
                        self._open.discard(id(target))

    def _scalar(self, node: yaml.ScalarNode, path: tuple) -> Any:
        if self._loader is None:
            return node.value
        line = node.start_mark.line + 1
        try:
            value = self._loader.construct_object(node)
        except yaml.YAMLError:
            raise
        except ValueError as exc:  # e.g. `2024-13-01` (no such date), an int of 5000 digits
            self._problem(path, f"cannot read {short(node.value)}: {exc}", line)
            return node.value
        except Exception:  # PyYAML's constructors trip over explicit tags: `!!bool x`, `!!int ""`
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self._problem(path, f"cannot read {short(node.value)} as {tag}", line)
            return node.value
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                self._problem(
                    path, "text with an invalid character (a lone \\uD800-style escape)", line
                )
        return value

    def _problem(self, path: tuple, message: str, line: int) -> None:
        text = f"{loc_text(path) or '(document)'}: {message} ({self._at(line)})"
        if text not in self.problems:
            self.problems.append(text)

    def _at(self, line: int) -> str:
        return f"{self.source} line {line}"


def _key_problem(text: str, key: Any) -> str:
    if isinstance(key, bool) or key is None:
        reads = "true" if key is True else "false" if key is False else "null"
        what = f"YAML reads `{text}` as {reads}" if text else "the key is empty"
    else:
        what = f"YAML reads `{text}` as a {'number' if isinstance(key, (int, float)) else 'date'}"
    return f"a key must be text, but {what}; quote it: '{text}'"


def _yaml_error(exc: yaml.YAMLError, source: str, text: str) -> SpecError:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1 if isinstance(text, str) else None
        where = f"{source} line {line}" if line else source
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return SpecError(
            f"invalid YAML in {where}: character {char!r} is not allowed ({exc.reason})"
        )
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    extra = ""
    if context_mark is not None and "quoted scalar" in str(context) and "end of stream" in problem:
        # The fix belongs where the quote opens, not where the file ends.
        end = f" (the file ends at line {mark.line + 1})" if mark is not None else ""
        problem, mark = f"a quote opened here is never closed{end}", context_mark
    elif context and context_mark is not None and (mark is None or context_mark.line != mark.line):
        extra = f" ({context} at line {context_mark.line + 1})"
    mark = mark or context_mark
    if mark is None:
        return SpecError(f"invalid YAML in {source}: {problem}")
    hint = next((h for k, h in _HINTS.items() if k in problem), None)
    message = (
        f"invalid YAML in {source} line {mark.line + 1}, column {mark.column + 1}: {problem}{extra}"
    )
    if hint:
        message += f" ({hint})"
    # The snippet is part of the message, so callers that show only `message` (the API) keep it.
    return SpecError("\n".join([message, *_snippet(text, mark.line, mark.column)]))


def _snippet(text: str, line: int, column: int) -> list[str]:
    lines = text.splitlines() if isinstance(text, str) else []
    if not 0 <= line < len(lines):
        return []
    shown = lines[line].replace("\t", "→")[:100]  # a visible tab, one column wide like the caret
    gutter = f"  {line + 1} | "
    caret = " " * len(gutter) + " " * min(column, len(shown)) + "^"
    return [gutter + shown, caret]


def parse_document(text: str, source: str = "<pipeline>") -> tuple[Any, Marks]:
    """Parse YAML (or JSON) text into plain data plus the line of every key."""
    marks = Marks(source)
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters up front
        raise _yaml_error(exc, source, text) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, marks
        marks = Marks(source, loader)
        marks.walk(node)
        if marks.problems:
            n = len(marks.problems)
            raise SpecError(f"{source}: {n} problem(s) in the YAML", details=capped(marks.problems))
        return loader.construct_document(node), marks
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, text) from None
    except RecursionError:
        raise SpecError(f"invalid YAML in {source}: nested too deeply") from None
    except ValueError as exc:
        raise SpecError(f"invalid YAML in {source}: {exc}") from None
    finally:
        loader.dispose()
