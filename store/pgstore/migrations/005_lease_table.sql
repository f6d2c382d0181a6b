-- Version 5: leases in a table of their own. A Lease inserts a small row
-- here instead of writing a new version of each delivery (and an entry in
-- each of its indexes); the live leases of a host are counted here, among
-- a few rows per worker whatever the size of the queue.
--
-- A delivery is leased while it has a row here (whose lease_until may have
-- passed: it is leased again, under a new token, by the next Lease that
-- takes it). Retry deletes the row and keeps its token in the delivery's
-- released_token, which stays valid until the next Lease (see
-- store.LeaseRef); the valid token of a delivery is its lease's, else its
-- released_token.

CREATE TABLE fedirelay_leases (
	id_hash     bytea PRIMARY KEY REFERENCES fedirelay_deliveries (id_hash) ON DELETE CASCADE,
	host        text NOT NULL,
	lease_until timestamptz NOT NULL,
	token       bigint NOT NULL
);

INSERT INTO fedirelay_leases (id_hash, host, lease_until, token)
	SELECT id_hash, host, lease_until, coalesce(lease_token, nextval('fedirelay_lease_tokens'))
	FROM fedirelay_deliveries WHERE lease_until IS NOT NULL;

DROP INDEX fedirelay_deliveries_leased;
ALTER TABLE fedirelay_deliveries DROP COLUMN lease_until;
ALTER TABLE fedirelay_deliveries RENAME COLUMN lease_token TO released_token;
