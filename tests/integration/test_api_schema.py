"""Property-based run of the OpenAPI document against the live app (schemathesis).

Schemathesis reads /api/v1/openapi.json from a running server and generates requests
for every operation, valid and invalid by the schema; each response is checked against
the document: no 5xx, documented status codes, content types and bodies that match their
schemas. (Its pytest plugin does not run under pytest 9 yet, so the test drives the
operations' Hypothesis strategies itself.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("stand_in_engine")]

EXAMPLES = 40


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_keeps_every_promise_of_its_openapi_document(live_server, mode):
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {
        "POST /api/v1/analyses",
        "GET /api/v1/analyses/{analysis_id}",
        "POST /api/v1/analyses/{analysis_id}/send",
    }
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            # Uploads that match the schema can still be bytes that are no CT slice, which
            # the API rightly refuses with 400: "schema-valid data is accepted" is left out.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()
