-- Refunds that stick, debts that are collected, invite rewards that follow their order
-- (owner: billing; issue 12's review).
--
-- Orders. A refund that arrives before the payment is credited stays on the pending order
-- (`refunded`): the completion then credits only the rest, and nothing after a full refund
-- (the order is `refunded` without ever being paid). `closed`: Alipay closed the trade
-- unpaid (TRADE_CLOSED); it is never credited. `credited`: what the payment credited.
-- `inviter`/`invite_reward`: the reward its payment gave (the invitee's first paid order);
-- `invite_reversed`: how much of it refunds have taken back, in proportion.
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN ('pending', 'paid', 'refunded', 'closed'));
ALTER TABLE orders ADD COLUMN credited bigint NOT NULL DEFAULT 0 CHECK (credited >= 0);
ALTER TABLE orders ADD COLUMN inviter bigint REFERENCES users (id);
ALTER TABLE orders ADD COLUMN invite_reward bigint NOT NULL DEFAULT 0 CHECK (invite_reward >= 0);
ALTER TABLE orders ADD COLUMN invite_reversed bigint NOT NULL DEFAULT 0
    CHECK (invite_reversed >= 0 AND invite_reversed <= invite_reward);
UPDATE orders SET credited = credits WHERE paid_at IS NOT NULL;
UPDATE orders o SET inviter = t.user_id, invite_reward = t.credits
FROM topups t
WHERE t.reference = 'invite:' || o.user_id
  AND o.id = (SELECT f.id FROM orders f WHERE f.user_id = o.user_id AND f.paid_at IS NOT NULL
              ORDER BY f.paid_at, f.id LIMIT 1);

ALTER TABLE payment_notifications DROP CONSTRAINT payment_notifications_verdict_check;
ALTER TABLE payment_notifications ADD CONSTRAINT payment_notifications_verdict_check
    CHECK (verdict IN ('credited', 'duplicate', 'refunded', 'closed', 'ignored', 'refused'));

-- Debts. What a refund (or an invite reward's reversal) cannot take from the balance is
-- `users.owed`, and in the ledger the user's `owed` account goes negative by as much (the
-- movement is whole: available -taken, owed -rest, funding +due). Whenever the balance
-- rises while something is owed — a top-up, a paid order, a redeem code, a hold released —
-- the debt is collected first, in the same statement (the trigger below), as a `collect`
-- movement: available -k, owed +k. So a debt and a positive balance never coexist.
ALTER TABLE users ADD COLUMN owed bigint NOT NULL DEFAULT 0 CHECK (owed >= 0);
ALTER TABLE ledger DROP CONSTRAINT ledger_account_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_account_check
    CHECK (account IN ('available', 'held', 'funding', 'revenue', 'owed'));

-- Before this, the owed part of a refund was only noted on its order: make it a debt.
WITH debt AS (
    SELECT user_id, sum(owed)::bigint AS owed FROM orders WHERE owed > 0 GROUP BY user_id
), u AS (
    UPDATE users SET owed = debt.owed FROM debt WHERE users.id = debt.user_id
    RETURNING users.id, debt.owed, nextval('ledger_movement_seq') AS mv
)
INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
SELECT u.mv, 'refund', 'owed:' || u.id, e.user_id, e.account, e.amount
FROM u, LATERAL (VALUES (u.id, 'owed', -u.owed), (NULL::bigint, 'funding', u.owed)) AS e(user_id, account, amount);

CREATE FUNCTION collect_owed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k bigint := LEAST(NEW.owed, NEW.balance);
    mv bigint := nextval('ledger_movement_seq');
BEGIN
    NEW.balance := NEW.balance - k;
    NEW.owed := NEW.owed - k;
    INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
    VALUES (mv, 'collect', 'owed:' || NEW.id, NEW.id, 'available', -k),
           (mv, 'collect', 'owed:' || NEW.id, NEW.id, 'owed', k);
    RETURN NEW;
END
$$;

-- Debts recorded above that the balance can already pay.
WITH c AS (
    SELECT id, LEAST(owed, balance) AS k, nextval('ledger_movement_seq') AS mv
    FROM users WHERE owed > 0 AND balance > 0
), u AS (
    UPDATE users SET balance = users.balance - c.k, owed = users.owed - c.k FROM c WHERE users.id = c.id
    RETURNING c.id, c.k, c.mv
)
INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
SELECT u.mv, 'collect', 'owed:' || u.id, u.id, e.account, e.amount
FROM u, LATERAL (VALUES ('available', -u.k), ('owed', u.k)) AS e(account, amount);

CREATE TRIGGER users_collect_owed BEFORE UPDATE OF balance ON users
    FOR EACH ROW WHEN (NEW.owed > 0 AND NEW.balance > OLD.balance AND NEW.balance > 0)
    EXECUTE FUNCTION collect_owed();
