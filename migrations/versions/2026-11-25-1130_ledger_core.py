"""Ledger core: books, accounts, entries, postings, seals; balance, append-only and non-negative rules in SQL.

Revision ID: 0002_ledger_core
Revises: 0001_idempotency
Create Date: 2026-11-25 11:30
"""

from collections.abc import Sequence

from alembic import op

from escrow.migrate import run_script

revision: str = "0002_ledger_core"
down_revision: str | None = "0001_idempotency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AVAILABLE = """CASE {t}.normal_side
        WHEN 'C' THEN {t}.posted_credits - {t}.posted_debits - {t}.pending_debits
        ELSE {t}.posted_debits - {t}.posted_credits - {t}.pending_credits END"""

UPGRADE = r"""
CREATE TABLE ledger_books (
    escrow_account_id text PRIMARY KEY CHECK (escrow_account_id ~ '^[A-Za-z0-9_]{1,64}$'),
    frozen text NOT NULL DEFAULT 'none' CHECK (frozen IN ('none', 'debits', 'all')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    escrow_account_id text NOT NULL REFERENCES ledger_books,
    code text NOT NULL CHECK (code ~ '^[a-z][a-z_]*(:[A-Za-z0-9_]+)?$' AND length(code) <= 100),
    normal_side char(1) NOT NULL CHECK (normal_side IN ('D', 'C')),
    currency char(3) NOT NULL DEFAULT 'CNY' CHECK (currency = 'CNY'),
    non_negative boolean NOT NULL,
    frozen text NOT NULL DEFAULT 'none' CHECK (frozen IN ('none', 'debits', 'all')),
    -- running totals in fen of the movements that had to lock this row (see ledger_account_slots)
    posted_debits bigint NOT NULL DEFAULT 0,
    posted_credits bigint NOT NULL DEFAULT 0,
    pending_debits bigint NOT NULL DEFAULT 0,
    pending_credits bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_ledger_accounts_code UNIQUE (escrow_account_id, code),
    CONSTRAINT uq_ledger_accounts_kind UNIQUE (id, normal_side, non_negative),
    CONSTRAINT uq_ledger_accounts_book UNIQUE (id, escrow_account_id)
);

-- Movements that can only raise an account's available balance are added to one of a few slot rows chosen by
-- the backend, so concurrent credits to a busy account do not queue on one row lock.
CREATE TABLE ledger_account_slots (
    account_id bigint NOT NULL,
    slot smallint NOT NULL CHECK (slot BETWEEN 1 AND 64),
    escrow_account_id text NOT NULL,
    normal_side char(1) NOT NULL,
    non_negative boolean NOT NULL,
    posted_debits bigint NOT NULL DEFAULT 0,
    posted_credits bigint NOT NULL DEFAULT 0,
    pending_debits bigint NOT NULL DEFAULT 0,
    pending_credits bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, slot),
    FOREIGN KEY (account_id, normal_side, non_negative)
        REFERENCES ledger_accounts (id, normal_side, non_negative),
    -- every delta written to a slot is non-decreasing, so a slot's own available balance never drops below 0
    CONSTRAINT ck_ledger_account_slots_only_raises CHECK (NOT non_negative OR (@slot_available@) >= 0)
);

CREATE SEQUENCE ledger_entries_id_seq;
CREATE TABLE ledger_entries (
    id bigint PRIMARY KEY DEFAULT nextval('ledger_entries_id_seq'),
    escrow_account_id text NOT NULL REFERENCES ledger_books,
    kind text NOT NULL CHECK (kind ~ '^[a-z][a-z_]{0,62}$'),
    type text NOT NULL CHECK (type IN ('posted', 'pending', 'post_pending', 'void_pending', 'expire_pending')),
    pending_id bigint REFERENCES ledger_entries,
    expires_at timestamptz,
    refs jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(refs) = 'object'),
    principal text,
    idempotency_ref text,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    business_date date NOT NULL,
    xid xid8 NOT NULL,
    CONSTRAINT ck_ledger_entries_resolution CHECK ((type IN ('post_pending', 'void_pending', 'expire_pending')) = (pending_id IS NOT NULL)),
    CONSTRAINT ck_ledger_entries_expiry CHECK (expires_at IS NULL OR type = 'pending'),
    -- postings reference (id, xid): they can only join an entry written by their own transaction
    CONSTRAINT uq_ledger_entries_id_xid UNIQUE (id, xid)
);
ALTER SEQUENCE ledger_entries_id_seq OWNED BY ledger_entries.id;
-- A pending entry is resolved (posted, voided or expired) at most once.
CREATE UNIQUE INDEX uq_ledger_entries_pending_id ON ledger_entries (pending_id) WHERE pending_id IS NOT NULL;
CREATE UNIQUE INDEX uq_ledger_entries_idempotency_ref ON ledger_entries (escrow_account_id, idempotency_ref)
    WHERE idempotency_ref IS NOT NULL;
CREATE INDEX ix_ledger_entries_book_xid ON ledger_entries (escrow_account_id, xid);
CREATE INDEX ix_ledger_entries_open_expiry ON ledger_entries (expires_at) WHERE type = 'pending' AND expires_at IS NOT NULL;

CREATE TABLE ledger_postings (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id bigint NOT NULL,
    escrow_account_id text NOT NULL,
    account_id bigint NOT NULL,
    side char(1) NOT NULL CHECK (side IN ('D', 'C')),
    kind text NOT NULL CHECK (kind IN ('posted', 'pending', 'release')),
    amount bigint NOT NULL CONSTRAINT ck_ledger_postings_amount CHECK (amount > 0 AND amount < 1000000000000000),
    xid xid8 NOT NULL,
    CONSTRAINT fk_ledger_postings_entry FOREIGN KEY (entry_id, xid) REFERENCES ledger_entries (id, xid),
    CONSTRAINT fk_ledger_postings_account FOREIGN KEY (account_id, escrow_account_id)
        REFERENCES ledger_accounts (id, escrow_account_id)
);
CREATE INDEX ix_ledger_postings_entry_id ON ledger_postings (entry_id);
CREATE INDEX ix_ledger_postings_account_id ON ledger_postings (account_id, id);

-- Tamper evidence: each seal hashes a book's entries whose transactions ended below a snapshot horizon,
-- chained to the book's previous seal. Sealing runs in batches, so writers never wait for the chain.
CREATE TABLE ledger_seals (
    escrow_account_id text NOT NULL REFERENCES ledger_books,
    seq bigint NOT NULL CHECK (seq >= 1),
    xid_from xid8 NOT NULL,
    xid_to xid8 NOT NULL,
    entry_count bigint NOT NULL,
    digest bytea NOT NULL,
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL,
    sealed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (escrow_account_id, seq)
);

-- Journal rows are append-only: a correction is a new entry.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % refused: ledger journal rows are append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'EL010';
END $$;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_seals_append_only BEFORE UPDATE OR DELETE ON ledger_seals
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_slots_no_delete BEFORE DELETE ON ledger_account_slots
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_books_no_delete BEFORE DELETE ON ledger_books
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_seals_no_truncate BEFORE TRUNCATE ON ledger_seals
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- An account's identity never changes once it exists.
CREATE FUNCTION ledger_accounts_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.escrow_account_id, NEW.code, NEW.normal_side, NEW.currency, NEW.non_negative)
       IS DISTINCT FROM (OLD.escrow_account_id, OLD.code, OLD.normal_side, OLD.currency, OLD.non_negative) THEN
        RAISE EXCEPTION 'ledger account % identity cannot change', OLD.id USING ERRCODE = 'EL010';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_accounts_identity BEFORE UPDATE ON ledger_accounts
    FOR EACH ROW WHEN ((NEW.escrow_account_id, NEW.code, NEW.normal_side, NEW.currency, NEW.non_negative)
                       IS DISTINCT FROM (OLD.escrow_account_id, OLD.code, OLD.normal_side, OLD.currency, OLD.non_negative))
    EXECUTE FUNCTION ledger_accounts_fixed();

-- Constrained accounts never go below zero. A movement that lowers the available balance must update the
-- account row, whose lock makes such movements queue; this trigger (run with the row already locked) adds the
-- slots to the new totals and refuses the update if the account would go below zero.
CREATE FUNCTION ledger_check_non_negative() RETURNS trigger LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_available bigint;
BEGIN
    SELECT (@new_available@) + coalesce(sum(@slot_available_s@), 0) INTO v_available
      FROM ledger_account_slots s WHERE s.account_id = NEW.id;
    IF v_available < 0 THEN
        RAISE EXCEPTION 'insufficient funds in ledger account %/%: available balance would be % fen',
                NEW.escrow_account_id, NEW.code, v_available
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_non_negative',
                  DETAIL = json_build_object('account_id', NEW.id, 'escrow_account_id', NEW.escrow_account_id,
                                             'code', NEW.code, 'available', v_available)::text;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_accounts_non_negative BEFORE UPDATE ON ledger_accounts
    FOR EACH ROW WHEN (NEW.non_negative AND (@new_available@) < (@old_available@))
    EXECUTE FUNCTION ledger_check_non_negative();

-- Slot rows only ever rise: lowering an available balance must go through the locked account row above.
CREATE FUNCTION ledger_refuse_slot_decrease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'slot % of ledger account % may only raise its available balance', NEW.slot, NEW.account_id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_slot_only_raises';
END $$;
CREATE TRIGGER ledger_account_slots_only_raise BEFORE UPDATE ON ledger_account_slots
    FOR EACH ROW WHEN (NEW.non_negative AND (@new_available@) < (@old_available@))
    EXECUTE FUNCTION ledger_refuse_slot_decrease();

-- Entries and postings carry the id of the transaction that wrote them: postings can only join an entry of
-- their own transaction (so the commit-time balance check sees all of an entry's postings), and seals use it.
CREATE FUNCTION ledger_stamp_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.xid := pg_current_xact_id();
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_entries_stamp BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_stamp_xid();
CREATE TRIGGER ledger_postings_stamp BEFORE INSERT ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_stamp_xid();

-- Every entry balances: for each kind of posting, debits equal credits (checked at commit).
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql
-- generic plans: re-planning these statements on every call would cost more than running them
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_count int;
    v_unbalanced text;
BEGIN
    SELECT count(*), string_agg(kind, ', ') FILTER (WHERE d <> c) INTO v_count, v_unbalanced
      FROM (SELECT kind, sum(amount) FILTER (WHERE side = 'D') AS d, sum(amount) FILTER (WHERE side = 'C') AS c,
                   count(*) AS n
              FROM ledger_postings WHERE entry_id = NEW.id GROUP BY kind) per_kind;
    IF v_count = 0 OR v_unbalanced IS NOT NULL OR EXISTS (
        SELECT 1 FROM ledger_postings WHERE entry_id = NEW.id GROUP BY kind
        HAVING count(*) FILTER (WHERE side = 'D') = 0 OR count(*) FILTER (WHERE side = 'C') = 0
            -- each type of entry carries only its kinds of posting
            OR NOT ((kind = 'pending' AND NEW.type = 'pending')
                 OR (kind = 'posted' AND NEW.type IN ('posted', 'post_pending'))
                 OR (kind = 'release' AND NEW.type IN ('post_pending', 'void_pending', 'expire_pending')))) THEN
        RAISE EXCEPTION 'ledger entry % does not balance (%)', NEW.id, coalesce(v_unbalanced, 'missing legs')
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entry_balanced';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

-- Apply legs (account, side, kind, amount) to the account totals, set-based whatever their number: refuse
-- frozen accounts; lock the accounts whose available balance goes down, in id order (so movements never wait
-- on each other in a cycle), and update their rows (where the non-negative trigger checks them); add every
-- other account's change to the caller's slot row.
CREATE FUNCTION ledger_apply(p_books text[], p_account_ids bigint[], p_sides text[], p_kinds text[],
                             p_amounts bigint[])
RETURNS void LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_slot smallint := 1 + (pg_backend_pid() % 16);
    d record;
BEGIN
    -- A freeze takes the escrow account's lock exclusively and waits for movements already under way; a
    -- movement takes it shared, in book order, before it reads the freeze flags in the next statement.
    -- (The lock is split in 8 by backend, so concurrent movements don't queue on one lock-table entry.)
    IF p_books[1] = ALL (p_books) THEN  -- the usual case: one escrow account
        PERFORM pg_advisory_xact_lock_shared(
            hashtextextended('ledger-book:' || p_books[1] || ':' || pg_backend_pid() % 8, 0));
    ELSE
        PERFORM pg_advisory_xact_lock_shared(
                    hashtextextended('ledger-book:' || b.book || ':' || pg_backend_pid() % 8, 0))
           FROM (SELECT DISTINCT book FROM unnest(p_books) AS u(book) ORDER BY 1) b;
    END IF;

    SELECT array_agg(t.id ORDER BY t.id) FILTER (WHERE t.lowers) AS lower_ids,
           array_agg(t.pd ORDER BY t.id) FILTER (WHERE t.lowers) AS lower_pd,
           array_agg(t.pc ORDER BY t.id) FILTER (WHERE t.lowers) AS lower_pc,
           array_agg(t.hd ORDER BY t.id) FILTER (WHERE t.lowers) AS lower_hd,
           array_agg(t.hc ORDER BY t.id) FILTER (WHERE t.lowers) AS lower_hc,
           array_agg(t.id ORDER BY t.id) FILTER (WHERE NOT t.lowers) AS raise_ids,
           array_agg(t.pd ORDER BY t.id) FILTER (WHERE NOT t.lowers) AS raise_pd,
           array_agg(t.pc ORDER BY t.id) FILTER (WHERE NOT t.lowers) AS raise_pc,
           array_agg(t.hd ORDER BY t.id) FILTER (WHERE NOT t.lowers) AS raise_hd,
           array_agg(t.hc ORDER BY t.id) FILTER (WHERE NOT t.lowers) AS raise_hc,
           array_agg(t.book ORDER BY t.id) FILTER (WHERE NOT t.lowers) AS raise_books,
           array_agg(t.normal_side ORDER BY t.id) FILTER (WHERE NOT t.lowers) AS raise_sides,
           array_agg(t.non_negative ORDER BY t.id) FILTER (WHERE NOT t.lowers) AS raise_nn,
           (array_agg(t.book || '/' || t.code || ' (' || t.why || ')' ORDER BY t.id) FILTER (WHERE t.why IS NOT NULL))[1]
               AS frozen
      INTO d
      FROM (SELECT g.*, a.escrow_account_id AS book, a.code, a.normal_side, a.non_negative,
                   a.non_negative AND CASE a.normal_side WHEN 'C' THEN g.pc - g.pd - g.hd
                                                         ELSE g.pd - g.pc - g.hc END < 0 AS lowers,
                   CASE WHEN a.frozen = 'all' OR (g.new_debits AND a.frozen = 'debits') THEN 'account: ' || a.frozen
                        WHEN b.frozen = 'all' OR (g.new_debits AND b.frozen = 'debits') THEN 'escrow account: ' || b.frozen
                   END AS why
              FROM (SELECT u.account_id AS id,
                           coalesce(sum(u.amount) FILTER (WHERE u.side = 'D' AND u.kind = 'posted'), 0) AS pd,
                           coalesce(sum(u.amount) FILTER (WHERE u.side = 'C' AND u.kind = 'posted'), 0) AS pc,
                           coalesce(sum(CASE u.kind WHEN 'pending' THEN u.amount ELSE -u.amount END)
                                    FILTER (WHERE u.side = 'D' AND u.kind <> 'posted'), 0) AS hd,
                           coalesce(sum(CASE u.kind WHEN 'pending' THEN u.amount ELSE -u.amount END)
                                    FILTER (WHERE u.side = 'C' AND u.kind <> 'posted'), 0) AS hc,
                           bool_or(u.side = 'D' AND u.kind <> 'release') AS new_debits
                      FROM unnest(p_account_ids, p_sides, p_kinds, p_amounts) AS u(account_id, side, kind, amount)
                     GROUP BY u.account_id) g
             -- LATERAL ... LIMIT 1: one index probe per account, never a scan of the whole table
             CROSS JOIN LATERAL (SELECT * FROM ledger_accounts WHERE id = g.id LIMIT 1) a
             CROSS JOIN LATERAL (SELECT frozen FROM ledger_books WHERE escrow_account_id = a.escrow_account_id LIMIT 1) b
           ) t;

    IF d.frozen IS NOT NULL THEN
        RAISE EXCEPTION 'ledger account % is frozen', d.frozen USING ERRCODE = 'EL002';
    END IF;

    IF d.lower_ids IS NOT NULL THEN
        IF cardinality(d.lower_ids) > 1 THEN
            PERFORM 1 FROM ledger_accounts WHERE id = ANY (d.lower_ids) ORDER BY id FOR NO KEY UPDATE;
        END IF;
        UPDATE ledger_accounts a
           SET posted_debits = a.posted_debits + u.pd, posted_credits = a.posted_credits + u.pc,
               pending_debits = a.pending_debits + u.hd, pending_credits = a.pending_credits + u.hc
          FROM unnest(d.lower_ids, d.lower_pd, d.lower_pc, d.lower_hd, d.lower_hc) AS u(id, pd, pc, hd, hc)
         WHERE a.id = u.id;
    END IF;

    IF d.raise_ids IS NOT NULL THEN
        INSERT INTO ledger_account_slots AS s (account_id, slot, escrow_account_id, normal_side, non_negative,
                                               posted_debits, posted_credits, pending_debits, pending_credits)
        SELECT u.id, v_slot, u.book, u.side, u.nn, u.pd, u.pc, u.hd, u.hc
          FROM unnest(d.raise_ids, d.raise_books, d.raise_sides, d.raise_nn, d.raise_pd, d.raise_pc, d.raise_hd,
                      d.raise_hc) AS u(id, book, side, nn, pd, pc, hd, hc)
        ON CONFLICT (account_id, slot) DO UPDATE
           SET posted_debits = s.posted_debits + EXCLUDED.posted_debits,
               posted_credits = s.posted_credits + EXCLUDED.posted_credits,
               pending_debits = s.pending_debits + EXCLUDED.pending_debits,
               pending_credits = s.pending_credits + EXCLUDED.pending_credits;
    END IF;
END $$;

-- Write entries of type posted or pending and their legs, given as parallel arrays (legs name their entry by
-- its 1-based position), with one statement each for entries and postings; returns the ids in input order.
CREATE FUNCTION ledger_post_entries(
    p_books text[], p_kinds text[], p_types text[], p_refs jsonb[], p_principals text[], p_idempotency_refs text[],
    p_expires_at timestamptz[], p_leg_entries int[], p_leg_books text[], p_leg_codes text[], p_leg_sides text[],
    p_leg_amounts bigint[], p_tz text)
RETURNS bigint[] LANGUAGE plpgsql
-- generic plans: re-planning these statements on every call would cost more than running them
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_ids bigint[];
    v_accounts bigint[];
    v_kinds text[];
    v_missing int;
BEGIN
    SELECT array_agg(a.id ORDER BY u.k) INTO v_accounts
      FROM unnest(p_leg_books, p_leg_codes) WITH ORDINALITY AS u(book, code, k)
      LEFT JOIN LATERAL (SELECT id FROM ledger_accounts
                          WHERE escrow_account_id = u.book AND code = u.code LIMIT 1) a ON true;
    v_missing := array_position(v_accounts, NULL);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'no ledger account %/%', p_leg_books[v_missing], p_leg_codes[v_missing]
            USING ERRCODE = 'EL001',
                  DETAIL = json_build_object('escrow_account_id', p_leg_books[v_missing],
                                             'code', p_leg_codes[v_missing])::text;
    END IF;

    SELECT array_agg(nextval('ledger_entries_id_seq')) INTO v_ids FROM generate_series(1, cardinality(p_books));
    INSERT INTO ledger_entries (id, escrow_account_id, kind, type, expires_at, refs, principal, idempotency_ref,
                                business_date)
    SELECT v_ids[u.n], u.book, u.kind, u.type, u.expires_at, coalesce(u.refs, '{}'), u.principal, u.idem,
           (now() AT TIME ZONE p_tz)::date
      FROM unnest(p_books, p_kinds, p_types, p_expires_at, p_refs, p_principals, p_idempotency_refs)
           WITH ORDINALITY AS u(book, kind, type, expires_at, refs, principal, idem, n);

    SELECT array_agg(CASE p_types[e] WHEN 'pending' THEN 'pending' ELSE 'posted' END ORDER BY k) INTO v_kinds
      FROM unnest(p_leg_entries) WITH ORDINALITY AS u(e, k);
    INSERT INTO ledger_postings (entry_id, escrow_account_id, account_id, side, kind, amount)
    SELECT v_ids[u.e], u.book, u.account_id, u.side, u.kind, u.amount
      FROM unnest(p_leg_entries, p_leg_books, v_accounts, p_leg_sides, v_kinds, p_leg_amounts)
           WITH ORDINALITY AS u(e, book, account_id, side, kind, amount, k)
     ORDER BY u.k;

    PERFORM ledger_apply(p_leg_books, v_accounts, p_leg_sides, v_kinds, p_leg_amounts);
    RETURN v_ids;
END $$;

-- Post (all or part), void or expire a pending entry, exactly once.
CREATE FUNCTION ledger_resolve_pending(p_pending_id bigint, p_action text, p_amount bigint, p_principal text,
                                       p_refs jsonb, p_idempotency_ref text, p_tz text)
RETURNS bigint LANGUAGE plpgsql
-- generic plans: re-planning these statements on every call would cost more than running them
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_pending ledger_entries%ROWTYPE;
    v_done record;
    v_legs record;
    v_id bigint := nextval('ledger_entries_id_seq');
    v_accounts bigint[];
    v_books text[];
    v_sides text[];
    v_kinds text[];
    v_amounts bigint[];
BEGIN
    SELECT * INTO v_pending FROM ledger_entries WHERE id = p_pending_id FOR UPDATE;
    IF NOT FOUND OR v_pending.type <> 'pending' THEN
        RAISE EXCEPTION 'no pending ledger entry %', p_pending_id USING ERRCODE = 'EL003';
    END IF;
    SELECT id, type INTO v_done FROM ledger_entries WHERE pending_id = p_pending_id;
    IF FOUND AND p_action = 'expire' THEN
        RETURN NULL;  -- resolved meanwhile: nothing left to expire
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'pending ledger entry % was already resolved by entry % (%)', p_pending_id, v_done.id,
                v_done.type
            USING ERRCODE = 'EL004', DETAIL = json_build_object('resolution', v_done.type, 'entry_id', v_done.id)::text;
    END IF;
    IF p_action = 'post' AND v_pending.expires_at IS NOT NULL AND v_pending.expires_at <= now() THEN
        RAISE EXCEPTION 'pending ledger entry % expired at %', p_pending_id, v_pending.expires_at
            USING ERRCODE = 'EL006';
    END IF;
    IF p_action = 'expire' AND (v_pending.expires_at IS NULL OR v_pending.expires_at > now()) THEN
        RAISE EXCEPTION 'pending ledger entry % has not expired', p_pending_id USING ERRCODE = 'EL006';
    END IF;

    SELECT array_agg(account_id ORDER BY id) AS accounts, array_agg(escrow_account_id ORDER BY id) AS books,
           array_agg(side ORDER BY id) AS sides,
           array_agg(amount ORDER BY id) AS amounts,
           sum(amount) FILTER (WHERE side = 'D') AS held, count(*)::int AS n
      INTO v_legs FROM ledger_postings WHERE entry_id = p_pending_id;
    IF p_action = 'post' AND p_amount IS NOT NULL THEN
        IF p_amount = v_legs.held THEN
            p_amount := NULL;  -- the whole hold: every leg posts its own amount
        ELSIF p_amount > v_legs.held OR p_amount <= 0 THEN
            RAISE EXCEPTION 'cannot post % fen of pending ledger entry % holding % fen', p_amount, p_pending_id,
                    v_legs.held
                USING ERRCODE = 'EL005', DETAIL = json_build_object('held', v_legs.held)::text;
        ELSIF v_legs.n <> 2 THEN
            RAISE EXCEPTION 'pending ledger entry % has % legs: only a single debit/credit pair can be posted in part',
                p_pending_id, v_legs.n USING ERRCODE = 'EL007';
        END IF;
    END IF;

    INSERT INTO ledger_entries (id, escrow_account_id, kind, type, pending_id, refs, principal, idempotency_ref,
                                business_date)
    VALUES (v_id, v_pending.escrow_account_id, v_pending.kind, p_action || '_pending', p_pending_id,
            coalesce(p_refs, '{}'::jsonb), p_principal, p_idempotency_ref, (now() AT TIME ZONE p_tz)::date);

    -- every held leg is released; a post then books each leg (or the partial amount of the single pair)
    v_accounts := v_legs.accounts;
    v_books := v_legs.books;
    v_sides := v_legs.sides;
    v_amounts := v_legs.amounts;
    v_kinds := array_fill('release'::text, ARRAY[v_legs.n]);
    IF p_action = 'post' THEN
        v_accounts := v_accounts || v_legs.accounts;
        v_books := v_books || v_legs.books;
        v_sides := v_sides || v_legs.sides;
        v_amounts := v_amounts || CASE WHEN p_amount IS NULL THEN v_legs.amounts
                                       ELSE array_fill(p_amount, ARRAY[v_legs.n]) END;
        v_kinds := v_kinds || array_fill('posted'::text, ARRAY[v_legs.n]);
    END IF;
    INSERT INTO ledger_postings (entry_id, escrow_account_id, account_id, side, kind, amount)
    SELECT v_id, u.book, u.account_id, u.side, u.kind, u.amount
      FROM unnest(v_books, v_accounts, v_sides, v_kinds, v_amounts)
           WITH ORDINALITY AS u(book, account_id, side, kind, amount, k)
     ORDER BY u.k;

    PERFORM ledger_apply(v_books, v_accounts, v_sides, v_kinds, v_amounts);
    RETURN v_id;
END $$;
"""

DOWNGRADE = """
DROP FUNCTION ledger_resolve_pending(bigint, text, bigint, text, jsonb, text, text);
DROP FUNCTION ledger_post_entries(text[], text[], text[], jsonb[], text[], text[], timestamptz[], int[], text[], text[],
                                 text[], bigint[], text);
DROP FUNCTION ledger_apply(text[], bigint[], text[], text[], bigint[]);
DROP TABLE ledger_seals;
DROP TABLE ledger_postings;
DROP TABLE ledger_entries;
DROP TABLE ledger_account_slots;
DROP TABLE ledger_accounts;
DROP TABLE ledger_books;
DROP FUNCTION ledger_check_balanced();
DROP FUNCTION ledger_stamp_xid();
DROP FUNCTION ledger_check_non_negative();
DROP FUNCTION ledger_refuse_slot_decrease();
DROP FUNCTION ledger_accounts_fixed();
DROP FUNCTION ledger_refuse_change();
"""


def upgrade() -> None:
    sql = UPGRADE
    for name, table in {
        "slot_available_s": "s",
        "slot_available": "ledger_account_slots",
        "new_available": "NEW",
        "old_available": "OLD",
    }.items():
        sql = sql.replace(f"@{name}@", AVAILABLE.format(t=table))
    run_script(op.get_bind(), sql)


def downgrade() -> None:
    run_script(op.get_bind(), DOWNGRADE)
