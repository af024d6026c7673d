-- Queries by org keep an index of their own, but one that does not start
-- with the primary key's columns: with the shared prefix, a planner working
-- from stale statistics (a table that grew fast) could pick it for lookups
-- by key and filter every document of a collection instead of seeking one.
DROP INDEX IF EXISTS read_models_by_org;
CREATE INDEX read_models_by_org ON read_models (org, projection, generation, collection, key);
