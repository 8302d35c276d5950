-- chatkore's schema. Amounts are integer micro-credits (1 credit = 1,000,000).
-- Owners: billing (users, models, requests, key_spend, ledger, topups, redeem_codes),
-- auth (api_keys), inference (channels).

-- Accounts. `balance` is spendable now; `held` is set aside by open holds.
CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    name        text        NOT NULL,
    balance     bigint      NOT NULL DEFAULT 0 CHECK (balance >= 0),
    held        bigint      NOT NULL DEFAULT 0 CHECK (held >= 0),
    disabled    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys, stored only as a SHA-256 of the key (keys carry 256 bits of entropy,
-- so a fast hash cannot be brute-forced); `hint` is "sk-abcd...wxyz" for display.
CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    user_id       bigint      NOT NULL REFERENCES users (id),
    key_hash      bytea       NOT NULL UNIQUE,
    hint          text        NOT NULL,
    name          text        NOT NULL DEFAULT '',
    models        text[]      NOT NULL DEFAULT '{}',
    credit_limit  bigint      NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    expires_at    timestamptz,
    rpm           integer     NOT NULL DEFAULT 0 CHECK (rpm >= 0),
    tpm           integer     NOT NULL DEFAULT 0 CHECK (tpm >= 0),
    ips           cidr[]      NOT NULL DEFAULT '{}',
    revoked_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- The price list, and each model's limits used to size the worst case of a call.
CREATE TABLE models (
    model              text PRIMARY KEY,
    prompt_price       bigint      NOT NULL CHECK (prompt_price >= 0),      -- per 1,000 tokens
    completion_price   bigint      NOT NULL CHECK (completion_price >= 0),  -- per 1,000 tokens
    min_charge         bigint      NOT NULL DEFAULT 0 CHECK (min_charge >= 0),
    context_window     integer     NOT NULL DEFAULT 8192,
    max_output_tokens  integer     NOT NULL DEFAULT 4096,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

INSERT INTO models (model, prompt_price, completion_price, min_charge, context_window, max_output_tokens) VALUES
    ('gpt-3.5-turbo',           1500000,   2000000, 0,   16385,  4096),
    ('gpt-3.5-turbo-0613',      1500000,   2000000, 0,    4096,  4096),
    ('gpt-3.5-turbo-16k',       3000000,   4000000, 0,   16385,  4096),
    ('gpt-3.5-turbo-16k-0613',  3000000,   4000000, 0,   16385,  4096),
    ('gpt-3.5-turbo-instruct',  1500000,   2000000, 0,    4096,  4096),
    ('gpt-4',                  30000000,  60000000, 0,    8192,  8192),
    ('gpt-4-0613',             30000000,  60000000, 0,    8192,  8192),
    ('gpt-4o',                  2500000,  10000000, 0,  128000, 16384),
    ('gpt-4o-mini',              150000,    600000, 0,  128000, 16384),
    ('text-embedding-ada-002',   250000,         0, 4000000, 8191,  0);

-- One row per billed call: its hold while it runs, then what it cost (the usage row).
CREATE TABLE requests (
    request_id        text PRIMARY KEY,
    user_id           bigint      NOT NULL REFERENCES users (id),
    key_id            bigint      NOT NULL,
    model             text        NOT NULL,
    channel_id        bigint,
    hold              bigint      NOT NULL CHECK (hold >= 0),
    prompt_price      bigint      NOT NULL,
    completion_price  bigint      NOT NULL,
    min_charge        bigint      NOT NULL,
    state             text        NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'settled', 'released')),
    status            text,        -- how the call ended: complete, client_gone, upstream_error, expired, ...
    usage_source      text,        -- upstream or counted
    prompt_tokens     integer     NOT NULL DEFAULT 0,
    completion_tokens integer     NOT NULL DEFAULT 0,
    credits           bigint      NOT NULL DEFAULT 0 CHECK (credits >= 0 AND credits <= hold),
    created_at        timestamptz NOT NULL DEFAULT now(),
    deadline          timestamptz NOT NULL,
    settled_at        timestamptz
);
CREATE INDEX requests_open ON requests (deadline) WHERE state = 'held';
CREATE INDEX requests_user ON requests (user_id, created_at DESC);
CREATE INDEX requests_created ON requests (created_at DESC);

-- Spend per API key, kept only for keys with a credit_limit.
CREATE TABLE key_spend (
    key_id  bigint PRIMARY KEY,
    spent   bigint NOT NULL DEFAULT 0 CHECK (spent >= 0),
    held    bigint NOT NULL DEFAULT 0 CHECK (held >= 0)
);

-- Double-entry ledger: every movement is two entries of one `movement` that sum to zero.
-- User accounts: available (users.balance) and held (users.held); house accounts
-- (user_id NULL): funding (where granted credits come from) and revenue.
CREATE SEQUENCE ledger_movement_seq;
CREATE TABLE ledger (
    id          bigserial PRIMARY KEY,
    movement    bigint      NOT NULL,
    kind        text        NOT NULL,  -- grant, topup, redeem, hold, charge, release
    ref         text        NOT NULL,  -- request id, top-up reference, code id
    user_id     bigint,
    account     text        NOT NULL CHECK (account IN ('available', 'held', 'funding', 'revenue')),
    amount      bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((user_id IS NULL) = (account IN ('funding', 'revenue')))
);
CREATE INDEX ledger_user_account ON ledger (user_id, account);
CREATE INDEX ledger_movement ON ledger (movement);

CREATE TABLE topups (
    reference   text PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id),
    credits     bigint      NOT NULL CHECK (credits > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Redeem codes are stored as a hash, like API keys.
CREATE TABLE redeem_codes (
    id           bigserial PRIMARY KEY,
    code_hash    bytea       NOT NULL UNIQUE,
    credits      bigint      NOT NULL CHECK (credits > 0),
    redeemed_by  bigint REFERENCES users (id),
    redeemed_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Upstream channels. The upstream key is encrypted at rest (AES-GCM, key derived
-- from CHATKORE_SECRET_KEY); `key_hint` is its masked form for listings.
CREATE TABLE channels (
    id           bigserial PRIMARY KEY,
    name         text        NOT NULL,
    type         text        NOT NULL DEFAULT 'openai',
    base_url     text        NOT NULL,
    api_key_enc  bytea       NOT NULL,
    key_hint     text        NOT NULL,
    models       text[]      NOT NULL,
    model_map    jsonb       NOT NULL DEFAULT '{}',
    priority     integer     NOT NULL DEFAULT 0,
    weight       integer     NOT NULL DEFAULT 1 CHECK (weight >= 0),
    enabled      boolean     NOT NULL DEFAULT true,
    settings     jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
