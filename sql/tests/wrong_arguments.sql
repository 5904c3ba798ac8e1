-- sources: meta.classifications
-- expect-error: asset
SELECT asset(asset_guid) AS a, _commit_lsn FROM classifications
