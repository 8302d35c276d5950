-- Audio tokens priced as OpenAI prices them (issue 11): apart from text tokens, from the usage's
-- prompt_tokens_details.audio_tokens and completion_tokens_details.audio_tokens.
--
-- A model's audio prices (micro-credits per 1,000 audio input / output tokens; NULL: the model
-- takes no audio here, and a call with audio is refused); the rates a call with audio was held
-- at (NULL: its audio tokens, if any, at the text prices); and its audio counts.
ALTER TABLE models ADD COLUMN audio_prompt_price bigint CHECK (audio_prompt_price >= 0),
                   ADD COLUMN audio_completion_price bigint CHECK (audio_completion_price >= 0);
ALTER TABLE requests ADD COLUMN audio_prompt_price bigint,
                     ADD COLUMN audio_completion_price bigint,
                     ADD COLUMN audio_prompt_tokens integer NOT NULL DEFAULT 0,
                     ADD COLUMN audio_completion_tokens integer NOT NULL DEFAULT 0;
-- Audio output was a whole-call multiplier ("features": {"audio": x}); it is priced per token now.
UPDATE models SET features = features - 'audio' WHERE features ? 'audio';
