"""camt.053 intake: documents read as banks send them, and hostile or broken ones refused with nothing stored."""

import io
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.config import Settings
from escrow.reconciliation.parsing import StatementInvalid, StatementMalformed, StatementUnsafe, camt053_statements
from tests.parties import bearer, key, onboard_merchant, open_escrow_account
from tests.reconciling import BANK_ACCOUNT_NUMBER, camt053, credit, desk, fee, lines, send_camt, today

NS = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None, "statement_max_bytes": 64 * 1024})


async def stored(session: AsyncSession) -> tuple[int, int]:
    counts = (
        await session.execute(
            text("SELECT (SELECT count(*) FROM bank_statements), (SELECT count(*) FROM bank_statement_lines)")
        )
    ).one()
    await session.rollback()
    return tuple(counts)


def entry(amount: str = "100.00", currency: str = "CNY", extra: str = "") -> str:
    day = today().isoformat()
    return (
        f'<Ntry><Amt Ccy="{currency}">{amount}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>'
        f"<BookgDt><Dt>{day}</Dt></BookgDt><ValDt><Dt>{day}</Dt></ValDt><AcctSvcrRef>X1</AcctSvcrRef>{extra}</Ntry>"
    )


def document(entries: str = "", *, namespace: str = NS, prolog: str = "", account: str = BANK_ACCOUNT_NUMBER) -> str:
    day = today().isoformat()
    balance = (
        '<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp><Amt Ccy="CNY">0.00</Amt><CdtDbtInd>CRDT</CdtDbtInd>'
        f"<Dt><Dt>{day}</Dt></Dt></Bal>"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n{prolog}<Document xmlns="{namespace}"><BkToCstmrStmt>'
        f"<GrpHdr><MsgId>M1</MsgId></GrpHdr><Stmt><Id>S1</Id><Acct><Id><Othr><Id>{account}</Id></Othr></Id></Acct>"
        f"{balance.format(code='OPBD')}{balance.format(code='CLBD')}{entries}</Stmt></BkToCstmrStmt></Document>\n"
    )


class TestReadAsBanksSendThem:
    async def test_one_file_many_accounts_found_by_their_bank_account_number(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        deposit = await shop.deposit()
        second = await open_escrow_account(
            client, await onboard_merchant(client, shop.regulator, "Second Gym"), shop.bank
        )
        # both accounts were activated with the same number in the tests; the second file names the id instead
        sent = await send_camt(
            client,
            shop.bank,
            camt053([(shop.account_id, [credit(deposit), fee(300)], 0, None), (second, [], 0, None)]),
        )
        statements = sent["statements"]
        assert [(s["escrow_account_id"], s["format"], s["outcome"]) for s in statements] == [
            (shop.account_id, "camt053", "created"),
            (second, "camt053", "created"),
        ]
        assert statements[0]["lines"] == {"matched": 1, "amount_mismatch": 0, "not_in_ledger": 1}
        assert statements[1]["reconciled"] is True
        shown = {line["bank_transaction_id"]: line for line in await lines(client, shop.regulator, statements[0]["id"])}
        assert shown["FEE-0001"]["amount"]["amount"] == 300 and shown["FEE-0001"]["direction"] == "debit"

    async def test_the_bank_account_number_finds_the_account(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        sent = await send_camt(client, shop.bank, document().encode())
        assert sent["statements"][0]["escrow_account_id"] == shop.account_id

    async def test_another_banks_account_is_not_found(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        shop = await desk(client, session)
        other = await desk(client, session, "RCOT")
        response = await client.post(
            "/v1/statements/camt053",
            content=camt053([(shop.account_id, [], 0, None)]),
            headers={**key(), "Content-Type": "application/xml"},
            auth=other.bank.auth,
        )
        assert response.status_code == 404, response.text
        assert await stored(session) == (0, 0)

    def test_amounts_are_exact_fen(self) -> None:
        parsed = next(camt053_statements(_bytes(document(entry("1234567890.07"))), "Asia/Shanghai"))
        (line,) = list(parsed.lines)
        assert line.amount == 123_456_789_007 and isinstance(line.amount, int)


def _bytes(xml: str) -> io.BytesIO:
    return io.BytesIO(xml.encode())


REFUSED = {
    "external_entity": (
        document(
            entry(extra="<AddtlNtryInf>&xxe;</AddtlNtryInf>"),
            prolog='<!DOCTYPE Document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
        ),
        422,
        "statement_unsafe",
        "DOCTYPE",
    ),
    "billion_laughs": (
        document(
            entry(extra="<AddtlNtryInf>&lol9;</AddtlNtryInf>"),
            prolog='<!DOCTYPE lolz [<!ENTITY lol "lol">'
            + "".join(
                f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
                for i in range(1, 10)
            )
            + "]>",
        ),
        422,
        "statement_unsafe",
        "DOCTYPE",
    ),
    "wrong_namespace": (
        document(entry(), namespace="urn:iso:std:iso:20022:tech:xsd:camt.052.001.08"),
        422,
        "statement_invalid",
        "camt.052",
    ),
    "no_namespace": (document(entry()).replace(f' xmlns="{NS}"', ""), 422, "statement_invalid", "not camt.053"),
    "truncated": (document(entry())[:-60], 422, "statement_malformed", "line"),
    "sub_fen_digit": (document(entry("100.001")), 422, "statement_invalid", "not a whole number of fen"),
    "not_cny": (document(entry(currency="USD")), 422, "statement_invalid", "USD is not CNY"),
    "not_xml": ("this is not xml", 422, "statement_malformed", "line"),
    "wrapped_document": (
        document(entry()).replace("<Document", "<Envelope><Document").replace("</Document>", "</Document></Envelope>"),
        422,
        "statement_invalid",
        "root element",
    ),
    "doctype_of_another_root": (
        '<!DOCTYPE Envelope [<!ENTITY a "aaaaaaaaaa">]><Envelope>' + "&a;" * 100 + "</Envelope>",
        422,
        "statement_unsafe",
        "DOCTYPE",
    ),
}


_BOMB = (
    '<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10))
    + "]>"
)
_BOMB_DOCUMENT = document(entry(extra="<AddtlNtryInf>&lol9;</AddtlNtryInf>")).split("\n", 1)[1]
# A DOCTYPE is refused as such whatever comes before it and however the document is encoded: from the raw bytes,
# before libxml2 parses anything (libxml2 2.14 stops an entity bomb itself, as a malformed document).
PROLOGS = {
    "bom_comment_pi_whitespace": "\ufeff<?xml version='1.0'?>\n<!-- exported -->\n<?bank x?>\r\n\t" + _BOMB,
    "no_declaration": _BOMB,
    "lowercase_doctype": '<?xml version="1.0"?><!doctype Document>',
    "entity_without_doctype": '<?xml version="1.0"?><!ENTITY a "b">',
    "comment_then_doctype_split_late": "<!--" + "x" * 70_000 + "-->" + _BOMB,
}
ENCODED = {
    "utf-16": ("\ufeff<?xml version='1.0' encoding='UTF-16'?>" + _BOMB).encode("utf-16-le"),
    "utf-16-be_without_bom": ("<?xml version='1.0' encoding='UTF-16'?>" + _BOMB).encode("utf-16-be"),
    "utf-32": ("<?xml version='1.0' encoding='UTF-32'?>" + _BOMB).encode("utf-32-le"),
    "utf-7": b"<?xml version='1.0' encoding='UTF-7'?>" + "<!DOCTYPE a>".encode("utf-7").replace(b"<", b"+ADw-"),
    "gb18030": ("<?xml version='1.0' encoding='GB18030'?><!-- 对账单 -->" + _BOMB).encode("gb18030"),
}


class TestPrologs:
    @pytest.mark.parametrize("case", sorted(PROLOGS))
    def test_a_doctype_is_unsafe_whatever_precedes_it(self, case: str) -> None:
        xml = PROLOGS[case] + (_BOMB_DOCUMENT if "Document" not in PROLOGS[case][-20:] else "")
        with pytest.raises(StatementUnsafe) as refused:
            for statement in camt053_statements(_bytes(xml), "Asia/Shanghai"):
                list(statement.lines)
        assert "DOCTYPE" in refused.value.detail

    @pytest.mark.parametrize("case", sorted(ENCODED))
    def test_a_doctype_is_unsafe_in_any_encoding(self, case: str) -> None:
        with pytest.raises(StatementUnsafe):
            for statement in camt053_statements(io.BytesIO(ENCODED[case] + b"<Document/>"), "Asia/Shanghai"):
                list(statement.lines)

    def test_an_encoding_python_does_not_know_is_refused(self) -> None:
        xml = document(entry()).replace('encoding="UTF-8"', 'encoding="X-NOT-REAL"')
        with pytest.raises(StatementInvalid) as refused:
            for statement in camt053_statements(_bytes(xml), "Asia/Shanghai"):
                list(statement.lines)
        assert "X-NOT-REAL" in refused.value.detail

    @pytest.mark.parametrize("encoding", ["utf-16", "gb18030", "utf-8-sig"])
    def test_other_encodings_without_a_doctype_are_read(self, encoding: str) -> None:
        xml = document(entry(extra="<AddtlNtryInf>会员卡</AddtlNtryInf>"))
        xml = xml.replace('encoding="UTF-8"', f'encoding="{encoding.removesuffix("-sig").upper()}"')
        (statement,) = [(s.header, list(s.lines)) for s in camt053_statements(io.BytesIO(xml.encode(encoding)), "UTC")]
        assert statement[1][0].text == "会员卡"


class TestHostileAndBrokenDocuments:
    @pytest.mark.parametrize("case", sorted(REFUSED))
    async def test_refused_with_a_clear_error_and_nothing_stored(
        self, client: httpx.AsyncClient, session: AsyncSession, case: str
    ) -> None:
        shop = await desk(client, session)
        xml, status, code, words = REFUSED[case]
        response = await client.post(
            "/v1/statements/camt053",
            content=xml.encode(),
            headers={**key(), "Content-Type": "application/xml"},
            auth=shop.bank.auth,
        )
        assert response.status_code == status, response.text
        body = response.json()
        assert response.headers["content-type"].startswith("application/problem+json")
        assert body["code"] == code and words in body["detail"], body
        assert body["errors"][0]["field"], body
        assert "root:" not in response.text  # no file was read into the answer
        assert await stored(session) == (0, 0)

    async def test_oversized_is_refused_before_parsing(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        shop = await desk(client, session)
        big = document(entry() * 400).encode()  # about 100 KiB, over the 64 KiB limit set above
        response = await client.post(
            "/v1/statements/camt053",
            content=big,
            headers={**key(), "Content-Type": "application/xml"},
            auth=shop.bank.auth,
        )
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "body_too_large"
        assert await stored(session) == (0, 0)

    async def test_a_json_body_on_the_xml_route_is_415(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        shop = await desk(client, session)
        response = await client.post("/v1/statements/camt053", json={"a": 1}, headers=key(), auth=shop.bank.auth)
        assert response.status_code == 415, response.text

    def test_the_parser_never_reads_an_external_file(self, tmp_path: Path) -> None:
        secret = tmp_path / "secret.txt"
        secret.write_text("TOP-SECRET")
        xml = document(
            entry(extra="<AddtlNtryInf>&xxe;</AddtlNtryInf>"),
            prolog=f'<!DOCTYPE Document [<!ENTITY xxe SYSTEM "file://{secret}">]>',
        )
        with pytest.raises(StatementUnsafe) as refused:
            for statement in camt053_statements(_bytes(xml), "Asia/Shanghai"):
                list(statement.lines)
        assert "TOP-SECRET" not in str(refused.value.detail)

    def test_truncated_names_the_line(self) -> None:
        xml = document(entry() + "\n" + entry())
        with pytest.raises(StatementMalformed) as refused:
            for statement in camt053_statements(_bytes(xml[: xml.rindex("<Ntry>") + 20]), "Asia/Shanghai"):
                list(statement.lines)
        assert refused.value.errors[0]["line"] >= 2

    async def test_the_bank_sees_its_refusal_in_the_audit(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        await client.post(
            "/v1/statements/camt053",
            content=REFUSED["billion_laughs"][0].encode(),
            headers={**key(), "Content-Type": "application/xml"},
            auth=shop.bank.auth,
        )
        audit = await client.get(
            "/v1/audit", params={"action": "POST /v1/statements/camt053"}, headers=bearer(shop.regulator)
        )
        assert audit.status_code == 200, audit.text
        assert [(r["outcome"], r["status"]) for r in audit.json()["items"]] == [("refused", 422)]
