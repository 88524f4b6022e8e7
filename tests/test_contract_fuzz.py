"""The published contract tells the truth: schemathesis fuzzes the running service from contracts/openapi.json's
source (the app's own /openapi.json), as each role, banks signing every request, with every check on.

Locally, for a deeper run: ``ESCROW_FUZZ_EXAMPLES=200 pytest tests/test_contract_fuzz.py``.
"""

import compileall
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS, load_all_checks
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.kit.signing import sign_headers
from tests.live import serve
from tests.parties import (
    TEST_SECRET_KEY,
    Bank,
    consumer_token,
    create_plan,
    onboard_bank,
    onboard_merchant,
    open_escrow_account,
    regulator_token,
)

CONTRACT = Path(__file__).resolve().parent.parent / "contracts" / "openapi.json"
EXAMPLES = int(os.environ.get("ESCROW_FUZZ_EXAMPLES", "12"))
ROLES = ("anonymous", "regulator", "bank", "merchant", "consumer")


class SignedByBank(requests.auth.AuthBase):
    def __init__(self, bank: Bank, *, declared_only: bool) -> None:
        self.bank = bank
        self.declared_only = declared_only  # the operation declares the signature headers as its parameters

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Sign as the bank (its token is an explicit Authorization header), refreshing the signature headers the
        case carries: a case generated without one of them, to see it refused, is sent without it."""
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body
        signed = sign_headers(self.bank.secret, self.bank.algorithm, request.method or "GET", request.path_url, body)
        declared = {name.lower() for name in request.headers}
        for name, value in signed.items():
            if name.lower() in declared or not self.declared_only:
                request.headers[name] = value
        return request


@dataclass
class Live:
    url: str
    tokens: dict[str, str]
    bank: Bank

    def auth(self, role: str, operation: Any) -> dict[str, Any]:
        if role == "bank":
            declared = any(
                p.get("name") == "X-Escrow-Signature" for p in operation.definition.raw.get("parameters", [])
            )
            return {
                "auth": SignedByBank(self.bank, declared_only=declared),
                "headers": {"Authorization": f"Bearer {self.bank.token}"},
            }
        if role == "anonymous":
            return {}
        return {"headers": {"Authorization": f"Bearer {self.tokens[role]}"}}


@pytest.fixture
async def live(db_url: str, session: AsyncSession) -> Iterator[Live]:
    with serve(db_url, auth_failure_limit="1000000", secret_key=TEST_SECRET_KEY) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            regulator = await regulator_token(session)
            bank = await onboard_bank(client, regulator, "FUZZ")
            merchant = await onboard_merchant(client, regulator, "Fuzz Gym")
            await open_escrow_account(client, merchant, bank)
            await create_plan(client, merchant, kind="sessions", price=100_000, sessions=10)
            _, consumer = await consumer_token(client, merchant, "13800000002", database_url=db_url)
        yield Live(url, {"regulator": regulator, "merchant": merchant.token, "consumer": consumer}, bank)


# Schema-valid data may still break a rule the schema can't state (a plan's caps depend on the merchant's
# category; a refund needs a card that isn't exhausted): 422 then names a domain rule. What the schema *can*
# state must never come back as a validation failure for data generated from it.
# (JSON Schema's "integer" admits 1.0 and 1e3; the service takes only integer literals, as each amount's
# description says, so int_type is not among them.)
SCHEMA_RULES = {
    "missing",
    "extra_forbidden",
    "string_type",
    "bool_type",
    "model_type",
    "pattern",
    "string_pattern_mismatch",
    "string_too_long",
    "string_too_short",
    "greater_than_equal",
    "less_than_equal",
    "greater_than",
    "less_than",
    "max_length",
    "min_length",
    "enum",
    "literal_error",
}


def schema_valid_is_not_a_schema_failure(ctx: Any, response: Any, case: Any) -> bool | None:
    if case.meta is None or case.meta.generation.mode.name != "POSITIVE" or response.status_code != 422:
        return None
    problem = response.json()
    broken = {e.get("rule") for e in problem.get("errors") or []} & SCHEMA_RULES
    if problem.get("code") == "validation_failed" and broken:
        raise AssertionError(f"schema-valid input refused for a rule the contract states: {problem}")
    return True


def fuzz(operation: Any, mode: Any, url: str, auth: dict[str, Any], checks: list[Any]) -> None:
    """Send one operation's generated cases as one role, each response checked by every check."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=url, **auth)
        case.validate_response(response, checks=checks, additional_checks=[schema_valid_is_not_a_schema_failure])

    run()


async def test_the_contract_holds_for_every_role(live: Live) -> None:
    load_all_checks()
    checks = CHECKS.get_all()
    assert len(checks) >= 10  # every built-in check, not a subset
    config = schemathesis.Config.from_dict(
        {
            # 422 for schema-valid data is allowed only for domain rules (schema_valid_is_not_a_schema_failure)
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422"]}},
            # each role's credentials are the harness's (a bearer token, a bank's signature), not generated
            "generation": {"with-security-parameters": False},
        }
    )
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=config)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        roles = operation.definition.raw.get("x-roles", ["anonymous"])
        for role in [r for r in ROLES if r in roles or r == "anonymous"]:
            operations += 1
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                try:
                    fuzz(operation, mode, live.url, live.auth(role, operation), checks)
                except Unsatisfiable:
                    pass  # nothing of this operation's input can be made invalid (no parameters, no body)
                except BaseException as exc:  # one line per failing operation and role, all reported together
                    if isinstance(exc, KeyboardInterrupt | SystemExit):
                        raise
                    failures.append(f"{operation.label} as {role} ({mode.value}): {str(exc)[:1500]}")
    assert operations > 100
    assert not failures, "\n\n".join(failures)


async def test_a_client_generated_from_the_contract_makes_a_signed_call(live: Live, tmp_path: Path) -> None:
    """openapi-python-client (a standard generator) builds a client from contracts/openapi.json that compiles,
    keeps every operation's responses, and makes a bank's signed call."""
    generated = subprocess.run(  # noqa: ASYNC221 (the service runs in a process of its own)
        ["openapi-python-client", "generate", "--path", str(CONTRACT), "--meta", "none", "--output-path", "client"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    # the one operation it may leave out: camt.053 intake takes XML, which the generator may not support
    skipped = re.findall(r"WARNING parsing (\S+ \S+)", generated.stdout)
    assert set(skipped) <= {"POST /v1/statements/camt053"}, generated.stdout
    assert compileall.compile_dir(tmp_path / "client", quiet=1)
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("client")
        me = importlib.import_module("client.api.access.me")
        instructions = importlib.import_module("client.api.payouts.list_instructions")
        client = client_module.Client(base_url=live.url, httpx_args={"auth": live.bank.auth})
        caller = me.sync(client=client)
        assert caller.role == "bank" and caller.principal_id == live.bank.id
        page = instructions.sync(client=client)
        assert page.items == []
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == "client" or n.startswith("client.")]:
            del sys.modules[name]
