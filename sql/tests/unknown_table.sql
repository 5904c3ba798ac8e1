-- sources: meta.classifications
-- expect-error: classificationz
SELECT tag, _commit_lsn FROM classificationz
