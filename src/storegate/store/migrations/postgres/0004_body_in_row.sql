-- Keep a completion's body in its row. Every retrieve and every list page reads the body; nothing on
-- those paths reads the raw request, kept for the record. With both columns "extended" (the default),
-- a row over ~2 KB (a 1.4 KB body and a 0.7 KB request: 94% of the bench's rows) had its largest
-- value, the body, moved out of line into the TOAST table, and every body read cost a lookup in the
-- TOAST index and a fetch there. MAIN moves the body out of the row only as a last resort, so the
-- request goes first (and the body is compressed in place before it would go).
-- Measured on the bench's 10k store, rows rewritten, alternating: a page of 20 in a batch of 16
-- ~329-366 -> ~256-292 us, a get in a batch of 40 ~25-27 -> ~19-22 us (bench/analysis/2026-11-27T0711Z.md).
-- Rows written before keep their layout, and read the same, until rewritten (README: PostgreSQL).
ALTER TABLE completions ALTER COLUMN body SET STORAGE MAIN;
