//! Identifiers shared by every module: the id grammar of the contract
//! (`[A-Za-z0-9._:-]{1,64}`) and session ids.

use base64::Engine as _;

/// Longest fleet, vehicle or room id.
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` is a valid fleet, vehicle or room id. Ids end up in Redis
/// keys and room names, so anything outside the grammar is refused rather
/// than escaped. Braces are outside it, which keeps `{fleet}` hash tags sound.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new opaque session id: 192 random bits, URL-safe.
pub fn new_session_id() -> String {
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` could be a session id minted by [`new_session_id`]; anything
/// else is unknown without asking the store.
pub fn is_plausible_session_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_grammar() {
        assert!(is_valid_id("bus-12"));
        assert!(is_valid_id("a.b_c:d-E9"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id("bus 12"));
        assert!(!is_valid_id("{demo}"));
        assert!(!is_valid_id("büs"));
    }

    #[test]
    fn session_ids_are_long_and_unique() {
        let a = new_session_id();
        assert!(is_plausible_session_id(&a));
        assert_ne!(a, new_session_id());
    }
}
