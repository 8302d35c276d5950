-- Single-use tokens mailed to an account's owner (password reset; address verification),
-- stored only as their SHA-256 (they carry 256 bits). Owner: auth.
CREATE TABLE account_tokens (
    token_hash  bytea PRIMARY KEY,
    account_id  bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    purpose     text        NOT NULL CHECK (purpose IN ('reset', 'verify')),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_tokens_account ON account_tokens (account_id, purpose);
