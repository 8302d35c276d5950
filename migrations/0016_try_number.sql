-- Which try at a call holds its hold, as a number (issue 16): the edge numbers its tries at a
-- call 1, 2, 3 (RelayRequest.try_number) and billing orders attempts by it. It replaces the
-- text token of 0008 ('' for a caller that does not number its tries, else the edge's 0-based
-- try as two hex digits, then clock and random): '' becomes 0, a token its try plus one.
ALTER TABLE requests ALTER COLUMN attempt DROP DEFAULT;
ALTER TABLE requests ALTER COLUMN attempt TYPE integer USING
    CASE WHEN attempt ~ '^[0-9a-f]{2}' THEN ('x' || substr(attempt, 1, 2))::bit(8)::integer + 1 ELSE 0 END;
ALTER TABLE requests RENAME COLUMN attempt TO try_number;
ALTER TABLE requests ALTER COLUMN try_number SET DEFAULT 0;
