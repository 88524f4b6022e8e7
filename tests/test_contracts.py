"""The committed API contract is the one the app serves."""

import json
import re
from pathlib import Path

from httpx import AsyncClient
from jsonschema import Draft202012Validator
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.app import create_app
from escrow.config import Settings
from escrow.openapi import document
from escrow.reconciliation.parsing import camt053_statements, json_file_statement
from escrow.reconciliation.schemas import statement_schema_document
from tests.reconciling import desk, send, send_camt

CONTRACT = Path(__file__).resolve().parent.parent / "contracts" / "openapi.json"


class TestOpenAPI:
    def test_committed_contract_matches_app(self) -> None:
        live = document(create_app(Settings(database_url="postgresql://unused@localhost/unused")))
        assert CONTRACT.read_text() == live, "contracts/openapi.json is stale: run `escrow openapi`"

    async def test_served_document_and_docs(self, client: AsyncClient) -> None:
        served = await client.get("/openapi.json")
        assert served.status_code == 200
        assert served.json()["info"]["title"] == "Prepaid Escrow Ledger"
        assert "/healthz" in served.json()["paths"]
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        # every asset of the page comes from the service itself: bank intranets have no internet
        assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
        assert assets and all(url.startswith("/static/") for url in assets), assets
        for url in assets:
            asset = await client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url

    async def test_options_answers_every_method_of_the_path(self, client: AsyncClient) -> None:
        for path, methods in (("/v1/banks", {"GET", "POST"}), ("/v1/cards", {"GET", "POST"})):
            response = await client.options(path)
            assert response.status_code == 204, response.text
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert methods | {"OPTIONS"} <= allowed, (path, allowed)


EXAMPLES = CONTRACT.parent / "examples"
STATEMENT_SCHEMA = CONTRACT.parent / "bank-statement.schema.json"


class TestStatementContract:
    """The JSON statement format is published as a JSON Schema; its examples, JSON and camt.053, say the same."""

    def test_committed_schema_matches_the_model(self) -> None:
        assert STATEMENT_SCHEMA.read_text() == statement_schema_document(), "run `escrow openapi`"

    def test_the_json_example_is_valid_and_a_broken_one_is_not(self) -> None:
        schema = json.loads(STATEMENT_SCHEMA.read_text())
        Draft202012Validator.check_schema(schema)
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        example = json.loads((EXAMPLES / "bank-statement.json").read_text())
        assert list(validator.iter_errors(example)) == []
        broken = json.loads(json.dumps(example))
        broken["lines"][0]["amount"]["amount"] = 12.5
        del broken["closing_balance"]
        assert {tuple(e.absolute_path)[:3] for e in validator.iter_errors(broken)} == {(), ("lines", 0, "amount")}

    def test_both_examples_read_as_the_same_statement(self) -> None:
        from_json = json_file_statement((EXAMPLES / "bank-statement.json").read_bytes())
        statements = camt053_statements(str(EXAMPLES / "bank-statement.camt053.xml"), "Asia/Shanghai")
        from_camt = next(statements)
        camt_lines = list(from_camt.lines)  # a stream: read before the next statement
        assert next(statements, None) is None
        assert (from_camt.header.account, from_json.header.account) == (
            "330104000123456789",
            "esc_01JEXAMPLE0000000000000000",
        )
        fields = ("business_date", "opening", "closing", "bank_statement_id")
        assert [getattr(from_camt.header, f) for f in fields] == [getattr(from_json.header, f) for f in fields]
        assert camt_lines == list(from_json.lines)

    async def test_the_examples_are_accepted_as_one_statement(self, client: AsyncClient, session: AsyncSession) -> None:
        shop = await desk(client, session)
        example = json.loads((EXAMPLES / "bank-statement.json").read_text())
        example["escrow_account_id"] = shop.account_id
        sent = (await send(client, shop.bank, example))["statements"][0]
        assert (sent["outcome"], sent["line_count"], sent["lines"]["not_in_ledger"]) == ("created", 4, 4)
        # the camt.053 example names the same account by its bank account number: the same statement again
        again = await send_camt(client, shop.bank, (EXAMPLES / "bank-statement.camt053.xml").read_bytes())
        assert [(s["id"], s["outcome"]) for s in again["statements"]] == [(sent["id"], "unchanged")]
