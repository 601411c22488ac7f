"""App-side commands of the `minicdn` CLI, on the SDK: `upload FILE…`, `delete ID…`, `images ls`.

Results go to stdout (one line per file or image, or JSON with `--json`); progress bars and errors go to
stderr, and the result lines are printed only after the bars are done, so the two never interleave.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TransferSpeedColumn

from minicdn.cli import render
from minicdn.cli.render import Column, human
from minicdn.client import find_cluster
from minicdn.sdk.aio import AsyncClient
from minicdn.sdk.errors import MinicdnError
from minicdn.sdk.models import Image

LS_DEFAULT_LIMIT = 50
Formatter = render.HelpFormatter


def add_parsers(sub: Any, add_client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    up = sub.add_parser(
        "upload", help="upload files (progress bars), then print `file → id` per file", formatter_class=Formatter
    )
    up.add_argument("files", nargs="+", type=Path, help="image files")
    up.add_argument("--private", action="store_true", help="private: served through signed URLs only")
    up.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    up.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata (repeatable)")
    up.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for each to be ready")
    render.add_json_flag(up, "a list of {file, image_id, status, format, width, height, bytes}")
    add_client_flags(up)

    delete = sub.add_parser("delete", help="delete images from every node", formatter_class=Formatter)
    delete.add_argument("image_ids", nargs="+", metavar="ID", help="image ids")
    add_client_flags(delete)

    images = sub.add_parser("images", help="your images")
    actions = images.add_subparsers(dest="images_command", required=True)
    ls = actions.add_parser(
        "ls", help="list your images, newest first, with the filters of GET /v1/images", formatter_class=Formatter
    )
    ls.add_argument("--tag", action="append", default=[], help="has this tag (repeatable: all of them)")
    ls.add_argument("--any-tag", action="append", default=[], help="has any of these tags (repeatable)")
    ls.add_argument(
        "--format", help="jpeg, png, gif, webp, avif, heic, tiff, bmp or ico (comma-separated: any of them)"
    )
    for side in ("width", "height"):
        ls.add_argument(f"--min-{side}", type=int, help=f"at least this {side} in pixels")
        ls.add_argument(f"--max-{side}", type=int, help=f"at most this {side} in pixels")
    for when in ("created", "ready"):
        ls.add_argument(f"--{when}-after", metavar="ISO8601", help=f"{when} at or after this time")
        ls.add_argument(f"--{when}-before", metavar="ISO8601", help=f"{when} before this time")
    ls.add_argument("--status", help="e.g. ready, rejected (comma-separated: any of them; default: all but deleted)")
    ls.add_argument("--visibility", choices=("public", "private"), help="only public or only private images")
    ls.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata (repeatable)")
    ls.add_argument("--order", choices=("newest", "oldest"), default="newest", help="by creation time")
    ls.add_argument("--limit", type=int, default=LS_DEFAULT_LIMIT, help="at most this many")
    render.add_json_flag(ls, "a list of image objects (as GET /v1/images/{id})")
    add_client_flags(ls)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MinicdnError(f"{flag} {item!r}: expected KEY=VALUE", code="invalid_request")
        out[key] = value
    return out


def _client(args: argparse.Namespace) -> AsyncClient:
    cluster = find_cluster(args.query_url, args.api_key, args.state_dir)
    return AsyncClient(cluster.query_url, cluster.api_key)


async def cmd_upload(args: argparse.Namespace) -> int:
    err_console = render.err()
    metadata = _pairs(args.meta, "--meta")
    results: list[dict[str, Any]] = []
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    async with _client(args) as cdn:
        with Progress(*columns, console=err_console) as progress:
            for path in args.files:
                row: dict[str, Any] = {"file": str(path), "image_id": None}
                results.append(row)
                if not path.is_file():
                    row.update(status="error", error="not_found", message="no such file")
                    continue
                task = progress.add_task(escape(path.name), total=path.stat().st_size)
                try:
                    image = await cdn.upload(
                        path,
                        visibility="private" if args.private else "public",
                        tags=args.tag,
                        metadata=metadata,
                        wait=args.wait > 0,
                        timeout=args.wait,
                        on_progress=_follow(progress, task),
                    )
                except MinicdnError as exc:
                    row.update(image_id=exc.image_id, status="error", error=exc.code, message=str(exc.args[0]))
                    continue
                row.update(_summary(image))
    if args.json:
        render.emit_json(results)
    else:
        console = render.out()
        for row in results:
            if row["status"] == "error":
                err_console.print(
                    f"{row['file']}: {row['error']}: {row['message']}",
                    style="red",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            else:
                console.print(f"{row['file']} → {row['image_id']}", markup=False, highlight=False, soft_wrap=True)
    return 1 if any(row["status"] == "error" for row in results) else 0


def _follow(progress: Progress, task: TaskID) -> Callable[[int, int | None], None]:
    def on_progress(sent: int, _total: int | None) -> None:
        progress.update(task, completed=sent)  # cumulative, so a retried PUT starts its bar again

    return on_progress


def _summary(image: Image) -> dict[str, Any]:
    return {
        "image_id": image.id,
        "status": image.status,
        "format": image.format,
        "width": image.width,
        "height": image.height,
        "bytes": image.bytes,
    }


async def cmd_delete(args: argparse.Namespace) -> int:
    console, err_console = render.out(), render.err()
    failures = 0
    async with _client(args) as cdn:
        for image_id in args.image_ids:
            try:
                await cdn.delete(image_id)
            except MinicdnError as exc:
                err_console.print(f"{image_id}: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
                failures += 1
                continue
            console.print(f"{image_id} deleted", markup=False, highlight=False, soft_wrap=True)
    return 1 if failures else 0


IMAGE_COLUMNS = [
    Column("id", keep=True),
    Column("status", keep=True),
    Column("size"),
    Column("bytes", justify="right"),
    Column("created"),
]


async def cmd_images(args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {
        "tags": args.tag,
        "any_tags": args.any_tag,
        "format": args.format,
        "min_width": args.min_width,
        "max_width": args.max_width,
        "min_height": args.min_height,
        "max_height": args.max_height,
        "created_after": args.created_after,
        "created_before": args.created_before,
        "ready_after": args.ready_after,
        "ready_before": args.ready_before,
        "status": args.status,
        "visibility": args.visibility,
        "metadata": _pairs(args.meta, "--meta"),
        "order": args.order,
    }
    async with _client(args) as cdn:
        found = [i async for i in cdn.search(page_size=min(args.limit, 1000), max_results=args.limit, **filters)]
    if args.json:
        render.emit_json([image.raw for image in found])
        return 0
    # At 80 columns all fit: id 22, status ≤ 11, size and format ~14, bytes 8, created 16, two spaces between.
    rows = []
    for image in found:
        size = f"{image.width}x{image.height}" if image.width and image.height else "-"
        rows.append(
            [
                image.id,
                image.status,
                f"{size} {image.format or ''}".strip(),
                human(image.bytes),
                image.created_at.strftime("%Y-%m-%d %H:%M") if image.created_at else "-",
            ]
        )
    render.print_records(render.out(), IMAGE_COLUMNS, rows)
    render.err().print(f"{len(found)} image(s)" + (f" (--limit {args.limit})" if len(found) == args.limit else ""))
    return 0
