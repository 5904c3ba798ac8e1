-- sources: meta.classifications
--
-- A direct tag that propagates reaches every asset downstream in lineage (up to 10 hops), as a
-- 'propagated' classification whose origin is the tagged asset. Propagated rows never propagate
-- again here (their origin already did), so the pipeline cannot feed itself.
SELECT
    tenant_id,
    d['guid']       AS asset_guid,
    origin_guid,
    tag,
    'propagated'    AS source,
    true            AS propagate,
    _commit_lsn
FROM (
    SELECT tenant_id, asset_guid AS origin_guid, tag, _commit_lsn,
           unnest(downstream(tenant_id, asset_guid, 10)) AS d
    FROM classifications
    WHERE _op IN ('insert', 'update') AND source = 'direct' AND propagate
) reached
