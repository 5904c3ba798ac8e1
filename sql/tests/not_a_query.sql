-- sources: meta.classifications
-- expect-error: not supported
DELETE FROM classifications WHERE tag = 'PII'
