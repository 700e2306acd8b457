"""Write ``vendor/vega/offline.html``: DVC's plots page with Vega, Vega-Lite and vega-embed
inside it, so that `dvc plots show` / `dvc plots diff` draw with no network.

    python vendor/vega/update.py            # the versions pinned below, from the npm registry

DVC's own page loads the three libraries from a CDN (``<script src="https://cdn...">``); on a
machine without internet its Vega plots stay empty.  `.dvc/config` points ``plots.html_template``
at the page written here, which carries each package's ``build/*.min.js`` inline, with its
LICENSE (BSD-3-Clause) above it, and no ``{scripts}`` placeholder, so DVC adds no CDN tags.
Each tarball is checked against the registry's sha512 ``integrity`` before it is used.

To update: change VERSIONS (Vega-Lite and vega-embed must accept Vega's major version: see the
``peerDependencies`` of each on npm), run this script, open a `dvc plots show` page with the
network off, and run ``python -m pytest tests/test_plots_template.py``.  docs/plots.md has the
details.  Only the Python standard library is used.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
# package -> (version, file in its tarball); loaded in this order (vega-embed needs the others)
VERSIONS = {
    "vega": ("6.4.0", "package/build/vega.min.js"),
    "vega-lite": ("6.5.0", "package/build/vega-lite.min.js"),
    "vega-embed": ("7.3.0", "package/build/vega-embed.min.js"),
}
# what each build bundles besides the package itself (from its package.json dependencies);
# the upstream builds ship no notices of their own for these
BUNDLED = {
    "vega": "the vega-* modules (BSD-3-Clause) and the d3 modules they use (ISC)",
    "vega-lite": "json-stringify-pretty-compact (MIT), tslib (0BSD), vega-util, "
                 "vega-expression, vega-event-selector (BSD-3-Clause)",
    "vega-embed": "fast-json-patch (MIT), json-stringify-pretty-compact (MIT), semver (ISC), "
                  "tslib (0BSD), vega-themes, vega-tooltip, vega-interpreter, "
                  "vega-schema-url-parser (BSD-3-Clause)",
}
OUT = Path(__file__).with_name("offline.html")
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")  # what DVC replaces in the page

PAGE = """<!DOCTYPE html>
<!-- DVC's plots page, drawn offline: Vega {vega}, Vega-Lite {vega_lite} and vega-embed
{vega_embed} are inline below (no network).  Written by vendor/vega/update.py; do not edit by
hand: docs/plots.md says how to update it.  `.dvc/config` plots.html_template points here. -->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{libraries}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def package_files(name: str, version: str, build: str) -> tuple[str, str]:
    """(the build file's text, the LICENSE text) of ``name@version``, integrity-checked."""
    meta = json.loads(fetch(f"{REGISTRY}/{name}/{version}"))
    tarball = fetch(meta["dist"]["tarball"])
    algorithm, _, digest = meta["dist"]["integrity"].partition("-")
    if algorithm != "sha512" or hashlib.sha512(tarball).digest() != base64.b64decode(digest):
        raise SystemExit(f"{name}@{version}: the tarball does not match the registry's integrity")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        def text(member: str) -> str:
            return archive.extractfile(member).read().decode("utf-8")
        return text(build), text("package/LICENSE")


def script_block(name: str, version: str, code: str, licence: str) -> str:
    """One library as an inline ``<script>``, its licence in a comment above it."""
    if "</script" in code.lower() or any(p in code for p in PLACEHOLDERS):
        raise SystemExit(f"{name}: its build contains '</script' or a DVC placeholder; "
                         "it cannot be inlined as is")
    notice = licence.strip().replace("--", "- -")  # '--' may not appear in an HTML comment
    return (f"    <!-- {name} {version} (npm: {name}, {VERSIONS[name][1].removeprefix('package/')}"
            f"), BSD-3-Clause.\n    Its build also bundles {BUNDLED[name]}.\n\n{notice}\n    -->\n"
            f"    <script type=\"text/javascript\">\n{code.strip()}\n    </script>")


def main() -> None:
    blocks = []
    for name, (version, build) in VERSIONS.items():
        code, licence = package_files(name, version, build)
        blocks.append(script_block(name, version, code, licence))
        print(f"{name}@{version}: {len(code) / 1e3:.0f} kB")
    page = PAGE.format(vega=VERSIONS["vega"][0], vega_lite=VERSIONS["vega-lite"][0],
                       vega_embed=VERSIONS["vega-embed"][0], libraries="\n".join(blocks))
    tmp = OUT.with_name(f".{OUT.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
