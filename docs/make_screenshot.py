"""Make the README's screenshot from the real app: replay a run file headless and save the screen as SVG and PNG.

    python docs/make_screenshot.py RUN_FILE [--size 100x30] [--out docs/screenshot.png] [--keys j s]

The PNG needs ``rsvg-convert`` (Debian: librsvg2-bin). Textual's SVG puts a run of characters in one ``<text>`` with a
``textLength``; rsvg squeezes runs of braille that way, so each character gets its own cell first.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import re
import subprocess
import tempfile
from pathlib import Path

from tuimon.app import make_app
from tuimon.source import FileSource

_TEXT = re.compile(r'<text([^>]*?) x="([0-9.]+)"([^>]*?) textLength="([0-9.]+)"([^>]*)>([^<]*)</text>')


def one_cell_per_character(svg: str) -> str:
    """Split every multi-character ``<text>`` of a Textual screenshot into one element per character."""

    def split(m: re.Match[str]) -> str:
        pre, x, mid, length, post, body = m.groups()
        chars = html.unescape(body)
        if len(chars) <= 1:
            return m.group(0)
        w = float(length) / len(chars)
        return "".join(
            f'<text{pre} x="{float(x) + i * w:.1f}"{mid} textLength="{w:.1f}"{post}>{html.escape(ch)}</text>'
            for i, ch in enumerate(chars)
            if ch not in (" ", "\xa0")
        )

    return _TEXT.sub(split, svg)


async def screenshot(run_file: Path, size: tuple[int, int], out: Path, keys: list[str]) -> None:
    """Replay ``run_file`` at ``size``, press ``keys``, write ``out`` (.png) and its .svg beside it."""
    app = make_app(FileSource(run_file))
    async with app.run_test(size=size) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            if app.status in ("replay", "ended"):
                break
        await pilot.pause(0.5)
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.3)
        svg_path = out.with_suffix(".svg")
        app.save_screenshot(svg_path.name, path=str(svg_path.parent))
    with tempfile.NamedTemporaryFile("w", suffix=".svg", encoding="utf-8") as tmp:
        tmp.write(one_cell_per_character(svg_path.read_text(encoding="utf-8")))
        tmp.flush()
        subprocess.run(["rsvg-convert", tmp.name, "-o", str(out)], check=True)


def main() -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_file", type=Path)
    p.add_argument("--size", default="100x30")
    p.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    p.add_argument("--keys", nargs="*", default=[])
    a = p.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    asyncio.run(screenshot(a.run_file, (w, h), a.out, a.keys))


if __name__ == "__main__":
    main()
