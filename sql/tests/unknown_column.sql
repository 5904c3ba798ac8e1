-- sources: meta.classifications
-- expect-error: nope
SELECT tag, nope, _commit_lsn FROM classifications
