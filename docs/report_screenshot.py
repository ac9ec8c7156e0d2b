"""A picture of an HTML report (`redline report --format html`) for the README, without a browser:
Qt's rich-text engine lays the page out (offscreen) and the top of it is saved as a PNG. It reads
the same HTML and embedded figures a browser would; its table layout is simpler.

    .venv/bin/python docs/report_screenshot.py REPORT.html docs/screenshots/report.png [--height 2600]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6.QtGui import QImage, QPainter, QTextDocument  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("report")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=2600, help="pixels from the top of the page")
    args = parser.parse_args()
    app = QApplication(sys.argv[:1])
    document = QTextDocument()
    with open(args.report, encoding="utf-8") as page:
        document.setHtml(page.read())
    document.setTextWidth(args.width)
    height = min(args.height, int(document.size().height()))
    image = QImage(args.width, height, QImage.Format.Format_RGB32)
    image.fill(0xFFFFFF)
    painter = QPainter(image)
    document.drawContents(painter)
    painter.end()
    saved = image.save(args.png)
    del app
    return 0 if saved else 1


if __name__ == "__main__":
    raise SystemExit(main())
