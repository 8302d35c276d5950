-- Verified addresses, and the sign-up bonus that waits for one (owner: auth). With mail
-- configured, a new account starts with no credits (`bonus_on_verify`); following the mailed
-- link sets `email_verified_at` and asks billing for the bonus, once per normalised mailbox
-- (billing's top-up reference, so never twice). Accounts made before this have neither.
ALTER TABLE accounts ADD COLUMN email_verified_at timestamptz;
ALTER TABLE accounts ADD COLUMN bonus_on_verify boolean NOT NULL DEFAULT false;

-- The operator's notice shown on every page: an announcement and a contact line, plain text
-- (the pages put it in as text, never as HTML). One row. Owner: auth.
CREATE TABLE site_notice (
    id            integer     PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    announcement  text        NOT NULL DEFAULT '' CHECK (length(announcement) <= 2000),
    contact       text        NOT NULL DEFAULT '' CHECK (length(contact) <= 300),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text        NOT NULL DEFAULT ''
);
INSERT INTO site_notice (id) VALUES (1);
