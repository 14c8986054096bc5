//! Errors are one line (the CLI contract), but they quote what the user
//! sent, which may hold a newline (a TOML key `"a\nb"`, a JSON string
//! `"x\n"`): control characters are written escaped.

/// `text` with every control character escaped (`\n`, `\t`, `\u{1b}`).
pub fn escape_controls(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_control_characters() {
        assert_eq!(escape_controls("a\nb\tc\u{1b}d ü"), "a\\nb\\tc\\u{1b}d ü");
        assert_eq!(escape_controls("plain"), "plain");
    }
}
