-- Every admin and operator change: who, what, when, from which address (never a secret).
CREATE TABLE audit_log (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text        NOT NULL,
    action   text        NOT NULL,
    target   text        NOT NULL DEFAULT '',
    status   integer     NOT NULL,
    address  text        NOT NULL DEFAULT '',
    details  jsonb       NOT NULL DEFAULT '{}'
);
