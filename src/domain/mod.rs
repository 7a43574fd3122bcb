//! Domain types built once at the edge, and the pure rules that act on them.

pub mod attendance;
pub mod geo;
pub mod identity;

pub use geo::GeoPoint;
pub use identity::{Email, Password, Role, UserStatus};

/// A character that shows nothing: zero-width spaces and joiners, direction marks, soft hyphens,
/// a byte order mark.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// A character that shows nothing on its own: [`is_invisible`], and the direction overrides and
/// isolates, invisible operators and fillers that a name of nothing else would be made of. (Not
/// dropped from codes: stored codes are compared as [`facility_code`] spells them.)
pub fn shows_nothing(c: char) -> bool {
    is_invisible(c)
        || c.is_whitespace()
        || matches!(
            c,
            '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2061}'..='\u{2069}'
                | '\u{3164}'
                | '\u{FFA0}'
        )
}

/// A facility code as stored and compared: spaces of any kind (a non-breaking space pasted from
/// a web page, a run of spaces) read as one plain space, invisible characters (zero-width
/// spaces, direction marks, soft hyphens, a byte order mark left inside joined files) dropped,
/// and the ends trimmed; so `KGL\u{A0}HC  001` is `KGL HC 001`, and not a second facility
/// beside it. Control characters (a tab, a line break) are kept, for the checks to refuse.
pub fn facility_code(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    for c in text.trim().chars() {
        if is_invisible(c) {
            continue;
        }
        let c = if c.is_whitespace() && !c.is_control() {
            ' '
        } else {
            c
        };
        if !(c == ' ' && code.ends_with(' ')) {
            code.push(c);
        }
    }
    code.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::facility_code;

    #[test]
    fn facility_codes_read_every_kind_of_space_as_one_and_drop_invisible_characters() {
        for typed in [
            "KGL HC 001",
            " KGL\u{A0}HC 001",
            "KGL  HC\u{202F}001 ",
            "\u{FEFF}KGL HC\u{200B} 001",
            "KGL\u{AD} HC\u{200E} 001\n",
        ] {
            assert_eq!(facility_code(typed), "KGL HC 001", "{typed:?}");
        }
        assert_eq!(facility_code("HC-1"), "HC-1");
        assert_eq!(facility_code("HC\t1"), "HC\t1");
        assert_eq!(facility_code("\u{200B}"), "");
    }
}
