-- Images, audio and moderations (issue 14): prices per unit, beside the token prices.
--
-- `units` maps a unit to micro-credits per unit: "image" (optionally "image/SIZE" and
-- "image/SIZE/QUALITY", the most specific entry a call matches wins), "1k_characters" (of
-- speech input), "minute" (of audio transcribed or translated). A call counted in a unit the
-- row prices is held and charged by it (services/billing/pricing.py per_unit); its usage row's
-- prompt_tokens then count images, characters or seconds.
ALTER TABLE models ADD COLUMN units jsonb NOT NULL DEFAULT '{}';

-- OpenAI's list prices at the seed's rate (1 credit = US$0.001, as gpt-3.5-turbo's 1.5 per
-- 1K prompt tokens). Moderations are free, as OpenAI's are.
INSERT INTO models (model, prompt_price, completion_price, min_charge, context_window, max_output_tokens, units) VALUES
    ('dall-e-2', 0, 0, 0, 0, 0,
     '{"image": 20000000, "image/512x512": 18000000, "image/256x256": 16000000}'),
    ('dall-e-3', 0, 0, 0, 0, 0,
     '{"image": 40000000, "image/1024x1792": 80000000, "image/1792x1024": 80000000,
       "image/1024x1024/hd": 80000000, "image/1024x1792/hd": 120000000, "image/1792x1024/hd": 120000000}'),
    ('tts-1', 0, 0, 0, 0, 0, '{"1k_characters": 15000000}'),
    ('tts-1-hd', 0, 0, 0, 0, 0, '{"1k_characters": 30000000}'),
    ('whisper-1', 0, 0, 0, 0, 0, '{"minute": 6000000}'),
    ('omni-moderation-latest', 0, 0, 0, 32768, 0, '{}'),
    ('text-moderation-latest', 0, 0, 0, 32768, 0, '{}')
ON CONFLICT (model) DO NOTHING;
