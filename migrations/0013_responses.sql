-- Responses API responses kept for previous_response_id and GET /v1/responses/{id}. Each
-- belongs to the user whose key created it and is invisible to every other user. `input`
-- is every item the model saw (a previous response's input and output included), so the
-- next turn is this row's input + output without walking the chain.
CREATE TABLE responses (
    id          text PRIMARY KEY,
    user_id     bigint NOT NULL,
    model       text NOT NULL,
    input       jsonb NOT NULL,
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX responses_user ON responses (user_id, created_at);
