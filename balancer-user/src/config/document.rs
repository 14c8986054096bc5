//! The config file as a TOML tree that remembers where each value was, and a
//! reader over it that knows the dotted path of every key it hands out.
//!
//! serde's derive would lose both: `toml` reports neither the array index of
//! an `[[services]]` entry nor the key of a value that failed to convert. With
//! the path (`services[1].backends[0].address`) every error names its field,
//! and with the spans it also gets a line and column.

use std::{collections::BTreeMap, fmt, ops::Range};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::ConfigError;

pub(super) type Table = BTreeMap<String, Spanned<Node>>;

/// One TOML value.
#[derive(Debug)]
pub(super) enum Node {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Spanned<Node>>),
    Table(Table),
}

/// What `toml` calls its datetime when it hands one to a visitor as a map.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Integer)
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Boolean(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut table = Table::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == TOML_DATETIME_KEY {
                // A datetime carries no span of its own; its parent has one.
                return Ok(Node::Datetime(map.next_value()?));
            }
            let value = map.next_value()?;
            table.insert(key, value);
        }
        Ok(Node::Table(table))
    }
}

impl Node {
    /// "an integer (80)", "a table": for "expected X, got Y".
    fn describe(&self) -> String {
        match self {
            Node::String(s) => format!("a string ({s:?})"),
            Node::Integer(i) => format!("an integer ({i})"),
            Node::Float(x) => format!("a float ({x})"),
            Node::Boolean(b) => format!("a boolean ({b})"),
            Node::Datetime(d) => format!("a datetime ({d})"),
            Node::Array(_) => "an array".to_owned(),
            Node::Table(_) => "a table".to_owned(),
        }
    }
}

/// Parses TOML syntax; the one thing that can fail here.
pub(super) fn parse(text: &str) -> Result<Table, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().lines().map(str::trim).filter(|l| !l.is_empty());
        ConfigError::Syntax {
            message: message.collect::<Vec<_>>().join("; "),
            at: super::Location {
                file: None,
                line: e.span().map(|span| line_column(text, span.start)),
            },
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Where `field` (`services[1].backends[0].address`) is in the file: the
/// value if it is there, else the deepest table on its path that is (a
/// missing key is reported at its table). `None` if nothing on the path is.
pub(super) fn span_of(root: &Table, field: &str) -> Option<Range<usize>> {
    let mut span = None;
    let mut table = Some(root);
    for part in field.split('.') {
        let (key, indexes) = part
            .split_once('[')
            .map_or((part, ""), |(k, rest)| (k, rest));
        let Some(mut node) = table.and_then(|t| t.get(key)) else {
            return span;
        };
        span = Some(node.span());
        for index in indexes.split('[') {
            let Some(index) = index
                .strip_suffix(']')
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            match node.get_ref() {
                Node::Array(items) => match items.get(index) {
                    Some(item) => node = item,
                    None => return span,
                },
                _ => return span,
            }
            span = Some(node.span());
        }
        table = match node.get_ref() {
            Node::Table(t) => Some(t),
            _ => None,
        };
    }
    span
}

/// A table being read: every key is looked up through here, and keys the
/// reader does not know are errors.
pub(super) struct Section<'a> {
    path: String,
    table: &'a Table,
}

impl<'a> Section<'a> {
    /// Fails on the first key (in file order) that is not in `known`.
    pub(super) fn new(path: String, table: &'a Table, known: &[&str]) -> Result<Self, ConfigError> {
        let section = Section { path, table };
        let unknown = table
            .iter()
            .filter(|(key, _)| !known.contains(&key.as_str()))
            .min_by_key(|(_, value)| value.span().start);
        if let Some((key, _)) = unknown {
            let expected = known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ConfigError::invalid(
                section.field(key),
                format!("unknown key (expected one of {expected})"),
            ));
        }
        Ok(section)
    }

    /// The root of the document.
    pub(super) fn root(table: &'a Table, known: &[&str]) -> Result<Self, ConfigError> {
        Self::new(String::new(), table, known)
    }

    /// The dotted path of `key` in this table.
    pub(super) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, got: &Node) -> ConfigError {
        ConfigError::invalid(
            self.field(key),
            format!("expected {expected}, got {}", got.describe()),
        )
    }

    /// A required key's value, or the error that says it is missing.
    pub(super) fn required<T>(&self, key: &str, value: Option<T>) -> Result<T, ConfigError> {
        value.ok_or_else(|| ConfigError::invalid(self.field(key), "required key is missing"))
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.table.get(key).map(Spanned::get_ref) {
            None => Ok(None),
            Some(Node::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// A string turned into a `T` by `parse`, whose error message is
    /// prefixed with this key's path.
    pub(super) fn parsed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => parse(s)
                .map(Some)
                .map_err(|m| ConfigError::invalid(self.field(key), m)),
        }
    }

    /// An integer turned into a `T` by `convert` (which checks its range).
    pub(super) fn integer<T>(
        &self,
        key: &str,
        convert: impl FnOnce(i64) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.table.get(key).map(Spanned::get_ref) {
            None => Ok(None),
            Some(Node::Integer(i)) => convert(*i)
                .map(Some)
                .map_err(|m| ConfigError::invalid(self.field(key), m)),
            Some(other) => Err(self.wrong_type(key, "an integer", other)),
        }
    }

    /// A sub-table (`[interfaces]`, `[services.health]`).
    pub(super) fn section(
        &self,
        key: &str,
        known: &[&str],
    ) -> Result<Option<Section<'a>>, ConfigError> {
        match self.table.get(key).map(Spanned::get_ref) {
            None => Ok(None),
            Some(Node::Table(t)) => Section::new(self.field(key), t, known).map(Some),
            Some(other) => {
                Err(self.wrong_type(key, &format!("a table ([{}])", self.field(key)), other))
            }
        }
    }

    /// An array of tables (`[[services]]`); empty if the key is absent.
    pub(super) fn sections(
        &self,
        key: &str,
        known: &[&str],
    ) -> Result<Vec<Section<'a>>, ConfigError> {
        let items = match self.table.get(key).map(Spanned::get_ref) {
            None => return Ok(Vec::new()),
            Some(Node::Array(items)) => items,
            Some(other) => {
                let expected = format!("an array of tables ([[{}]])", self.field(key));
                return Err(self.wrong_type(key, &expected, other));
            }
        };
        let field = self.field(key);
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.get_ref() {
                Node::Table(t) => Section::new(format!("{field}[{i}]"), t, known),
                other => Err(ConfigError::invalid(
                    format!("{field}[{i}]"),
                    format!("expected a table, got {}", other.describe()),
                )),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[a]\nx = 1\n\n[[b]]\ny = \"é\"\n[[b]]\ny = \"z\"\n[b.c]\nw = [1, 2]\n";

    fn at(field: &str) -> Option<(usize, usize)> {
        let root = parse(TEXT).unwrap();
        span_of(&root, field).map(|s| line_column(TEXT, s.start))
    }

    #[test]
    fn finds_values_by_path() {
        assert_eq!(at("a.x"), Some((2, 5)));
        assert_eq!(at("b[0].y"), Some((5, 5)));
        assert_eq!(at("b[1].y"), Some((7, 5)));
        assert_eq!(at("b[1].c.w"), Some((9, 5)));
    }

    #[test]
    fn missing_keys_point_at_their_table() {
        assert_eq!(at("a.missing"), Some((1, 1)));
        assert_eq!(at("b[1].c.missing"), Some((8, 1)));
        assert_eq!(at("b[7].y").map(|(line, _)| line), Some(4));
        assert_eq!(at("nothing.here"), None);
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("é = 1", 5), (1, 5));
        assert_eq!(line_column("a\nb", 2), (2, 1));
        assert_eq!(line_column("a", 99), (1, 2));
    }

    #[test]
    fn datetimes_are_values() {
        let root = parse("when = 1979-05-27T07:32:00Z\n").unwrap();
        assert!(matches!(root["when"].get_ref(), Node::Datetime(_)));
    }
}
