"""`make site`: the executed notebooks as HTML pages and an index, opened in headless Chromium (Debian's
`chromium`; `make setup` installs it where apt can), which must find every image loaded."""
import html
import re
import shutil
import subprocess

import pytest

from kdlib import _site as site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
         "document.body.setAttribute('data-images', imgs.length);"
         "document.body.setAttribute('data-broken', imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length);"
         "});</script>")


def loaded_images(page, screenshot=None):
    """(images on the page, images that did not load), as Chromium counts them after the load event."""
    probe = page.with_name("probe-" + page.name)
    probe.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    if screenshot:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
                        f"--screenshot={screenshot}", probe.as_uri()], capture_output=True, timeout=180)
    found = re.search(r'data-images="(\d+)" data-broken="(\d+)"', dom)
    assert found, f"the checker did not run on {page.name}: {dom[:300]!r}"
    return int(found.group(1)), int(found.group(2))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make setup installs Debian's package where apt can)")
def test_the_site_index_and_a_notebook_page_show_every_figure(tmp_path):
    index = site.build(tmp_path / "site")
    text = index.read_text()
    for _, result, nb, _ in site.RESULTS:  # every paper result is mapped to its executed page
        assert html.escape(result.split(":")[0]) in text and f'href="{nb}.html"' in text
    assert "→ reproduced" in text and 'class="reproduced"' in text  # the claims with their verdicts
    images, broken = loaded_images(index, screenshot=tmp_path / "index.png")
    assert images >= 10 and broken == 0
    images, broken = loaded_images(tmp_path / "site" / "01_gkd.html")
    assert images >= 4 and broken == 0


def test_the_site_needs_executed_notebooks(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `make reproduce` first"):
        site.build(tmp_path / "site", executed=tmp_path / "nothing")
