-- Money in: payment orders, every provider notification about them, and invites (owner:
-- billing). Amounts: `amount` in the currency's minor unit (fen, cents); credits in
-- micro-credits, as everywhere.

-- An order is credited exactly once: the UPDATE that moves it from pending to paid, the
-- top-up (its reference is `order:<id>`) and their ledger entries commit together.
-- `pending` past `expires_at` reads as expired; a provider that still reports it paid
-- (the money did arrive) still credits it.
CREATE TABLE orders (
    id            text PRIMARY KEY,  -- ord_ + 24 hex: Alipay's out_trade_no, Stripe's client_reference_id
    user_id       bigint      NOT NULL REFERENCES users (id),
    provider      text        NOT NULL CHECK (provider IN ('alipay', 'stripe', 'demo')),
    currency      text        NOT NULL CHECK (currency IN ('CNY', 'USD')),
    amount        bigint      NOT NULL CHECK (amount > 0),
    credits       bigint      NOT NULL CHECK (credits > 0),
    status        text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid', 'refunded')),
    pay_url       text        NOT NULL DEFAULT '',
    qr_code       text        NOT NULL DEFAULT '',
    provider_ref  text        NOT NULL DEFAULT '',  -- Alipay's trade_no; Stripe's checkout session, then payment intent
    refunded      bigint      NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= credits),  -- credits refunds reversed
    owed          bigint      NOT NULL DEFAULT 0 CHECK (owed >= 0 AND owed <= refunded),  -- of those, not in the balance
    review        boolean     NOT NULL DEFAULT false,
    review_note   text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    paid_at       timestamptz
);
CREATE INDEX orders_user ON orders (user_id, created_at DESC);
CREATE INDEX orders_created ON orders (created_at DESC);
CREATE INDEX orders_provider_ref ON orders (provider_ref) WHERE provider_ref <> '';

-- Every notification a provider sent, accepted or not, for the operator: never its
-- signature, keys or raw body, only what it claimed and what chatkore made of it.
CREATE TABLE payment_notifications (
    id           bigserial PRIMARY KEY,
    provider     text        NOT NULL,
    order_id     text        NOT NULL DEFAULT '',  -- as the notification named it
    event        text        NOT NULL DEFAULT '',  -- Alipay's trade_status, Stripe's event type
    verdict      text        NOT NULL CHECK (verdict IN ('credited', 'duplicate', 'refunded', 'ignored', 'refused')),
    reason       text        NOT NULL DEFAULT '',
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_notifications_order ON payment_notifications (order_id, id);

-- Invites: a user's code, who invited whom (set once, at sign-up), and whether the
-- inviter has had the reward for this invitee's first paid order.
ALTER TABLE users ADD COLUMN invite_code text UNIQUE;
ALTER TABLE users ADD COLUMN invited_by bigint REFERENCES users (id);
ALTER TABLE users ADD COLUMN invite_rewarded boolean NOT NULL DEFAULT false;
