"""Every operation and every schema of the published contract says what it is, in words of its own."""

from typing import Any

import pytest

from escrow.app import create_app
from escrow.config import Settings
from escrow.openapi import schema_dict

# The sentences the contract appends to every operation's description (escrow.openapi._describe_access).
ACCESS_SENTENCES = ("Who may call", "Anyone (no token)")


@pytest.fixture(scope="module")
def contract() -> dict[str, Any]:
    # The document is built from the route table alone: no database is reached.
    app = create_app(Settings(database_url="postgresql://unused@localhost/unused", secret_key="x" * 32))
    return schema_dict(app)


def own_description(operation: dict[str, Any]) -> str:
    text = operation.get("description", "")
    for sentence in ACCESS_SENTENCES:
        text = text.split(sentence)[0]
    return text.strip()


def test_every_operation_has_a_description(contract: dict[str, Any]) -> None:
    undescribed = [
        f"{method.upper()} {path}"
        for path, item in contract["paths"].items()
        for method, operation in item.items()
        if not own_description(operation)
    ]
    assert not undescribed, "give these route handlers a docstring: " + ", ".join(undescribed)


def test_every_schema_has_a_description(contract: dict[str, Any]) -> None:
    undescribed = [name for name, schema in contract["components"]["schemas"].items() if not schema.get("description")]
    assert not undescribed, "give these models a class docstring: " + ", ".join(undescribed)
