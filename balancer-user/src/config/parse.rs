//! From text to a validated [`Config`], every error one line with the
//! field's dotted path and where it is in the file.
//!
//! Three crates do the work: `toml_edit` parses (syntax errors, with their
//! span) into a document that keeps the span of every key and value; serde
//! deserializes that document, with `serde_path_to_error` tracking the path
//! (`services[1].backends[0].address`, array indexes included: `toml`'s own
//! key path has none) and `toml_edit` the span of the value that failed.
//! What is left here is the lookup of a path in the document, for the
//! errors [`Config::validate`] finds after deserializing.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

use super::{Config, ConfigError, ConfigFile, Location};

/// Parses and validates `text`; errors carry a line and column, no file.
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    let document = ImDocument::parse(text).map_err(|e| ConfigError::Syntax {
        message: one_line(e.message()),
        at: at(text, e.span()),
    })?;
    let deserializer = toml_edit::de::Deserializer::from(document.clone());
    let file: ConfigFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = e.path().to_string();
        let e = e.into_inner();
        ConfigError::Invalid {
            field,
            message: one_line(e.message()),
            at: at(text, e.span()),
        }
    })?;
    let config = file.into_config()?;
    config.validate().map_err(|mut e| {
        if let ConfigError::Invalid {
            field, at: where_, ..
        } = &mut e
        {
            *where_ = at(text, span_of(document.as_table(), field));
        }
        e
    })?;
    Ok(config)
}

/// Messages of `toml_edit` may span lines (a caret diagram, a list of
/// what was expected); the config's errors are one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

fn at(text: &str, span: Option<Range<usize>>) -> Location {
    Location {
        file: None,
        line: span.map(|span| line_column(text, span.start)),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
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

/// A place in the document: what `toml_edit` hands out at each step.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(item) => item.span(),
            Node::Value(value) => value.span(),
            Node::Table(table) => table.span(),
        }
    }

    fn key(self, key: &str) -> Option<Node<'a>> {
        match self {
            Node::Item(item) => item.as_table_like()?.get(key).map(Node::Item),
            Node::Value(Value::InlineTable(table)) => table.get(key).map(Node::Value),
            Node::Table(table) => table.get(key).map(Node::Item),
            Node::Value(_) => None,
        }
    }

    fn index(self, index: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(Item::ArrayOfTables(tables)) => tables.get(index).map(Node::Table),
            Node::Item(Item::Value(Value::Array(array))) | Node::Value(Value::Array(array)) => {
                array.get(index).map(Node::Value)
            }
            _ => None,
        }
    }
}

/// Where `field` (`services[1].backends[0].address`) is in the document:
/// the value if it is there, else the deepest table on its path that is (a
/// key left out is reported at its table). `None` if nothing on the path is.
fn span_of(root: &Table, field: &str) -> Option<Range<usize>> {
    let mut span = None;
    let mut node = Node::Table(root);
    for part in field.split('.') {
        let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
        let Some(next) = node.key(key) else {
            return span;
        };
        node = next;
        span = node.span().or(span);
        let indexes = indexes
            .split('[')
            .filter_map(|i| i.strip_suffix(']')?.parse::<usize>().ok());
        for index in indexes {
            let Some(next) = node.index(index) else {
                return span;
            };
            node = next;
            span = node.span().or(span);
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[a]\nx = 1\n\n[[b]]\ny = \"é\"\n[[b]]\ny = \"z\"\n[b.c]\nw = [1, 2]\n";

    fn at(field: &str) -> Option<(usize, usize)> {
        let document = ImDocument::parse(TEXT).unwrap();
        span_of(document.as_table(), field).map(|s| line_column(TEXT, s.start))
    }

    #[test]
    fn finds_values_by_path() {
        assert_eq!(at("a.x"), Some((2, 5)));
        assert_eq!(at("b[0].y"), Some((5, 5)));
        assert_eq!(at("b[1].y"), Some((7, 5)));
        assert_eq!(at("b[1].c.w"), Some((9, 5)));
        assert_eq!(at("b[1].c.w[1]"), Some((9, 9)));
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
}
