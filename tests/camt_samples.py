"""camt.053 documents shaped like real banks' (modelled on the fixtures of open-source camt parsers, versions
camt.053.001.02 to .08), in CNY: indented, group header with a recipient, balances OPBD (or PRCD) and CLBD, entries
with and without their own AcctSvcrRef, references only in NtryDtls/TxDtls/Refs, amounts written with 3 to 5
decimals, booking dates as DtTm, a batch entry of two payments, a fee known only by the bank's ids."""

from dataclasses import dataclass
from datetime import date

VERSIONS = ("02", "03", "04", "05", "06", "07", "08")


@dataclass
class Payment:
    end_to_end_id: str
    bank_transaction_id: str
    fen: int


def yuan(fen: int, decimals: int = 2) -> str:
    """``fen`` in yuan with ``decimals`` (≥ 2) fraction digits, as banks write them: 100000 → ``1000.000``."""
    return f"{fen // 100}.{fen % 100:02d}" + "0" * (decimals - 2)


def _status(version: str) -> str:
    return "<Sts><Cd>BOOK</Cd></Sts>" if version >= "08" else "<Sts>BOOK</Sts>"


def _bic(version: str) -> str:
    return "AnyBIC" if version >= "05" else "BICOrBEI"


def _balance(code: str, fen: int, day: date, decimals: int) -> str:
    return f"""
            <Bal>
                <Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp>
                <Amt Ccy="CNY">{yuan(abs(fen), decimals)}</Amt>
                <CdtDbtInd>{"CRDT" if fen >= 0 else "DBIT"}</CdtDbtInd>
                <Dt><Dt>{day.isoformat()}</Dt></Dt>
            </Bal>"""


def _tx_amount(version: str, fen: int) -> str:
    """A batch transaction's amount: ``AmtDtls/TxAmt/Amt`` in .02/.03, ``Amt`` and ``CdtDbtInd`` from .04."""
    if version < "04":
        return f'<AmtDtls><TxAmt><Amt Ccy="CNY">{yuan(fen)}</Amt></TxAmt></AmtDtls>'
    return f'<Amt Ccy="CNY">{yuan(fen, 3)}</Amt><CdtDbtInd>CRDT</CdtDbtInd>'


def document(
    version: str,
    account: str,
    day: date,
    *,
    own_reference: Payment,
    refs_only: Payment,
    batch: tuple[Payment, Payment],
    fee_fen: int,
    opening_fen: int = 0,
) -> bytes:
    """A statement of ``day``: a deposit quoting its end-to-end id with the entry's AcctSvcrRef, a deposit with its
    references only in TxDtls/Refs (EndToEndId NOTPROVIDED), a batch entry of two deposits, and a fee."""
    credits = own_reference.fen + refs_only.fen + batch[0].fen + batch[1].fen
    closing = opening_fen + credits - fee_fen
    opening_code = "PRCD" if version == "03" else "OPBD"
    when = f"{day.isoformat()}T10:15:00+08:00"
    balances = "".join(
        _balance(code, fen, day, decimals)
        for code, fen, decimals in ((opening_code, opening_fen, 3), ("CLBD", closing, 5), ("CLAV", closing, 2))
    )
    batch_details = "".join(
        f"""
                    <TxDtls>
                        <Refs><MsgId>B2C-{n}</MsgId><EndToEndId>{p.end_to_end_id}</EndToEndId></Refs>
                        {_tx_amount(version, p.fen)}
                        <RltdPties><Dbtr><Nm>消费者 {n}</Nm></Dbtr></RltdPties>
                        <RmtInf><Ustrd>预付卡 {n}</Ustrd></RmtInf>
                    </TxDtls>"""
        for n, p in enumerate(batch, start=1)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
          xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.{version}">
    <BkToCstmrStmt>
        <GrpHdr>
            <MsgId>CAMT053CNY{version}0001</MsgId>
            <CreDtTm>{day.isoformat()}T23:50:29.000000000</CreDtTm>
            <MsgRcpt>
                <Nm>铁馆健身</Nm>
                <Id><OrgId><{_bic(version)}>NBCBCNBJ</{_bic(version)}><Othr><Id>91350100M000100Y43</Id></Othr></OrgId></Id>
            </MsgRcpt>
            <MsgPgntn><PgNb>1</PgNb><LastPgInd>true</LastPgInd></MsgPgntn>
        </GrpHdr>
        <Stmt>
            <Id>{day.strftime("%Y%m%d")}-{version}</Id>
            <ElctrncSeqNb>12312</ElctrncSeqNb>
            <CreDtTm>{day.isoformat()}T23:50:29+08:00</CreDtTm>
            <FrToDt><FrDtTm>{day.isoformat()}T00:00:00+08:00</FrDtTm><ToDtTm>{day.isoformat()}T23:59:59+08:00</ToDtTm></FrToDt>
            <Acct>
                <Id><Othr><Id>{account}</Id></Othr></Id>
                <Ccy>CNY</Ccy>
                <Ownr><Nm>铁馆健身 预付资金托管户</Nm></Ownr>
                <Svcr><FinInstnId><{_bic(version)}>NBCBCNBJ</{_bic(version)}></FinInstnId></Svcr>
            </Acct>{balances}
            <TxsSummry><TtlNtries><NbOfNtries>4</NbOfNtries></TtlNtries></TxsSummry>
            <Ntry>
                <Amt Ccy="CNY">{yuan(own_reference.fen, 3)}</Amt>
                <CdtDbtInd>CRDT</CdtDbtInd>
                <RvslInd>false</RvslInd>
                {_status(version)}
                <BookgDt><Dt>{day.isoformat()}</Dt></BookgDt>
                <ValDt><Dt>{day.isoformat()}</Dt></ValDt>
                <AcctSvcrRef>{own_reference.bank_transaction_id}</AcctSvcrRef>
                <BkTxCd><Prtry><Cd>544</Cd></Prtry></BkTxCd>
                <NtryDtls>
                    <TxDtls>
                        <Refs><EndToEndId>{own_reference.end_to_end_id}</EndToEndId></Refs>
                        <RmtInf><Ustrd>预付卡 充值</Ustrd></RmtInf>
                    </TxDtls>
                </NtryDtls>
            </Ntry>
            <Ntry>
                <Amt Ccy="CNY">{yuan(refs_only.fen, 5)}</Amt>
                <CdtDbtInd>CRDT</CdtDbtInd>
                {_status(version)}
                <BookgDt><DtTm>{when}</DtTm></BookgDt>
                <ValDt><DtTm>{when}</DtTm></ValDt>
                <BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd><SubFmlyCd>BOOK</SubFmlyCd></Fmly></Domn></BkTxCd>
                <NtryDtls>
                    <TxDtls>
                        <Refs>
                            <MsgId>B2C-MSG-7</MsgId>
                            <AcctSvcrRef>{refs_only.bank_transaction_id}</AcctSvcrRef>
                            <EndToEndId>NOTPROVIDED</EndToEndId>
                        </Refs>
                    </TxDtls>
                </NtryDtls>
                <AddtlNtryInf>网银转账</AddtlNtryInf>
            </Ntry>
            <Ntry>
                <Amt Ccy="CNY">{yuan(batch[0].fen + batch[1].fen, 3)}</Amt>
                <CdtDbtInd>CRDT</CdtDbtInd>
                {_status(version)}
                <BookgDt><DtTm>{when}</DtTm></BookgDt>
                <ValDt><Dt>{day.isoformat()}</Dt></ValDt>
                <NtryDtls>
                    <Btch><NbOfTxs>2</NbOfTxs></Btch>{batch_details}
                </NtryDtls>
            </Ntry>
            <Ntry>
                <Amt Ccy="CNY">{yuan(fee_fen, 4)}</Amt>
                <CdtDbtInd>DBIT</CdtDbtInd>
                {_status(version)}
                <BookgDt><Dt>{day.isoformat()}</Dt></BookgDt>
                <ValDt><Dt>{day.isoformat()}</Dt></ValDt>
                <NtryDtls><TxDtls><Refs><PmtInfId>FEE-{version}-{day.strftime("%Y%m%d")}</PmtInfId></Refs></TxDtls></NtryDtls>
                <AddtlNtryInf>账户管理费</AddtlNtryInf>
            </Ntry>
            <AddtlStmtInf>宁波银行 对账单</AddtlStmtInf>
        </Stmt>
    </BkToCstmrStmt>
</Document>
""".encode()
