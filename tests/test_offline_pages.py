"""A gateway alone (no orchestrator) on a real port. Everything its pages load comes from it:
/docs, /redoc, the page and the trace view, each asset they reference fetched, and no served
HTML, JS or CSS that would load anything from another machine (the docs are blank offline
otherwise). And its 413 says the upload limit in the setting's own unit."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from gateway_stack import start_gateway
from helpers import free_port

TOKEN = "offline-pages-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_MB = 25

# What makes a browser load something from a URL in HTML attributes, CSS and JavaScript (a JS
# bundle's other strings, such as licence links, `new URL("https://"+host)` or an <a> link's
# href, are not loads).
ELSEWHERE = r"""["'`]?\s*((?:https?:)?//[^"'`)\s]+)"""
ATTRIBUTE_LOADS = re.compile(r"\b(?:src|srcset|poster|data)\s*[=:]\s*" + ELSEWHERE, re.IGNORECASE)
CSS_LOADS = re.compile(r"(?:\burl\(\s*|@import\s+(?:url\(\s*)?)" + ELSEWHERE, re.IGNORECASE)
JS_LOADS = re.compile(r"""(?:\bimport\s*\(\s*|\bfrom\s*(?=["'`])|\bfetch\(\s*|\bimportScripts\(\s*"""
                      r"""|\burl\(\s*)""" + ELSEWHERE)  # url( in CSS-in-JS: lower case, unlike new URL(
NOT_LOADED = {"a", "area", "form", "base"}  # navigation; <base> would be caught by its href below


class References(HTMLParser):
    """Every src/href of the page, and those that a browser loads on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.loaded: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("src", "href") and value:
                self.urls.append(value)
                if tag not in NOT_LOADED or tag == "base":
                    self.loaded.append(value)


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.urls


def external_loads(text: str, content_type: str) -> list[str]:
    """URLs on another host that the text would make a browser load."""
    found = [m.group(1) for m in ATTRIBUTE_LOADS.finditer(text)] + [m.group(1) for m in CSS_LOADS.finditer(text)]
    if "html" in content_type:
        parser = References()
        parser.feed(text)
        found += [u for u in parser.loaded if re.match(r"(?:https?:)?//", u.strip(), re.IGNORECASE)]
    if "javascript" in content_type or "html" in content_type:
        found += [m.group(1) for m in JS_LOADS.finditer(text)]
    return found


@pytest.fixture(scope="module")
def gateway(nats_server, tmp_path_factory):
    env = {"VOICEBUS_AUTH_TOKEN": TOKEN, "VOICEBUS_TRACE_VIEW": "true", "VOICEBUS_NATS_URL": nats_server.url,
           "VOICEBUS_DATA_DIR": str(tmp_path_factory.mktemp("offline")),
           "VOICEBUS_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}", "VOICEBUS_MAX_UPLOAD_MB": str(UPLOAD_MB)}
    proc, base = start_gateway(env, name="gateway-offline-pages")
    yield base
    proc.stop()


def a_trace_id(client: httpx.Client) -> str | None:
    """A request the gateway traces (a 503: no orchestrator here), once its spans have arrived."""
    trace_id = client.get("/api/conversations", headers=AUTH).headers["x-trace-id"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if client.get(f"/debug/traces/{trace_id}", headers=AUTH).status_code == 200:
            return trace_id
        time.sleep(0.3)
    return None


def test_pages_and_every_asset_they_load_are_served_here(gateway):
    with httpx.Client(base_url=gateway, timeout=30) as client:
        trace_id = a_trace_id(client)
        assert trace_id, "the gateway's own request span never reached the trace view"
        # /docs, /redoc and the page open without a token, as before; the trace view needs it.
        pages = {"/": {}, "/docs": {}, "/redoc": {}, "/debug/traces?format=html": AUTH,
                 f"/debug/traces/{trace_id}?format=html": AUTH}
        seen: dict[str, httpx.Response] = {}
        for page, headers in pages.items():
            reply = client.get(page, headers=headers)
            assert reply.status_code == 200, (page, reply.text[:300])
            assert "text/html" in reply.headers["content-type"], page
            seen[page] = reply
            for ref in references(reply.text):
                url = urljoin(gateway + page, ref)
                if url.startswith("data:"):
                    continue
                assert urlsplit(url).netloc == urlsplit(gateway).netloc, f"{page} loads {ref} from elsewhere"
                path = url[len(gateway):]
                asset = client.get(path, headers=headers)
                assert asset.status_code == 200, (page, ref, asset.status_code)
                seen[path] = asset
        # The docs' JavaScript, CSS and favicon, and the page's own files, were among them.
        for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css",
                      "/docs-assets/redoc.standalone.js", "/docs-assets/favicon.png", "/static/app.js",
                      "/static/style.css"):
            assert asset in seen, sorted(seen)
        # The specification the docs render.
        assert client.get("/openapi.json").status_code == 200
        for path, reply in seen.items():
            content_type = reply.headers.get("content-type", "")
            if not any(kind in content_type for kind in ("html", "javascript", "css")):
                continue
            assert not external_loads(reply.text, content_type), (path, external_loads(reply.text, content_type))
        # Swagger UI does not ask an online validator about the spec.
        assert '"validatorUrl": null' in seen["/docs"].text


def test_the_external_load_check_can_fail():
    assert external_loads('<script src="https://cdn.example/x.js"></script>', "text/html")
    assert external_loads('<link rel="icon" href="//cdn.example/f.png">', "text/html")
    assert external_loads("body{background:url(https://x.example/a.png)}", "text/css")
    assert external_loads('@import "https://fonts.example/css";', "text/css")
    assert external_loads('import("https://esm.example/m.js")', "application/javascript")
    assert external_loads('createElement("img",{src:"https://cdn.example/logo.svg"})', "text/javascript")
    assert external_loads('s.innerHTML=\'<img src="https://x.example/p.gif">\'', "text/javascript")
    assert not external_loads('// idea from https://stackoverflow.com/a/1\nnew URL("https://"+h)', "text/javascript")
    assert not external_loads('createElement("a",{href:"https://redocly.com/"})', "text/javascript")
    assert not external_loads('<a href="https://example.org/licence">licence</a>', "text/html")
    assert not external_loads('<link href="data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27">',
                              "text/html")


def test_the_413_says_the_limit_in_the_unit_of_its_setting(gateway):
    """VOICEBUS_MAX_UPLOAD_MB=25 is 25.0 MB in the message (not 26.2: MB there are 1024 × 1024 bytes)."""
    with httpx.Client(base_url=gateway, timeout=60, headers=AUTH) as client:
        upload = b"RIFF" + b"\0" * (UPLOAD_MB * 1024 * 1024 + 200_000)
        reply = client.post("/api/process_audio", content=upload, headers={"Content-Type": "audio/wav"})
        assert reply.status_code == 413, reply.text
        message = reply.json()["error"]["message"]
        assert "the limit is 25.0 MB (VOICEBUS_MAX_UPLOAD_MB)" in message and "the audio is 25.2 MB" in message, message
        body = b"RIFF" + b"\0" * (UPLOAD_MB * 1024 * 1024 * 4 // 3 + 100_000)
        reply = client.post("/api/process_audio", content=body, headers={"Content-Type": "audio/wav"})
        assert reply.status_code == 413, reply.text
        assert "33.4 MB" in reply.json()["error"]["message"] and "VOICEBUS_MAX_UPLOAD_MB" in reply.text, reply.text
