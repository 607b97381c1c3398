"""Render cost per message on the hot path: CompiledCampaign.render, best of 7 x 50,000.

    .venv-bench/bin/python bench/render.py [--package dispatch_engine]

`--package` imports another copy of the package (e.g. an older tree copied as
`dispatch_engine_old` into a folder on PYTHONPATH) to compare before and after.
"""

from __future__ import annotations

import argparse
import importlib
import timeit

CASES = {
    "text + {{ name }} (fast path)": ("Hello {{ name }}", "Dear {{ name }},\n" + "text " * 100),
    "Jinja: if, filter, loop of 5": (
        "Hi {{ name|title }}",
        "{% if name %}Dear {{ name }}{% endif %}\n{% for i in range(5) %}{{ i }} {% endfor %}"
        + "text " * 100,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", default="dispatch_engine")
    parser.add_argument("--number", type=int, default=50_000)
    args = parser.parse_args()
    render = importlib.import_module(f"{args.package}.render")
    models = importlib.import_module(f"{args.package}.models")
    sender = models.Sender(1, 1, "news@example.com", "News", None, "capture", {}, 50, 0)
    for label, (subject, body) in CASES.items():
        content = models.CampaignContent(7, 1, 1, subject, body, None, 0, None)
        compiled = render.CompiledCampaign(content, sender)

        def once(compiled: object = compiled) -> None:
            compiled.render("ada@example.com", {"name": "ada"}, "<x@example.com>")  # type: ignore[attr-defined]

        best = min(timeit.repeat(once, number=args.number, repeat=7)) / args.number
        print(f"{args.package:22} {label:32} {best * 1e6:6.2f} µs/message")


if __name__ == "__main__":
    main()
