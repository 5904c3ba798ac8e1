-- sources: events
--
-- Monte Carlo notifications as rows for meta.incidents (source 'monte_carlo'). `events` is the
-- batch lily_montecarlo::payload::events_batch builds from one verified delivery: one row per
-- event of payload.event_list and table the event names.
--
-- Which asset. Monte Carlo names a table by its full_table_id, `database:schema.table`
-- (BigQuery `project:dataset.table`); metastore qualified names are
-- `<connection>/<database>/<schema>/<table>`, and which connection a warehouse belongs to is
-- per-tenant configuration this query cannot see. So it outputs `table_path`, the lower-cased
-- `database/schema/table` (`schema/table` when Monte Carlo gave no database), and the ingest
-- server completes it: it prefixes the tenant's configured connection qualified name (or,
-- without one, matches the asset whose qualified name ends in '/' || table_path), and stores
-- asset_guid = meta.asset_guid(tenant_id, qualified_name). Lower case because warehouses fold
-- unquoted identifiers differently (Snowflake upper, PostgreSQL lower) while the metastore's
-- qualified names are lower case. An event naming no table gives table_path NULL: the incident
-- is stored with asset_guid NULL (meta.incidents' key treats NULLs as equal, so a redelivery
-- still lands on the same row).
--
-- Output:
--   source         'monte_carlo'
--   account_id     Monte Carlo account, passed through row for row (the hook checks the
--                  batch's against the tenant's before this runs)
--   external_id    the incident or alert id
--   incident_type  the rule type (custom_sql, freshness, ...), else the notification type with
--                  its open_/close_ prefix and _incident suffix removed
--   severity       SEV-1..SEV-4 when declared, else 'unknown' (the column is NOT NULL)
--   status         'open' | 'investigating' | 'resolved', from alert_feedback or the event type
--   table_path     see above; NULL when the event names no table
--   full_table_id  as Monte Carlo sent it
--   url            the incident or alert page
--   payload        the event as JSON text (meta.incidents.payload)
--   event_key      dedupe key for lily.inbound_events
SELECT
    'monte_carlo' AS source,
    account_id,
    incident_id AS external_id,
    COALESCE(
        rule_type,
        regexp_replace(event_type, '^(open|close|closed|resolved)_(.+)_incident$', '\2')
    ) AS incident_type,
    COALESCE(severity, 'unknown') AS severity,
    CASE
        WHEN status IN ('fixed', 'expected', 'no_action_needed', 'false_positive', 'resolved')
            THEN 'resolved'
        WHEN status IN ('investigating', 'work_in_progress', 'acknowledged')
            THEN 'investigating'
        ELSE 'open'
    END AS status,
    CASE
        WHEN table_short_name IS NOT NULL
            THEN lower(concat_ws('/', warehouse_database, schema_name, table_short_name))
    END AS table_path,
    full_table_id,
    url,
    payload_json AS payload,
    event_key
FROM events
