"""Security headers (``serve/headers.py``): a Content-Security-Policy, ``nosniff``, no framing, no referrer on
every response; ``Cache-Control: no-store`` on every ``/api/v1`` one (patient data). ``/docs`` carries its own
policy, with its inline script's hash. (The page and ``/docs`` working under these policies in Chromium, with no
violation: ``test_serve_e2e_csp.py``.)"""

from __future__ import annotations

import base64
import hashlib
import re
import warnings

import pytest
from imagefactory import xray_jpeg

from pneumoscan.serve import ServeSettings, create_app
from pneumoscan.serve.headers import PAGE_CSP, content_security_policy, inline_hashes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "headers-token-0123456789abcdef"

#: Where the page and the documentation live (no patient data) and the API's answers (patient data).
OPEN = ["/", "/docs", "/redoc", "/openapi.json", "/healthz", "/static/main.js", "/static/style.css",
        "/static/docs/swagger-ui-bundle.js", "/static/docs/redoc.standalone.js", "/no-such-page"]
API = ["/api/v1/model", "/api/v1/drift", "/api/v1/worklist", "/api/v1/worklist.csv", "/api/v1/worklist/1",
       "/api/v1/worklist/999", "/api/v1/worklist/-1", "/api/v1/audit", "/api/v1/outbox", "/api/v1/no-such-route",
       "/api/v1/worklist?since=9999-12-31T23:59:59-14:00"]


@pytest.fixture(scope="module")
def client(predictor):
    client = TestClient(create_app(predictor))
    r = client.post("/api/v1/predict", files=[("files", ("a.jpeg", xray_jpeg(), "image/jpeg"))])
    assert r.status_code == 200 and r.json()["results"][0]["worklist_id"] == 1
    return client


def _policy(header: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in header.split(";") if d.strip()}


def _common(r) -> dict[str, list[str]]:
    h = r.headers
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    policy = _policy(h["content-security-policy"])
    assert policy["frame-ancestors"] == ["'none'"] and policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert "'unsafe-eval'" not in h["content-security-policy"]
    assert "'unsafe-inline'" not in policy["script-src"]
    return policy


@pytest.mark.parametrize("path", OPEN)
def test_the_page_and_docs_carry_the_headers(client, path):
    r = client.get(path)
    _common(r)
    assert r.headers.get("cache-control") != "no-store" or path.startswith("/api/")


@pytest.mark.parametrize("path", API)
def test_every_api_response_is_no_store(client, path):
    r = client.get(path)
    _common(r)
    assert r.headers["cache-control"] == "no-store", (path, r.status_code)


def test_the_posts_are_no_store_too(client):
    r = client.post("/api/v1/predict?preview=true", files=[("files", ("b.jpeg", xray_jpeg(), "image/jpeg"))])
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    _common(r)
    r = client.post("/api/v1/worklist/1/review", json={"verdict": "agree"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    r = client.post("/api/v1/explain", files=[("files", ("b.jpeg", xray_jpeg(), "image/jpeg"))])
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"


def test_a_401_is_no_store_with_the_headers(predictor):
    client = TestClient(create_app(predictor, ServeSettings(token=TOKEN)))
    r = client.get("/api/v1/worklist")
    assert r.status_code == 401 and r.headers["cache-control"] == "no-store"
    _common(r)
    assert client.get("/").status_code == 200


def test_the_page_allows_nothing_inline(client):
    policy = _common(client.get("/"))
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "data:", "blob:"]  # films and heatmaps are data: URIs; local files blob:
    assert policy["connect-src"] == ["'self'"]
    assert client.get("/").headers["content-security-policy"] == PAGE_CSP
    html = client.get("/").text
    assert not inline_hashes(html, "script") and not inline_hashes(html, "style") and " style=" not in html


def test_docs_allows_exactly_its_own_inline_script(client):
    r = client.get("/docs")
    scripts = re.findall(r"<script>(.*?)</script>", r.text, re.DOTALL)
    assert len(scripts) == 1 and "SwaggerUIBundle(" in scripts[0]
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    policy = _common(r)
    assert policy["script-src"] == ["'self'", f"'sha256-{digest}'"]
    # Behind a proxy's root path the script names another URL, so another hash.
    behind = TestClient(client.app, root_path="/pneumoscan").get("/docs")
    assert "/pneumoscan/openapi.json" in behind.text
    assert _policy(behind.headers["content-security-policy"])["script-src"] != policy["script-src"]


def test_redoc_allows_inline_styles_but_no_inline_script(client):
    policy = _common(client.get("/redoc"))
    assert policy["script-src"] == ["'self'"] and "'unsafe-inline'" in policy["style-src"]
    assert policy["worker-src"] == ["blob:"]  # its search runs in a worker it makes from its own bundle
    assert _policy(client.get("/").headers["content-security-policy"])["worker-src"] == ["'none'"]


def test_inline_hashes_and_the_policy_builder():
    html = '<script src="/a.js"></script><script>let a = 1;</script><style>b{}</style><SCRIPT type="module">x()</SCRIPT>'
    sha = lambda text: "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"  # noqa: E731
    assert inline_hashes(html, "script") == [sha("let a = 1;"), sha("x()")]
    assert inline_hashes(html, "style") == [sha("b{}")]
    policy = _policy(content_security_policy(script=["'sha256-x'"], style=[""], worker="blob:"))
    assert policy["script-src"] == ["'self'", "'sha256-x'"] and policy["style-src"] == ["'self'"]
    assert policy["worker-src"] == ["blob:"]


def test_the_model_cards_aligned_tables_use_classes_not_styles():
    """The page inserts the rendered model card; a ``style`` attribute in it would break the page's policy."""
    from pneumoscan.serve.state import render_markdown

    html = render_markdown("| a | b | c |\n| :- | -: | :-: |\n| 1 | 2 | 3 |\n")
    assert "style=" not in html
    assert '<th class="align-right">b</th>' in html and '<td class="align-center">3</td>' in html
