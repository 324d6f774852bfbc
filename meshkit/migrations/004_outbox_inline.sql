-- Outbox rows stay whole in the table up to 8,160 bytes instead of ~2 KB. Past ~2 KB PostgreSQL
-- compresses a row's long values (TOAST), and the relay decompresses them when it reads the row a
-- few milliseconds later, only to delete it. A matcher's DemandMatched (three leads with their
-- explanations) is about 1.9-2.1 KB, so most crossed the line. Measured on the matcher's batch
-- write (20 demands and 80 leads, with the payload sizes of the benchmark's catalog): 5.8 -> 4.8 ms of
-- the database's CPU per batch. Larger payloads are still moved out of line and compressed.
ALTER TABLE outbox SET (toast_tuple_target = 8160);
