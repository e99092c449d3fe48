"""Renders per second of personal content (issue 12): one notification, many users.

    python bench/render.py                # 100,000 users, title + body + one data field
    python bench/render.py --users 20000 --title-only
    python bench/render.py --jinja        # the same through Jinja's runtime

Compiles one notification's templates once (``tidings.content.Content``), then
renders it for each user from that user's attributes, half of them in ``zh-CN``
(a locale override) and half in ``en`` (the top-level text): the per-user work a
send to a large audience does. Prints renders/s and us per render.
``--jinja`` renders with ``Content.render_jinja`` (a Jinja template context per
user: what every render did before the ``str.format`` fast path), for the
comparison. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

from tidings.content import Content


def main() -> None:
    p = argparse.ArgumentParser(description="renders/s of personal content")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--title-only", action="store_true")
    p.add_argument("--jinja", action="store_true",
                   help="render through Jinja's runtime (the reference path)")
    a = p.parse_args()
    if a.title_only:
        c = Content.compile(title="Hi {{first_name|there}}!")
    else:
        c = Content.compile(title="Hi {{first_name|there}}!",
                            body="Your {{plan}} plan renews on {{renew_date}}.",
                            data={"url": "https://x.example/{{uid}}", "k": "plain"},
                            locales={"zh-CN": {"title": "你好 {{first_name|朋友}}"}})
    users = [{"first_name": f"U{i}", "plan": "pro", "renew_date": "2026-12-24",
              "uid": str(i)} for i in range(a.users)]
    render = c.render_jinja if a.jinja else c.render
    start = time.perf_counter()
    for i, u in enumerate(users):
        render(u, "zh-CN" if i % 2 else "en")
    elapsed = time.perf_counter() - start
    print(f"{len(users)} users in {elapsed:.2f} s: {len(users) / elapsed:,.0f} renders/s, "
          f"{elapsed / len(users) * 1e6:.2f} us per render"
          f"{' (Jinja runtime)' if a.jinja else ''}")


if __name__ == "__main__":
    main()
