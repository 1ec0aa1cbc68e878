//! Every key name of the Redis store, in one place (the layout is in the
//! module docs of [`super`]). A fleet's keys carry `{<fleet>}` as their hash
//! tag, so they share the fleet's slot on a Redis Cluster and each script
//! stays single-slot; the few lists that span fleets (`fg:*:fleets`) and
//! sessions live in their own slots and are never touched by a script.

/// A vehicle's last-known position (hash `t`, `p`, `g`, with a TTL).
pub(super) fn position_key(fleet: &str, vehicle: &str) -> String {
    format!("fg:{{{fleet}}}:pos:{vehicle}")
}

/// The fleet's vehicles, scored by when their position expires (ms).
pub(super) fn index_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:idx")
}

/// The fleet's online vehicles, scored by when they go stale (ms).
pub(super) fn presence_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:presence")
}

/// The replicas holding a socket of the vehicle, scored by when their claim lapses.
pub(super) fn conns_key(fleet: &str, vehicle: &str) -> String {
    format!("fg:{{{fleet}}}:conns:{vehicle}")
}

/// Geofence id → its Feature JSON.
pub(super) fn geofences_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:geofences")
}

/// Bumped by every change of the fleet's geofences.
pub(super) fn geofence_version_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:geofences:version")
}

/// The vehicles inside a geofence (with `geofence` empty: the prefix).
pub(super) fn geofence_inside_key(fleet: &str, geofence: &str) -> String {
    format!("fg:{{{fleet}}}:fence-inside:{geofence}")
}

/// A chat room's history, a capped stream with a TTL.
pub(super) fn room_key(fleet: &str, room: &str) -> String {
    format!("fg:{{{fleet}}}:room:{room}")
}

/// Fleets that have had presence, for the sweep.
pub(super) const PRESENCE_FLEETS: &str = "fg:presence:fleets";

/// A session's JSON, with a TTL until it expires.
pub(super) fn session_key(id: &str) -> String {
    format!("fg:session:{id}")
}

/// The fleet's event stream (section 12).
pub(super) fn stream_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:events")
}

/// The ordinal of the fleet's last event (see `lua/events_append.lua`).
pub(super) fn counter_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:events:n")
}

/// A reader's lease on the fleet's stream: its holder, with a TTL.
pub(super) fn lease_key(fleet: &str, name: &str) -> String {
    format!("fg:{{{fleet}}}:lease:{name}")
}

/// A consumer's cursor in the fleet's stream (`<ms>-<seq> <ordinal>`).
pub(super) fn cursor_key(fleet: &str, consumer: &str) -> String {
    format!("fg:{{{fleet}}}:cursor:{consumer}")
}

/// Fleets that have had events. It lives in one slot of a cluster, so the
/// scripts (single-slot) cannot add to it: replicas add a fleet when they
/// first append to its stream, and again now and then, in the background.
pub(super) const EVENT_FLEETS: &str = "fg:events:fleets";

/// Webhook id → its registration.
pub(super) fn webhooks_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:webhooks")
}

/// Fleets that have had a webhook. It lives in one slot of a cluster, so
/// the script cannot write it: a registration adds its fleet first, and
/// nothing removes one (a fleet whose webhooks are all gone costs each
/// replica one `HGETALL` per discovery round).
pub(super) const WEBHOOK_FLEETS: &str = "fg:webhooks:fleets";

/// A recovering socket's record (hash `h` holder, `s` state, with a TTL).
pub(super) fn recovery_socket_key(fleet: &str, pid: &str) -> String {
    format!("fg:{{{fleet}}}:rsock:{pid}")
}

/// The fleet's recovery log, a capped stream (field `e`).
pub(super) fn recovery_log_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:recovery")
}
