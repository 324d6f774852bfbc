-- The digests of institutions' API keys, from demand.institution-changed.v1 (meshkit/apikeys.py),
-- in every service's schema: a service that institutions call checks their x-api-key against it.
CREATE TABLE institution_keys (
    institution_id text   PRIMARY KEY,
    version        bigint NOT NULL,
    api_key_sha256 text   NOT NULL
);
