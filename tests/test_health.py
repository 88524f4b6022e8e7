from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


class TestHealth:
    async def test_healthz(self, client: AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_readyz_at_head(self, client: AsyncClient) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ready"

    async def test_readyz_behind_head_is_503(self, client: AsyncClient, engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = 'older'"))
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "not_ready"
