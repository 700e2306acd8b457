"""The offline plots page (vendor/vega/offline.html, .dvc/config's plots.html_template): DVC's
renderer fills it with Vega plots that need no network.  The same check runs on a real
`dvc plots show` page in tests/test_e2e.py."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

from conftest import PLOTS_TEMPLATE, ROOT, offline_plots_page

VENDORED = {"vega": "6.4.0", "vega-lite": "6.5.0", "vega-embed": "7.3.0"}


def test_dvc_config_points_plots_at_the_offline_template():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    # DVC reads a relative html_template from the .dvc folder
    path = (ROOT / ".dvc" / config.get("plots", "html_template")).resolve()
    assert path == PLOTS_TEMPLATE.resolve() and path.is_file()


def test_the_template_has_the_libraries_their_licences_and_no_cdn():
    html = PLOTS_TEMPLATE.read_text(encoding="utf-8")
    assert "{plot_divs}" in html and "{refresh_tag}" in html
    assert "{scripts}" not in html  # where DVC would put its CDN <script src=...> tags
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", html, re.I)
    assert len(html.encode()) < 3e6
    for name, version in VENDORED.items():
        notice = html.index(f"<!-- {name} {version} (npm: {name}")
        assert "Redistribution and use in source and binary forms" in html[notice:notice + 2500]
    assert html.count('<script type="text/javascript">') == 3
    assert html.index("<!-- vega-embed") > html.index("<!-- vega-lite") > html.index("<!-- vega ")


def test_dvcs_renderer_fills_it_with_plots_that_draw_offline(tmp_path):
    """The page `dvc plots show` writes, from DVC's own renderer and linear template."""
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer
    points = [{"step": str(s), "loss": str(1 / (s + 1)), "rev": "workspace",
               "filename": "train/loss.tsv"} for s in range(3)]
    renderer = VegaRenderer(points, "loss", template="linear", x="step", y="loss")
    out = Path(render_html([renderer], tmp_path / "index.html", html_template=PLOTS_TEMPLATE))
    specs = offline_plots_page(out.read_text(encoding="utf-8"))
    assert specs["loss"]["data"]["values"] == points


def test_the_check_catches_dvcs_default_page(tmp_path):
    import pytest
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer
    points = [{"step": "0", "loss": "1.0", "rev": "workspace", "filename": "loss.tsv"}]
    renderer = VegaRenderer(points, "loss", template="linear", x="step", y="loss")
    out = Path(render_html([renderer], tmp_path / "index.html"))  # DVC's own page: CDN scripts
    with pytest.raises(AssertionError, match="cdn.jsdelivr"):
        offline_plots_page(out.read_text(encoding="utf-8"))
