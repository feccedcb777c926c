"""Headless Chromium for the report (Debian's ``chromium`` package; ``MEDCL_CHROMIUM`` names
another binary): the PDF of the HTML report, a screenshot, and a rendering check (every image
decoded, no section empty) that the tests and CI run on real reports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["find_browser", "run_browser", "html_to_pdf", "screenshot", "browser_check", "BrowserMissing"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class BrowserMissing(RuntimeError):
    """No headless Chromium on this machine."""


def find_browser() -> str | None:
    """Path of a Chromium binary: ``$MEDCL_CHROMIUM``, else the first of ``CANDIDATES`` on PATH."""
    env = os.environ.get("MEDCL_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def run_browser(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium with ``args`` in a throw-away profile (so that runs never share
    state or lock each other out); ``--no-sandbox`` because CI runs as root."""
    browser = find_browser()
    if browser is None:
        raise BrowserMissing("no Chromium found (install Debian's 'chromium' package or set MEDCL_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="medcl-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions",
               f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})


def html_to_pdf(html: Path, pdf: Path, timeout: float = 120) -> Path:
    """Print ``html`` to ``pdf`` (A4, backgrounds, no header or footer); returns ``pdf``."""
    html, pdf = Path(html).resolve(), Path(pdf).resolve()
    if pdf.exists():
        pdf.unlink()
    proc = run_browser(["--no-pdf-header-footer", "--run-all-compositor-stages-before-draw",
                        "--virtual-time-budget=10000", f"--print-to-pdf={pdf}", html.as_uri()], timeout)
    if not pdf.exists() or pdf.stat().st_size == 0 or pdf.read_bytes()[:5] != b"%PDF-":
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{pdf}: Chromium did not print a PDF (exit {proc.returncode}: {tail[0][:200]})")
    return pdf


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 2400, timeout: float = 120) -> Path:
    """A PNG screenshot of the top ``width x height`` pixels of ``html``."""
    html, png = Path(html).resolve(), Path(png).resolve()
    if png.exists():
        png.unlink()
    proc = run_browser([f"--window-size={width},{height}", "--hide-scrollbars", "--virtual-time-budget=10000",
                        f"--screenshot={png}", html.as_uri()], timeout)
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"{png}: Chromium took no screenshot (exit {proc.returncode})")
    return png


_HARNESS = """<!doctype html><html><head><meta charset='utf-8'></head><body>
<iframe id='r' src='REPORT' style='width:1200px;height:2000px'></iframe><pre id='result'>pending</pre>
<script>
window.addEventListener('load', () => { try {   // fires after the iframe and all its images loaded
  const doc = document.getElementById('r').contentDocument;
  const imgs = Array.from(doc.images);
  const sections = Array.from(doc.querySelectorAll('section')).map(s => {
    const body = Array.from(s.children).filter(c => c.tagName !== 'H2');
    const text = body.map(c => c.innerText || '').join('').trim();
    const shown = s.querySelectorAll('img, table, pre, ul, p').length;
    return {id: s.id, text: text.length, items: shown, height: s.getBoundingClientRect().height};
  });
  document.getElementById('result').textContent = JSON.stringify({
    title: doc.title,
    images: imgs.map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight})),
    sections: sections,
    external: Array.from(doc.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || e.getAttribute('href'))
      .filter(u => !u.startsWith('data:') && !u.startsWith('#'))});
  } catch (e) { document.getElementById('result').textContent = JSON.stringify({error: String(e)}); }
});
</script></body></html>"""


def browser_check(html: Path, timeout: float = 120) -> dict:
    """Render ``html`` in headless Chromium and report what a reader would see: ``images``
    (alt text, decoded or not, natural size), ``sections`` (id, characters of text, number of
    images/tables/paragraphs, rendered height), ``external`` (URLs that are not embedded),
    ``broken`` (alt texts of images that did not load) and ``empty_sections`` (ids of sections
    with nothing but a heading)."""
    html = Path(html).resolve()
    with tempfile.TemporaryDirectory(prefix="medcl-check-") as tmp:
        harness = Path(tmp) / "harness.html"
        harness.write_text(_HARNESS.replace("REPORT", html.as_uri()))
        # file:// pages are opaque origins: the harness may read the report's DOM only with these
        proc = run_browser(["--allow-file-access-from-files", "--disable-web-security", "--virtual-time-budget=20000",
                            "--dump-dom",
                            harness.as_uri()], timeout)
    m = re.search(r"<pre id=\"result\">(.*?)</pre>", proc.stdout, re.S)
    if not m or m.group(1) == "pending":
        raise RuntimeError(f"{html}: Chromium did not finish rendering (exit {proc.returncode})")
    import html as _html

    res = json.loads(_html.unescape(m.group(1)))
    if "error" in res:
        raise RuntimeError(f"{html}: the rendering check failed in Chromium ({res['error']})")
    res["broken"] = [i["alt"] for i in res["images"] if not i["ok"]]
    res["empty_sections"] = [s["id"] for s in res["sections"] if s["text"] == 0 and s["items"] == 0]
    return res
