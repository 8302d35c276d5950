-- Console accounts: credentials and sessions (owner: auth), and what billing needs for
-- sign-up and the operator pages. Amounts are integer micro-credits, as in 0001.

-- A console account is the credentials of one billing user. `user_id` stays NULL while a
-- registration is under way (see services/auth/accounts.py): such an account cannot sign
-- in, and finishing the registration again attaches the one user billing made for it.
CREATE TABLE accounts (
    id             bigserial PRIMARY KEY,
    email          text        NOT NULL,
    password_hash  text        NOT NULL,          -- argon2id, with its parameters and salt
    user_id        bigint      UNIQUE REFERENCES users (id),
    role           text        NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'operator')),
    failed_logins  integer     NOT NULL DEFAULT 0,
    locked_until   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accounts_email ON accounts (lower(email));

-- Signed-in browsers. The cookie's token is stored only as its SHA-256 (it has 256 bits
-- of entropy); the CSRF token is stored as is, because the page must be given it again.
CREATE TABLE sessions (
    token_hash  bytea PRIMARY KEY,
    account_id  bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    csrf_token  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_account ON sessions (account_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- The chat page spends through a key of the user's own, marked `web`: it is billed like
-- any key, but has no plaintext anyone holds, so only a session can use it.
ALTER TABLE api_keys ADD COLUMN web boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX api_keys_one_web ON api_keys (user_id) WHERE web AND revoked_at IS NULL;

-- A sign-up is idempotent by its reference: a registration retried after a failure
-- half way finds the user (and the one grant) made the first time.
ALTER TABLE users ADD COLUMN signup_ref text UNIQUE;
CREATE INDEX users_name ON users (lower(name) text_pattern_ops);
