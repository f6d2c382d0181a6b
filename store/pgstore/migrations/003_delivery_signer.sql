-- Version 3: the relay actor whose key signs a delivery ("" for the main
-- relay actor, else a topic actor's id).

ALTER TABLE fedirelay_deliveries ADD COLUMN signer text NOT NULL DEFAULT '';
