-- Read-model documents are rewritten many times (a run's document with
-- every step). With full pages, each update lands on another page and
-- must also write both indexes; room left free on every page lets most
-- updates stay on their page as heap-only tuples, with no index writes.
-- Pages written before this keep their old fill until they are rewritten.
ALTER TABLE read_models SET (fillfactor = 70);
