-- Failed console sign-ins counted per (email, address), not per account: a stranger's guesses
-- lock only that stranger's address out of that email, never the owner (or an operator) out of
-- their account; and an email with no account locks the same way, so a lock tells nothing about
-- which emails exist (services/auth/accounts.py). Rows for unknown emails are kept only while
-- they matter (store.record_failed_login deletes stale ones).
CREATE TABLE login_failures (
    email           text        NOT NULL,  -- lower-cased, as typed, account or not
    address         text        NOT NULL,  -- the client's address, as the edge saw it
    failures        integer     NOT NULL,  -- wrong passwords in a row, the last within the lock time
    locked_until    timestamptz,
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (email, address)
);
CREATE INDEX login_failures_last ON login_failures (last_failed_at);

-- The lock per account is gone: lift any it left.
UPDATE accounts SET failed_logins = 0, locked_until = NULL WHERE locked_until IS NOT NULL OR failed_logins <> 0;
