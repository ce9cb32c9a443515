"""The OpenAPI document describes every endpoint served, and schemathesis
fuzzes each of them against a live monitoring server (bound to loopback,
then beyond it, with and without the token): no 5xx, and every response
conforms to the document (status, content type, schema)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from monitoring_support import monitoring_server
from schemathesis.config import SchemathesisConfig

import pulsetrace.health
from pulsetrace import prometheus
from pulsetrace.monitoring import endpoints, openapi

TOKEN = "fuzz-token"
DOCUMENT = openapi.document(endpoints.ENDPOINTS)
# Bad input is answered 4xx; 413 is the answer to a body beyond the bound
# (a negative case may be a list of thousands of names), 431 to a request
# line beyond the head's bound (a negative case may be a query of kilobytes).
REJECTED = ["400", "401", "404", "405", "413", "415", "431"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}}
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module", params=["127.0.0.1", "0.0.0.0"])
def live(request):
    with monitoring_server(host=request.param, token=TOKEN) as client:
        pulsetrace.health.register("ok", lambda: True)
        pulsetrace.health.register("flaky", lambda: 1 / 0, critical=False, ttl=0)
        yield client


def test_the_served_document_is_the_one_fuzzed_and_names_every_route(live):
    status, _, served = live.get("/openapi.json", token=TOKEN)
    assert status == 200 and served == DOCUMENT
    routed = set(prometheus.routes(monitoring=True).paths())
    assert set(served["paths"]) == routed
    methods = {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    assert methods == {(e.method, e.path) for e in endpoints.ENDPOINTS}


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.parametrize("with_token", [True, False])
def test_every_endpoint_fuzzed_no_5xx_and_responses_conform(case, live, with_token):
    headers = {"Authorization": f"Bearer {TOKEN}"} if with_token else {}
    response = case.call(base_url=f"http://127.0.0.1:{live.port}", headers=headers, timeout=10)
    assert response.status_code < 500, (case.path, response.status_code, response.text[:300])
    case.validate_response(response)
