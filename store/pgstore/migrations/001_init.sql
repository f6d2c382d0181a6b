-- Version 1: values, subscribers, deduplication marks, payloads and the
-- delivery queue. Keys are looked up by their SHA-256 (a B-tree entry holds
-- at most about 2.7 kB; ids may be longer) and hosts and subscribers by hash
-- indexes, which have no size limit.

-- fedirelay_hash is the SHA-256 of a text's UTF-8 bytes. convert_to is
-- only STABLE (it depends on the database's encoding, which never changes
-- for a database), so it is wrapped to be usable in generated columns.
CREATE FUNCTION fedirelay_hash(t text) RETURNS bytea
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	AS $$ SELECT sha256(convert_to(t, 'UTF8')) $$;

CREATE TABLE fedirelay_values (
	key_hash bytea GENERATED ALWAYS AS (fedirelay_hash(key)) STORED PRIMARY KEY,
	key      text COLLATE "C" NOT NULL,
	value    bytea NOT NULL
);

CREATE TABLE fedirelay_subscribers (
	id_hash  bytea GENERATED ALWAYS AS (fedirelay_hash(actor_id)) STORED PRIMARY KEY,
	actor_id text COLLATE "C" NOT NULL,
	host     text NOT NULL,
	state    text NOT NULL,
	data     jsonb NOT NULL
);
CREATE INDEX fedirelay_subscribers_host ON fedirelay_subscribers USING hash (host);

CREATE TABLE fedirelay_marks (
	id_hash bytea GENERATED ALWAYS AS (fedirelay_hash(id)) STORED PRIMARY KEY,
	id      text NOT NULL,
	until   timestamptz NOT NULL
);
CREATE INDEX fedirelay_marks_until ON fedirelay_marks (until);

CREATE TABLE fedirelay_payloads (
	id_hash bytea GENERATED ALWAYS AS (fedirelay_hash(id)) STORED PRIMARY KEY,
	id      text NOT NULL,
	body    bytea NOT NULL
);

CREATE TABLE fedirelay_deliveries (
	id_hash       bytea GENERATED ALWAYS AS (fedirelay_hash(id)) STORED PRIMARY KEY,
	id            text NOT NULL,
	seq           bigserial NOT NULL,
	payload_hash  bytea GENERATED ALWAYS AS (fedirelay_hash(payload_id)) STORED
	              NOT NULL REFERENCES fedirelay_payloads (id_hash),
	payload_id    text NOT NULL,
	inbox         text NOT NULL,
	host          text NOT NULL,
	subscriber    text NOT NULL,
	activity_type text NOT NULL,
	attempts      integer NOT NULL,
	not_before    timestamptz NOT NULL,
	last_error    text NOT NULL,
	created       timestamptz NOT NULL,
	lease_until   timestamptz
);
CREATE INDEX fedirelay_deliveries_due ON fedirelay_deliveries (not_before, seq);
CREATE INDEX fedirelay_deliveries_host ON fedirelay_deliveries USING hash (host);
CREATE INDEX fedirelay_deliveries_subscriber ON fedirelay_deliveries USING hash (subscriber);
CREATE INDEX fedirelay_deliveries_payload ON fedirelay_deliveries (payload_hash);
