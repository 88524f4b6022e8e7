"""The committed API contract is the one the app serves."""

from pathlib import Path

from httpx import AsyncClient

from escrow.app import create_app
from escrow.config import Settings
from escrow.openapi import document

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
