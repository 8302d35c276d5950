-- Model aliases: a public model name that stands for another (a retired name for a current model).
-- Channels serving the target serve the alias too, sent upstream as the target; it is priced as the target.
CREATE TABLE model_aliases (
    name       text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 256),
    target     text NOT NULL CHECK (length(target) BETWEEN 1 AND 256 AND target <> name),
    updated_at timestamptz NOT NULL DEFAULT now()
);
