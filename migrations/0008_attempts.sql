-- Which attempt at a call holds its hold. The edge may retry a call on another inference
-- replica with the same request id; the retry takes the hold over (or places it again if
-- an earlier attempt released it), and a superseded attempt's settlement moves nothing.
ALTER TABLE requests ADD COLUMN attempt text NOT NULL DEFAULT '';
