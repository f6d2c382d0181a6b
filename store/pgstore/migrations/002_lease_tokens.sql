-- Version 2: lease tokens. Every Lease of a delivery takes a new number
-- from fedirelay_lease_tokens; Complete and Retry act only under the
-- delivery's latest one.

CREATE SEQUENCE fedirelay_lease_tokens;
ALTER TABLE fedirelay_deliveries ADD COLUMN lease_token bigint;
