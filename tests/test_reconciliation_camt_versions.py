"""camt.053.001.02 to .08 as banks write them: what the schema allows is read, only what is wrong is refused."""

import io

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.reconciliation.parsing import StatementInvalid, camt053_statements
from tests import camt_samples
from tests.camt_samples import Payment
from tests.reconciling import BANK_ACCOUNT_NUMBER, desk, lines, send_camt, today
from tests.test_reconciliation_xml import document, entry

FEE = 1_250  # fen


def _parse(xml: bytes) -> list:
    return [line for statement in camt053_statements(io.BytesIO(xml), "Asia/Shanghai") for line in statement.lines]


def _sample(version: str) -> bytes:
    return camt_samples.document(
        version,
        BANK_ACCOUNT_NUMBER,
        today(),
        own_reference=Payment("PE-A", "BTX-A", 100_000),
        refs_only=Payment("PE-B", "BTX-B", 100_000),
        batch=(Payment("PE-C", "BTX-C", 100_000), Payment("PE-D", "BTX-D", 50_050)),
        fee_fen=FEE,
    )


class TestEveryVersionParses:
    @pytest.mark.parametrize("version", camt_samples.VERSIONS)
    def test_the_sample_reads_into_its_lines(self, version: str) -> None:
        statements = camt053_statements(io.BytesIO(_sample(version)), "Asia/Shanghai")
        statement = next(statements)
        header, read = statement.header, list(statement.lines)
        assert next(statements, None) is None
        assert (header.opening, header.closing, header.business_date) == (0, 350_050 - FEE, today())
        assert [(x.bank_transaction_id, x.end_to_end_id, x.direction, x.amount) for x in read] == [
            ("BTX-A", "PE-A", "credit", 100_000),  # the entry's own AcctSvcrRef
            ("BTX-B", None, "credit", 100_000),  # AcctSvcrRef only in TxDtls/Refs, EndToEndId NOTPROVIDED
            ("PE-C", "PE-C", "credit", 100_000),  # a batch entry: one line per TxDtls, by its amount
            ("PE-D", "PE-D", "credit", 50_050),
            (f"FEE-{version}-{today():%Y%m%d}", None, "debit", FEE),  # only a PmtInfId
        ]
        assert all(x.booking_date == today() for x in read)  # BookgDt as Dt or DtTm


class TestAmountsAndReferences:
    @pytest.mark.parametrize("written", ["100.000", "100.00000", "100.0", "100", "0.010"])
    def test_more_decimals_of_a_whole_fen_are_read(self, written: str) -> None:
        (line,) = _parse(document(entry(written)).encode())
        assert line.amount == int(written.split(".")[0]) * 100 + int((written + ".").split(".")[1][:2].ljust(2, "0"))

    @pytest.mark.parametrize("written", ["100.001", "100.00001", "0.005", "1.000000"])
    def test_a_digit_below_the_fen_is_refused_naming_the_amount(self, written: str) -> None:
        with pytest.raises(StatementInvalid) as refused:
            _parse(document(entry(written)).encode())
        assert refused.value.errors[0]["field"] == "Stmt[1]/Ntry[1]/Amt"

    def test_an_entry_with_no_reference_anywhere_is_refused(self) -> None:
        refs = "<NtryDtls><TxDtls><Refs><EndToEndId>NOTPROVIDED</EndToEndId></Refs></TxDtls></NtryDtls>"
        with pytest.raises(StatementInvalid) as refused:
            _parse(document(entry().replace("<AcctSvcrRef>X1</AcctSvcrRef>", refs)).encode())
        assert refused.value.errors[0]["field"] == "Stmt[1]/Ntry[1]/AcctSvcrRef"
        assert "no reference" in refused.value.detail

    @pytest.mark.parametrize("name", ["AcctSvcrRef", "TxId", "EndToEndId", "InstrId", "MsgId", "PmtInfId"])
    def test_a_reference_only_in_the_transaction_details_is_enough(self, name: str) -> None:
        refs = f"<NtryDtls><TxDtls><Refs><{name}>R-9</{name}></Refs></TxDtls></NtryDtls>"
        (line,) = _parse(document(entry().replace("<AcctSvcrRef>X1</AcctSvcrRef>", refs)).encode())
        assert line.bank_transaction_id == "R-9"
        assert line.end_to_end_id == ("R-9" if name in ("EndToEndId", "InstrId") else None)


def _batch(*transactions: str, total: str = "100.00") -> bytes:
    details = "".join(
        f"<TxDtls><Refs><EndToEndId>PE-{n}</EndToEndId></Refs>{t}</TxDtls>" for n, t in enumerate(transactions, start=1)
    )
    return document(entry(total, extra=f"<NtryDtls>{details}</NtryDtls>")).encode()


class TestBatchEntries:
    def test_split_into_one_line_per_transaction_when_their_amounts_add_up(self) -> None:
        read = _parse(
            _batch('<Amt Ccy="CNY">60.00</Amt>', '<AmtDtls><TxAmt><Amt Ccy="CNY">40.000</Amt></TxAmt></AmtDtls>')
        )
        assert [(x.bank_transaction_id, x.end_to_end_id, x.amount) for x in read] == [
            ("X1/1", "PE-1", 6_000),  # the entry's AcctSvcrRef, numbered: no TxDtls carries its own
            ("X1/2", "PE-2", 4_000),
        ]

    def test_without_their_amounts_the_entry_is_one_line_with_its_own_reference(self) -> None:
        (line,) = _parse(_batch("", ""))
        assert (line.bank_transaction_id, line.end_to_end_id, line.amount) == ("X1", None, 10_000)
        assert "batch of 2" in (line.text or "")

    def test_amounts_that_do_not_add_up_are_refused_naming_the_entry(self) -> None:
        with pytest.raises(StatementInvalid) as refused:
            _parse(_batch('<Amt Ccy="CNY">60.00</Amt>', '<Amt Ccy="CNY">30.00</Amt>'))
        assert refused.value.errors[0]["field"] == "Stmt[1]/Ntry[1]/NtryDtls" and refused.value.errors[0]["line"]
        assert "9000 fen, not the entry's 10000" in refused.value.detail


class TestThroughTheApi:
    @pytest.mark.parametrize("version", camt_samples.VERSIONS)
    async def test_each_version_is_matched_and_reported(
        self, client: httpx.AsyncClient, session: AsyncSession, version: str
    ) -> None:
        shop = await desk(client, session)
        deposits = [await shop.deposit() for _ in range(4)]
        a, b, c, d = (Payment(x.payment_reference, x.bank_transaction_id, x.amount) for x in deposits)
        xml = camt_samples.document(
            version, BANK_ACCOUNT_NUMBER, today(), own_reference=a, refs_only=b, batch=(c, d), fee_fen=FEE
        )
        (out,) = (await send_camt(client, shop.bank, xml))["statements"]
        assert out["outcome"] == "created" and out["escrow_account_id"] == shop.account_id
        assert out["line_count"] == 5 and out["credits"]["amount"] == 4 * a.fen and out["debits"]["amount"] == FEE
        assert out["lines"] == {"matched": 4, "amount_mismatch": 0, "not_in_ledger": 1}
        assert out["closing"]["difference"]["amount"] == -FEE  # the fee the ledger doesn't know, and nothing else
        read = await lines(client, shop.regulator, out["id"])
        assert [(x["bank_transaction_id"], x["outcome"], x["matched_by"]) for x in read] == [
            (a.bank_transaction_id, "matched", "service_reference"),
            (b.bank_transaction_id, "matched", "bank_reference"),
            (c.end_to_end_id, "matched", "service_reference"),
            (d.end_to_end_id, "matched", "service_reference"),
            (f"FEE-{version}-{today():%Y%m%d}", "not_in_ledger", None),
        ]
