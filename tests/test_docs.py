"""The project's docs stay true to the code it ships.

- Every error code a service can answer is in the error-code table of docs/api.md, with its status, and the
  table names no code the source has stopped using. Codes are collected statically (``ast``): the ``code``
  class attributes of common/errors.py, every ``code="..."`` keyword argument, every assignment to a name
  ``code`` (the error middleware's mapping of framework errors) and every ``error_body("...", ...)`` call in
  the service packages.
- Every route the query service and the storage node register is in docs/api.md as `METHOD /path`, and the
  endpoint index lists no route that does not exist. The route tables come from the apps' own
  ``add_routes`` called on bare ``web.Application()`` objects: nothing is started or listened on.
- Every configuration key is in docs/operations.md with its environment variable and its default.
- README.md and docs/*.md name no path outside the repository, and every relative link (and #anchor)
  resolves; the README keeps the exact test command that .ci/run runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from common.config import Secret, iter_keys

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_MD = DOCS / "api.md"
OPERATIONS_MD = DOCS / "operations.md"
ERRORS_PY = ROOT / "common" / "errors.py"
SERVICE_PACKAGES = ("common", "storage_node", "replicator", "query_service")
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"

Codes = dict[str, set[int]]  # error code -> the HTTP statuses the source pins it to (empty: not pinned)


# --- error codes -------------------------------------------------------------------------------------------------
def _str(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _int(node: ast.AST | None) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def error_classes(tree: ast.Module) -> dict[str, tuple[int | None, str | None]]:
    """Class name -> (status, code) of every class in common/errors.py, inheriting what a class does not set."""
    classes: dict[str, tuple[int | None, str | None]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        status: int | None = None
        code: str | None = None
        for base in cls.bases:
            inherited = classes.get(_name(base) or "")
            if inherited is not None:
                status, code = inherited
                break
        for stmt in cls.body:
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
                continue
            target, value = stmt.targets[0], stmt.value
            if isinstance(target, ast.Name) and target.id == "code" and _str(value) is not None:
                code = _str(value)
            elif isinstance(target, ast.Name) and target.id == "status" and _int(value) is not None:
                status = _int(value)
            elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
                for name, item in zip(target.elts, value.elts, strict=True):
                    if _name(name) == "code" and _str(item) is not None:
                        code = _str(item)
                    elif _name(name) == "status" and _int(item) is not None:
                        status = _int(item)
        classes[cls.name] = (status, code)
    return classes


def _codes_in_value(value: ast.AST) -> Iterator[tuple[str, int | None]]:
    """The codes an expression assigned to ``code`` can produce: a dict's int keys give their statuses."""
    paired: set[int] = set()
    for node in ast.walk(value):
        if isinstance(node, ast.Dict):
            for key, item in zip(node.keys, node.values, strict=True):
                if _str(item) is not None and _int(key) is not None:
                    paired.add(id(item))
                    yield _str(item) or "", _int(key)
    for node in ast.walk(value):
        text = _str(node)
        if text and id(node) not in paired:
            yield text, None


def _codes_at(node: ast.AST, classes: dict[str, tuple[int | None, str | None]]) -> Iterator[tuple[str, int | None]]:
    """The codes one syntax node emits: `code="..."` keywords (status from the error class called),
    `error_body("...", ...)`, and assignments to a name `code`."""
    if isinstance(node, ast.Call):
        for kw in node.keywords:
            code = _str(kw.value)
            if kw.arg == "code" and code:
                yield code, classes.get(_name(node.func) or "", (None, None))[0]
        first = _str(node.args[0]) if node.args else None
        if _name(node.func) == "error_body" and first:
            yield first, None
    elif isinstance(node, ast.Assign) and any(_name(t) == "code" for t in node.targets):
        yield from _codes_in_value(node.value)


def codes_in_source(root: Path = ROOT, packages: Iterable[str] = SERVICE_PACKAGES) -> Codes:
    classes = error_classes(ast.parse((root / "common" / "errors.py").read_text(encoding="utf-8")))
    found: Codes = {}
    pairs: list[tuple[str, int | None]] = [(code, status) for status, code in classes.values() if code]
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                pairs.extend(_codes_at(node, classes))
    for code, status in pairs:
        statuses = found.setdefault(code, set())
        if status is not None:
            statuses.add(status)
    return found


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section of a markdown text (up to the next `## `)."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def documented_codes(api_md: str) -> dict[str, str]:
    """Error code -> status cell, from the rows of the `## Error codes` table."""
    rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|\s*([^|]+?)\s*\|", section(api_md, "Error codes"), re.MULTILINE)
    return dict(rows)


def code_mismatches(source: Codes, documented: dict[str, str]) -> list[str]:
    problems = [f"{code}: not in the error-code table of docs/api.md" for code in sorted(source.keys() - documented)]
    problems += [f"{code}: documented, but no service emits it" for code in sorted(documented.keys() - source)]
    for code, statuses in sorted(source.items()):
        cell = documented.get(code)
        if cell is not None and statuses and not (cell.isdigit() and int(cell) in statuses):
            problems.append(f"{code}: documented as {cell}, the source says {sorted(statuses)}")
    return problems


def test_the_collector_finds_the_codes_and_their_statuses() -> None:
    """Guards the check below: a collector that found nothing would pass it."""
    codes = codes_in_source()
    assert len(codes) >= 15, sorted(codes)
    for code, status in (
        ("invalid_request", 400),  # `status, code = ...` in common/errors.py
        ("bad_signature", 403),  # `code = ...`, the status inherited from Forbidden
        ("hotlink_forbidden", 403),  # a `code=` keyword argument on Forbidden(...)
        ("no_replica", 503),
        ("method_not_allowed", 405),  # the error middleware's mapping of framework errors
        ("internal_error", 500),
    ):
        assert status in codes.get(code, set()), (code, codes.get(code))
    assert "http_error" in codes


def test_every_error_code_is_documented_with_its_status() -> None:
    problems = code_mismatches(codes_in_source(), documented_codes(API_MD.read_text(encoding="utf-8")))
    assert not problems, "docs/api.md and the source disagree:\n" + "\n".join(problems)


def test_the_code_check_reports_a_missing_or_wrong_row() -> None:
    source: Codes = {"a_code": {409}, "b_code": set(), "c_code": {400}}
    documented = {"a_code": "409", "b_code": "4xx", "c_code": "404", "d_code": "500"}
    assert code_mismatches(source, documented) == [
        "d_code: documented, but no service emits it",
        "c_code: documented as 404, the source says [400]",
    ]
    assert code_mismatches(source, {"a_code": "409", "c_code": "400"}) == [
        "b_code: not in the error-code table of docs/api.md"
    ]


# --- routes ------------------------------------------------------------------------------------------------------
def registered_routes() -> set[str]:
    """`METHOD /path` of every route both apps register (the implicit HEAD of each GET left out)."""
    from aiohttp import web

    from common.metrics import HttpMetrics
    from query_service.routes import add_routes as add_query_routes
    from storage_node.routes import add_routes as add_node_routes

    found: set[str] = set()
    for add_routes in (add_query_routes, add_node_routes):
        app = web.Application()
        add_routes(app)
        HttpMetrics("docs-check").install(app)  # /metrics, as create_app adds it
        for route in app.router.routes():
            assert route.resource is not None
            if route.method != "HEAD":
                found.add(f"{route.method} {route.resource.canonical}")
    return found


def test_every_route_is_documented() -> None:
    routes = registered_routes()
    assert len(routes) >= 25 and "PUT /upload/{image_id}" in routes and "GET /metrics" in routes, sorted(routes)
    text = API_MD.read_text(encoding="utf-8")
    missing = sorted(r for r in routes if f"`{r}`" not in text)
    assert not missing, "routes missing from docs/api.md:\n" + "\n".join(missing)
    indexed = set(re.findall(r"^\|\s*`([A-Z]+ /[^`]*)`", section(text, "Endpoint index"), re.MULTILINE))
    assert len(indexed) >= 25, sorted(indexed)
    stale = sorted(indexed - routes)
    assert not stale, "docs/api.md indexes routes that no app registers:\n" + "\n".join(stale)
    unindexed = sorted(routes - indexed)
    assert not unindexed, "routes missing from the endpoint index of docs/api.md:\n" + "\n".join(unindexed)


# --- configuration -----------------------------------------------------------------------------------------------
def default_cell(value: object) -> str:
    """How docs/operations.md writes a default."""
    if isinstance(value, Secret):
        return "(none)" if not value.reveal() else "(secret)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, dict):
        return "(none)" if not value else "(table)"
    if isinstance(value, tuple):
        return "`" + ",".join(map(str, value)) + "`" if value else "(empty)"
    if isinstance(value, str):
        return f"`{value}`" if value else "(empty)"
    return f"`{value}`"


def test_every_setting_is_documented_with_its_variable_and_default() -> None:
    text = OPERATIONS_MD.read_text(encoding="utf-8")
    keys = iter_keys()
    assert len(keys) >= 90, len(keys)
    missing = []
    for section_name, key, _help, default in keys:
        row = f"| `{section_name}.{key}` | `MINICDN_{section_name.upper()}_{key.upper()}` | {default_cell(default)} |"
        if row not in text:
            missing.append(row)
    assert not missing, "rows missing from (or different in) docs/operations.md:\n" + "\n".join(missing)


# --- links -------------------------------------------------------------------------------------------------------
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file (code blocks left out)."""
    prose = FENCE.sub("", path.read_text(encoding="utf-8"))
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", prose, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_relative_to(root) or not dest.exists():
            broken.append(f"{path.name}: {target} (no such file in the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{path.name}: {target} (no such heading)")
    return broken


def test_docs_exist_and_name_no_path_outside_the_repository() -> None:
    files = markdown_files()
    assert {p.name for p in files} >= {"README.md", "architecture.md", "api.md", "operations.md"}
    outside = [p.name for p in files if "../" in p.read_text(encoding="utf-8")]
    assert not outside, f"`../` in {outside}"


def test_every_relative_link_resolves() -> None:
    files = markdown_files()
    links = sum(len(LINK.findall(FENCE.sub("", p.read_text(encoding="utf-8")))) for p in files)
    assert links >= 20, links
    broken = [b for p in files for b in broken_links(p)]
    assert not broken, "\n".join(broken)


def test_the_link_check_reports_broken_files_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## `GET /openapi.json`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Two words\n\n"
        "[ok](other.md) [ok](other.md#get-openapijson) [ok](#two-words) [ok](https://example.com/x.md)\n"
        "[bad](missing.md) [bad](other.md#nope) [bad](#three-words) [bad](../outside.md)\n"
        "```\n[not a link](inside-a-code-block.md)\n```\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "page.md: missing.md (no such file in the repository)",
        "page.md: other.md#nope (no such heading)",
        "page.md: #three-words (no such heading)",
        "page.md: ../outside.md (no such file in the repository)",
    ]


def test_the_readme_keeps_the_ci_test_command() -> None:
    """.ci/run runs this exact line; the README shows it as the way to run the tests."""
    assert TEST_COMMAND in (ROOT / "README.md").read_text(encoding="utf-8")
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
