-- Version 4: the leased deliveries by host, for Lease's store.LeaseRequest
-- HostCap (the live leases of a host are counted among them). Only leased
-- deliveries (and those whose lease ran out and was not released) are in
-- it, a few per worker, whatever the size of the queue.

CREATE INDEX fedirelay_deliveries_leased ON fedirelay_deliveries (host) WHERE lease_until IS NOT NULL;
