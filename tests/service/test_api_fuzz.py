"""Schemathesis against the gateway (ASGI, real Postgres): every operation of the OpenAPI schema,
positive and negative inputs, every built-in check on. It must find no server error and no
response that breaks the schema. Figures and the command are in docs/reliability.md.

positive_data_acceptance also accepts 422: inputs the schema allows can still break a rule the
schema cannot state (a prompt-set id that does not exist in the workspace, a chat that does not end
with the user); those answers are 422 naming the field.
"""
from __future__ import annotations

import os
import uuid

import pytest
import schemathesis  # in the test extra

# 100 examples per operation: about a minute on two shared cores (docs/reliability.md).
MAX_EXAMPLES = int(os.environ.get("AUTODIDACT_FUZZ_EXAMPLES", "100"))
SEED = int(os.environ.get("AUTODIDACT_FUZZ_SEED", "1"))
COUNTS = {"requests": 0, "operations": set(), "by_status": {}}


@pytest.fixture(scope="module")
def fuzz_headers(api):
    """An admin key of a fresh workspace, with a prompt set, a run and a model version in it."""
    from tests.conftest import _key

    client, _, _ = api
    h = {"Authorization": f"Bearer {_key(f'fuzz-{uuid.uuid4().hex[:6]}', 'admin')}"}
    # The constraint also loads the verifier (lm_eval) now rather than inside a fuzzed request,
    # whose 10-second client timeout a cold import on a busy machine can pass.
    items = [{"prompt": "hi", "reference": "hello", "constraints": [{"id": "change_case:english_lowercase"}]}]
    sid = client.post("/v1/prompt-sets", json={"name": "seed", "items": items}, headers=h).json()["id"]
    client.post("/v1/runs", json={"method": "spin", "base_model": "gemma", "prompt_set_ids": [sid]}, headers=h)
    return h


def _schema():
    # The app reads its database and broker settings per request, so it can be built before the
    # session fixtures point the settings at the test Postgres.
    from services.gateway.main import create_app

    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "checks": {"enabled": True, "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404",
                                                                                       "409", "422"]}},
        # The key is added to every request by the test; requests without it are the job of the
        # ignored_auth check, so the generator does not also mutate the Authorization header
        # (a mutation the added key would silently undo).
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none",
                       "with-security-parameters": False},
    })
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(), config=config)


schema = _schema()


@schema.parametrize()
def test_api_contract_holds_under_fuzzing(case, fuzz_headers):
    from schemathesis.checks import CHECKS

    response = case.call_and_validate(headers=fuzz_headers, checks=CHECKS.get_all())
    COUNTS["requests"] += 1
    COUNTS["operations"].add(case.operation.label)
    COUNTS["by_status"][response.status_code] = COUNTS["by_status"].get(response.status_code, 0) + 1


def test_fuzz_figures():
    """Prints what the fuzzing covered (run after the parametrized test; -s to see it)."""
    if not COUNTS["requests"]:
        pytest.skip("run together with test_api_contract_holds_under_fuzzing")
    print(f"\nfuzz: {len(COUNTS['operations'])} operations, {COUNTS['requests']} test cases, "
          f"statuses {dict(sorted(COUNTS['by_status'].items()))}")
