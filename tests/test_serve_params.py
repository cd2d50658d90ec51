"""The API's bounded parameters (``serve/params.py``): ids, offsets and times out of range are 422 (or 404),
never a 500 from an ``OverflowError`` deep in the database driver.

Besides the cases reported (issue #25), every route's parameters as ``/openapi.json`` lists them (so a route
added later is covered too) are fuzzed with Hypothesis: huge and negative integers, odd dates and times, floats
and text; every answer must be below 500. Every integer parameter must publish both bounds."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resultfactory import scored

from pneumoscan.serve import create_app
from pneumoscan.serve.params import MAX_INT64, when

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

#: Every route with a body or path gets this much of both (review: a valid body, so the path is what is tested).
_REVIEW = {"verdict": "agree", "note": "fuzz"}

REPORTED = [
    "/api/v1/worklist/9223372036854775808",
    "/api/v1/worklist?offset=9223372036854775808",
    "/api/v1/worklist?since=9999-12-31T23:59:59-14:00",
    "/api/v1/worklist?until=0001-01-01T00:00:00%2B14:00",
    "/api/v1/worklist?until=9999-12-31",
    "/api/v1/worklist.csv?offset=9223372036854775808",
    "/api/v1/worklist.csv?since=9999-12-31T23:59:59-14:00",
    "/api/v1/worklist.csv?until=9999-12-31",
    "/api/v1/audit?offset=9223372036854775808",
    "/api/v1/audit?offset=-1",
    "/api/v1/outbox?offset=9223372036854775808",
    "/api/v1/outbox?state=failed&offset=9223372036854775808",
    "/api/v1/worklist/-1",
    "/api/v1/worklist/0",
]


@pytest.fixture(scope="module")
def app(tiny_checkpoint):
    from pneumoscan.inference.predictor import Predictor

    app = create_app(Predictor.from_checkpoint(tiny_checkpoint))
    store = app.state.pneumoscan.store
    for p in (0.2, 0.7):  # rows to find, list and review
        store.add(scored("x.jpeg", p, threshold=0.5), input_sha256="ab" * 32, source="upload", client="local")
    return app


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("url", REPORTED)
def test_the_reported_overflows_are_422(client, url):
    r = client.get(url)
    assert r.status_code == 422, (url, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("path", ["/api/v1/worklist/9223372036854775808/review", "/api/v1/worklist/-5/review"])
def test_a_review_of_an_impossible_id_is_422(client, path):
    assert client.post(path, json=_REVIEW).status_code == 422


def test_the_largest_id_and_offset_are_fine(client):
    assert client.get(f"/api/v1/worklist/{MAX_INT64}").status_code == 404
    r = client.get(f"/api/v1/worklist?offset={MAX_INT64}")
    assert r.status_code == 200 and r.json()["results"] == []
    assert client.get(f"/api/v1/audit?offset={MAX_INT64}").status_code == 200
    assert client.get("/api/v1/worklist?since=0001-01-01&until=9999-12-30T23:59:59Z").json()["total"] == 2


def test_when_checks_the_utc_range():
    from pneumoscan.serve.body import BadRequest

    assert when("9999-12-31", "since") is not None  # midnight is in range
    assert when("9999-12-31T23:59:59", "until", end_of_day=True) is not None  # naive: UTC already
    assert when("  ", "since") is None
    for text, end in (("9999-12-31", True), ("9999-12-31T23:59:59-14:00", False),
                      ("0001-01-01T00:00:00+14:00", False), ("2024-13-01", False), ("yesterday", False)):
        with pytest.raises(BadRequest) as info:
            when(text, "since", end_of_day=end)
        assert info.value.status == 422


# --------------------------------------------------------------------------- every route's parameters, fuzzed


def _operations(app) -> list[tuple[str, str, list[tuple[str, str, dict]]]]:
    """``(method, path, [(name, where, schema)])`` of every operation in the OpenAPI document with parameters."""
    ops = []
    for path, item in app.openapi()["paths"].items():
        for method, op in item.items():
            params = [(p["name"], p["in"], p.get("schema", {})) for p in op.get("parameters", [])]
            if params:
                ops.append((method.upper(), path, params))
    return ops


def _types(schema: dict) -> set[str]:
    found = {schema["type"]} if "type" in schema else set()
    for alt in schema.get("anyOf", []):
        found |= _types(alt)
    return found


def _bounds(schema: dict) -> tuple[object, object]:
    for alt in [schema, *schema.get("anyOf", [])]:
        if alt.get("type") == "integer":
            return alt.get("minimum", alt.get("exclusiveMinimum")), alt.get("maximum", alt.get("exclusiveMaximum"))
    return None, None


def test_every_integer_parameter_is_bounded(app):
    ops = _operations(app)
    paths = {path for _, path, _ in ops}
    assert {"/api/v1/worklist", "/api/v1/worklist/{result_id}", "/api/v1/audit"} <= paths
    unbounded = [f"{method} {path} {name}" for method, path, params in ops for name, _, schema in params
                 if "integer" in _types(schema) and None in _bounds(schema)]
    assert not unbounded, f"integer parameters without both bounds: {unbounded}"


_HUGE = st.one_of(
    st.sampled_from([0, 1, -1, MAX_INT64, MAX_INT64 + 1, -MAX_INT64 - 1, -MAX_INT64 - 2, 2**64, 10**100, -(10**100)]),
    st.integers(min_value=-(2**80), max_value=2**80),
)
_TIMES = st.one_of(
    st.sampled_from(["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31", "0001-01-01",
                     "9999-12-31T23:59:59.999999+00:00", "0001-01-01T00:00:00-23:59", "2024-02-30", "2024-05-01T24:00",
                     "+10000-01-01", "2024-05-01T08:00:00Z", "20240501", "2024-W18-3", "", " ", "nan", "inf", "-0"]),
    st.builds(lambda d, minutes: d.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
              st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
              st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1)),
    st.dates().map(lambda d: d.isoformat()),
)
_TEXT = st.one_of(st.floats().map(str), st.text(max_size=40))


def _values(schema: dict) -> st.SearchStrategy[str]:
    """Values for one parameter: mostly of its kind (integers huge and negative; times at the ends of the range),
    some of any other."""
    kinds = _types(schema)
    if "integer" in kinds or "number" in kinds:
        return st.one_of(_HUGE.map(str), _HUGE.map(str), _TEXT, _TIMES)
    if "string" in kinds:
        return st.one_of(_TIMES, _TIMES, _HUGE.map(str), _TEXT)
    return st.one_of(_TEXT, _HUGE.map(str), _TIMES)


@st.composite
def _requests(draw, ops):
    """One operation with one parameter fuzzed (any others left out, or valid: a path's id is 1), so that the
    value reaches the code behind the validation of the others."""
    method, path, params = draw(st.sampled_from(ops))
    name, where, schema = draw(st.sampled_from(params))
    value = draw(_values(schema))
    for other, other_where, _ in params:
        if other_where == "path" and other != name:
            path = path.replace("{" + other + "}", "1")
    if where == "path":
        return method, path.replace("{" + name + "}", quote(value, safe="") or "0")
    return method, path + "?" + urlencode({name: value})


@pytest.fixture(scope="module")
def operations(app):
    return _operations(app)


def test_no_parameter_value_makes_a_500(app, client, operations):
    @settings(max_examples=400, derandomize=True, database=None, deadline=None, print_blob=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(_requests(operations))
    def check(request):
        method, url = request
        r = client.post(url, json=_REVIEW) if method == "POST" else client.request(method, url)
        assert r.status_code < 500, (method, url, r.status_code, r.text[:300])

    check()


def test_a_time_at_the_edge_of_the_range_is_found(client):
    """A time that converts to UTC inside the range still filters as before (the check changes no result)."""
    now = datetime.now(UTC)
    assert client.get("/api/v1/worklist", params={"since": (now - timedelta(hours=1)).isoformat()}).json()["total"] == 2
    assert client.get("/api/v1/worklist", params={"until": (now - timedelta(days=1)).date().isoformat()}).json()["total"] == 0
