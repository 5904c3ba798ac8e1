-- sources: meta.classifications
--
-- A column newly tagged PII or GDPR by a person or a rule (not by propagation): the column, its
-- table and its connection, so a warehouse can mask it and the owners can be told.
-- asset() looks the column up in the metastore, scoped to the row's tenant.
SELECT
    tenant_id,
    tag,
    asset_guid                          AS column_guid,
    a['qualified_name']                 AS column_qualified_name,
    a['name']                           AS column_name,
    a['table_qualified_name']           AS table_qualified_name,
    a['table_name']                     AS table_name,
    a['connection_qualified_name']      AS connection_qualified_name,
    a['owner_users']                    AS owner_users,
    _commit_lsn,
    _commit_ts
FROM (
    SELECT *, asset(tenant_id, asset_guid) AS a
    FROM classifications
    WHERE _op = 'insert' AND source = 'direct' AND tag IN ('PII', 'GDPR')
) tagged
WHERE a['type_name'] = 'Column'
