//! How each value of the file is read: `#[serde(deserialize_with)]` helpers
//! whose errors are the config's one-line messages.
//!
//! A leaf is read as a [`toml::Value`] first, so a value of the wrong type
//! is named the way TOML names it ("expected an integer, got a string
//! ("65537")") and a datetime is a datetime rather than serde's "map". The
//! range checks are the ones [`Config::validate`](super::Config::validate)
//! makes, so parsing and validating give the same message.

use std::{fmt, marker::PhantomData, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Value;

use super::{BackendConfig, ServiceConfig, cidr::Cidr, duration};

/// "an integer (80)", "a table": for "expected X, got Y".
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("a string ({s:?})"),
        Value::Integer(i) => format!("an integer ({i})"),
        Value::Float(x) => format!("a float ({x})"),
        Value::Boolean(b) => format!("a boolean ({b})"),
        Value::Datetime(d) => format!("a datetime ({d})"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

fn wrong_type<E: de::Error>(expected: &str, got: &Value) -> E {
    E::custom(format!("expected {expected}, got {}", describe(got)))
}

pub(super) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        other => Err(wrong_type("a string", &other)),
    }
}

pub(super) fn optional_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string(d).map(Some)
}

pub(super) fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    string(d).map(PathBuf::from)
}

/// A string turned into a `T` by `parse`.
fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    parse(&string(d)?).map_err(de::Error::custom)
}

/// A keyword enum (`Mode`, `Protocol`, ...), through its `FromStr`.
pub(super) fn keyword<'de, D: Deserializer<'de>, T: FromStr<Err = String>>(
    d: D,
) -> Result<T, D::Error> {
    parsed(d, T::from_str)
}

pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parsed(d, |s| {
        s.parse().map_err(|_| {
            format!(r#"invalid socket address {s:?} (expected IP:PORT, e.g. "198.18.0.100:80" or "[2001:db8::1]:80")"#)
        })
    })
}

pub(super) fn optional_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

pub(super) fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    path(d).map(Some)
}

/// An array, each item read by `item`; an item's error is prefixed by its
/// index.
fn array<'de, D: Deserializer<'de>, T>(
    d: D,
    item: impl Fn(Value) -> Result<T, toml::de::Error>,
) -> Result<Vec<T>, D::Error> {
    match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| item(v).map_err(|e| de::Error::custom(format!("[{i}]: {}", e.message()))))
            .collect(),
        other => Err(wrong_type("an array of strings", &other)),
    }
}

/// An array of `IP:PORT` strings.
pub(super) fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    array(d, socket_addr)
}

/// An array of address blocks (`trusted_proxies`).
pub(super) fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    array(d, |v| parsed(v, Cidr::from_str))
}

pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Boolean(b) => Ok(b),
        other => Err(wrong_type("a boolean", &other)),
    }
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, duration::parse)
}

/// An integer turned into a `T` by `convert`, which checks its range.
fn integer<'de, D: Deserializer<'de>, T>(
    d: D,
    convert: impl FnOnce(i64) -> Result<T, String>,
) -> Result<T, D::Error> {
    match Value::deserialize(d)? {
        Value::Integer(i) => convert(i).map_err(de::Error::custom),
        other => Err(wrong_type("an integer", &other)),
    }
}

/// One `deserialize_with` function per integer field, each with its range.
macro_rules! integers {
    ($($name:ident: $ty:ty = $convert:expr;)+) => {
        $(pub(super) fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            integer(d, $convert)
        })+
    };
}

integers! {
    prefix_v4: u8 = super::prefix(32);
    prefix_v6: u8 = super::prefix(128);
    table_size: u32 = super::table_size;
    weight: u32 = super::weight;
    status: u16 = super::status;
    count: u32 = super::count;
    table_entries: u32 = super::table_entries;
    proxy_threads: Option<u16> = super::proxy_threads;
}

/// `[[services]]` and `[[services.backends]]`: an array of tables, whose
/// error when given one table says which syntax was meant.
struct ArrayOfTables<T> {
    expecting: &'static str,
    item: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ArrayOfTables<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(items)
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Vec<T>, A::Error> {
        Err(de::Error::custom(format!(
            "expected {}, got a table",
            self.expecting
        )))
    }
}

pub(super) fn services<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ServiceConfig>, D::Error> {
    d.deserialize_seq(ArrayOfTables {
        expecting: "an array of tables ([[services]])",
        item: PhantomData,
    })
}

pub(super) fn backends<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BackendConfig>, D::Error> {
    d.deserialize_seq(ArrayOfTables {
        expecting: "an array of tables ([[services.backends]])",
        item: PhantomData,
    })
}
