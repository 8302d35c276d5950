-- Tokens that failed upstream attempts at a call (timeouts, server errors) may have cost the
-- operator: free for the client, summed on the operator's dashboard (issue 11).
ALTER TABLE requests ADD COLUMN unbilled_tokens integer NOT NULL DEFAULT 0;
