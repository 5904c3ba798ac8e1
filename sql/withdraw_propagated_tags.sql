-- sources: meta.classifications
--
-- When a direct tag is removed, or stops propagating, its propagated copies are withdrawn from
-- every asset downstream. Deletes carry the old row (meta.classifications has REPLICA IDENTITY
-- FULL, so the tenant and the propagate flag are there).
SELECT
    tenant_id,
    d['guid']       AS asset_guid,
    asset_guid      AS origin_guid,
    tag,
    _commit_lsn
FROM (
    SELECT *, unnest(downstream(tenant_id, asset_guid, 10)) AS d
    FROM classifications
    WHERE source = 'direct'
      AND ((_op = 'delete' AND propagate) OR (_op = 'update' AND NOT propagate AND _old['propagate']))
) withdrawn
