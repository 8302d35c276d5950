-- Every token the upstream bills is paid for (issue 11).
--
-- Price rows gain the prices of cached prompt tokens and of cache writes (NULL: the prompt
-- price), and the multipliers of the upstream's dearer ways to run a call: `tiers` by
-- service_tier ({"priority": 2.0}), `features` by costly option ({"audio": 4.0,
-- "web_search": 1.5, "prediction": 1.0}). A tier or feature missing from the row is refused.
ALTER TABLE models
    ADD COLUMN cached_prompt_price bigint CHECK (cached_prompt_price >= 0),
    ADD COLUMN cache_write_price   bigint CHECK (cache_write_price >= 0),
    ADD COLUMN tiers               jsonb  NOT NULL DEFAULT '{}',
    ADD COLUMN features            jsonb  NOT NULL DEFAULT '{}';

-- A call keeps the prices it was held at (multipliers applied), and its usage row says
-- how many prompt tokens were cache reads and writes, how many completion tokens were
-- reasoning, what the balance could not pay (`unpaid_credits`), and whether it was
-- settled after the sweeper had released its hold (`late`).
ALTER TABLE requests
    ADD COLUMN cached_prompt_price   bigint,
    ADD COLUMN cache_write_price     bigint,
    ADD COLUMN cached_prompt_tokens  integer NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_tokens    integer NOT NULL DEFAULT 0,
    ADD COLUMN reasoning_tokens      integer NOT NULL DEFAULT 0,
    ADD COLUMN unpaid_credits        bigint  NOT NULL DEFAULT 0 CHECK (unpaid_credits >= 0),
    ADD COLUMN late                  boolean NOT NULL DEFAULT false;
UPDATE requests SET cached_prompt_price = prompt_price, cache_write_price = prompt_price;
ALTER TABLE requests
    ALTER COLUMN cached_prompt_price SET NOT NULL,
    ALTER COLUMN cache_write_price SET NOT NULL;

-- Usage past the hold is charged from the balance as far as it reaches: a charge may now
-- exceed its hold (the ledger still balances: the excess moves from `available`).
ALTER TABLE requests DROP CONSTRAINT IF EXISTS requests_check;
ALTER TABLE requests DROP CONSTRAINT IF EXISTS requests_credits_check;
ALTER TABLE requests ADD CONSTRAINT requests_credits_nonnegative CHECK (credits >= 0);
