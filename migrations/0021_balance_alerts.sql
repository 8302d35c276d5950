-- Low-balance alerts (owner: billing). A user's threshold in micro-credits, compared with what
-- the user owns (balance + held, so a hold in flight is no crossing; a settlement is). `armed`
-- is true while the alert may fire: a periodic check (services/billing/alerts.py) disarms it
-- as it reports a crossing and re-arms it once the balance is back at or above the threshold.
-- No trigger and nothing on the settlement path: the check reads committed balances.
CREATE TABLE balance_alerts (
    user_id     bigint      PRIMARY KEY REFERENCES users (id),
    threshold   bigint      NOT NULL CHECK (threshold >= 0),
    armed       boolean     NOT NULL DEFAULT true,
    lang        text        NOT NULL DEFAULT 'en',
    fired_at    timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX balance_alerts_armed ON balance_alerts (user_id) WHERE armed AND threshold > 0;
