-- What would make products eligible for a demand nothing fits (the matcher's counterfactual hints,
-- best first), beside its no-match explanation.
ALTER TABLE demands ADD COLUMN no_match_hints text[] NOT NULL DEFAULT '{}';
