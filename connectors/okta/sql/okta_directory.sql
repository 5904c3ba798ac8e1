-- sources: events
--
-- Okta event hook deliveries as directory changes for meta.principals and meta.group_members.
-- `events` is the batch lily_okta::events::events_batch builds from one verified delivery: one
-- row per System Log event and target, with the event's User and UserGroup targets on every row.
--
-- Only events whose outcome is SUCCESS change anything (a failed deactivation did not happen).
-- Event types:
--   user.lifecycle.create / activate / reactivate / unsuspend  -> user ACTIVE
--   user.lifecycle.suspend                                      -> user SUSPENDED
--   user.lifecycle.deactivate                                   -> user DEACTIVATED
--   user.lifecycle.delete.initiated / delete.completed          -> user DELETED
--   user.account.update_profile       -> user login and display name; status NULL = unchanged
--   group.lifecycle.create / delete   -> group ACTIVE / DELETED
--   group.user_membership.add / remove -> membership true / false
-- Anything else gives no row.
--
-- Okta delivers at least once, in batches, late and out of order. The server dedupes on
-- event_uuid (lily.inbound_events) and applies a change only when `published` is newer than
-- the row's last_event_at, so a late, older event never overwrites a newer state; rows come out
-- in published order to make that the common case.
--
-- Output:
--   change        'principal' | 'membership'
--   kind          'user' | 'group' for a principal; NULL for a membership
--   external_id   the Okta id of the user or group (principal rows)
--   login         user login, or the group's name (principal rows; meta.principals.login)
--   display_name  display name (principal rows)
--   status        ACTIVE | SUSPENDED | DEACTIVATED | DELETED; NULL for a profile update
--   group_id      Okta group id (membership rows)
--   group_name    the group's name (membership rows)
--   user_id       Okta user id (membership rows)
--   user_login    the user's login (membership rows)
--   member        true after add, false after remove (membership rows)
--   event_uuid    the System Log event's uuid
--   published     when Okta logged it (timestamp, UTC)
SELECT *
FROM (
    SELECT
        'principal' AS change,
        'user' AS kind,
        target_id AS external_id,
        target_login AS login,
        target_display_name AS display_name,
        CASE
            WHEN event_type IN ('user.lifecycle.create', 'user.lifecycle.activate',
                                'user.lifecycle.reactivate', 'user.lifecycle.unsuspend')
                THEN 'ACTIVE'
            WHEN event_type = 'user.lifecycle.suspend' THEN 'SUSPENDED'
            WHEN event_type = 'user.lifecycle.deactivate' THEN 'DEACTIVATED'
            WHEN event_type IN ('user.lifecycle.delete.initiated',
                                'user.lifecycle.delete.completed')
                THEN 'DELETED'
        END AS status,
        -- Typed NULLs; arrow_cast rather than CAST(NULL AS VARCHAR), which DataFusion types
        -- as Utf8View where every other text column here is Utf8.
        arrow_cast(NULL, 'Utf8') AS group_id,
        arrow_cast(NULL, 'Utf8') AS group_name,
        arrow_cast(NULL, 'Utf8') AS user_id,
        arrow_cast(NULL, 'Utf8') AS user_login,
        CAST(NULL AS BOOLEAN) AS member,
        uuid AS event_uuid,
        published
    FROM events
    WHERE outcome = 'SUCCESS'
      AND target_type = 'User'
      AND event_type IN ('user.lifecycle.create', 'user.lifecycle.activate',
                         'user.lifecycle.reactivate', 'user.lifecycle.unsuspend',
                         'user.lifecycle.suspend', 'user.lifecycle.deactivate',
                         'user.lifecycle.delete.initiated', 'user.lifecycle.delete.completed',
                         'user.account.update_profile')

    UNION ALL

    SELECT
        'principal',
        'group',
        target_id,
        -- A group's alternateId is its name; displayName is the same, and either may be absent.
        COALESCE(target_login, target_display_name),
        COALESCE(target_display_name, target_login),
        CASE event_type
            WHEN 'group.lifecycle.create' THEN 'ACTIVE'
            WHEN 'group.lifecycle.delete' THEN 'DELETED'
        END,
        NULL,
        NULL,
        NULL,
        NULL,
        NULL,
        uuid,
        published
    FROM events
    WHERE outcome = 'SUCCESS'
      AND target_type = 'UserGroup'
      AND event_type IN ('group.lifecycle.create', 'group.lifecycle.delete')

    UNION ALL

    -- One row per User target: each carries the event's group, so a membership event naming
    -- several users gives each of them a row.
    SELECT
        'membership',
        NULL,
        NULL,
        NULL,
        NULL,
        NULL,
        group_id,
        group_name,
        user_id,
        user_login,
        event_type = 'group.user_membership.add',
        uuid,
        published
    FROM events
    WHERE outcome = 'SUCCESS'
      AND target_type = 'User'
      AND group_id IS NOT NULL
      AND event_type IN ('group.user_membership.add', 'group.user_membership.remove')
) changes
ORDER BY published, event_uuid, change, external_id, user_id
