//! Filling request templates: placeholders replaced in one pass, each value escaped for where
//! it lands (percent-encoded in paths and queries, JSON-string-escaped in bodies) and never
//! re-scanned, so a value cannot add placeholders or change the request's structure.

use std::net::SocketAddr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// Characters left as they are in path and query values: RFC 3986 "unreserved".
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(super) const PLACEHOLDERS: [&str; 4] = ["address", "host", "port", "identity"];

/// Values for the placeholders of one call.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Values<'a> {
    pub(super) address: Option<SocketAddr>,
    pub(super) identity: Option<&'a str>,
}

impl Values<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        match name {
            "address" => self.address.map(|a| a.to_string()),
            "host" => self.address.map(|a| a.ip().to_string()),
            "port" => self.address.map(|a| a.port().to_string()),
            "identity" => self.identity.map(str::to_owned),
            _ => None,
        }
    }
}

/// Replaces each `{{name}}` in `template` with `escape(value)`, in one pass. Returns the name
/// of the first placeholder without a value.
pub(super) fn render(
    template: &str,
    values: &Values<'_>,
    escape: impl Fn(&str) -> String,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "unclosed {{".to_string())?;
        let name = after[..end].trim();
        let value = values.get(name).ok_or_else(|| name.to_string())?;
        out.push_str(&escape(&value));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(super) fn escape_path(v: &str) -> String {
    utf8_percent_encode(v, PATH_VALUE).to_string()
}

/// The inside of a JSON string literal holding `v`.
pub(super) fn escape_json(v: &str) -> String {
    let quoted = Value::String(v.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_escaped_and_never_rescanned() {
        let v = Values {
            address: Some("10.0.0.1:26656".parse().expect("addr")),
            identity: Some("a\"b\nc{{address}}"),
        };
        let body = render(
            r#"{"id":"{{identity}}","at":"{{address}}"}"#,
            &v,
            escape_json,
        )
        .expect("renders");
        let parsed: Value = serde_json::from_str(&body).expect("still JSON");
        assert_eq!(parsed["id"], "a\"b\nc{{address}}");
        assert_eq!(parsed["at"], "10.0.0.1:26656");
        let path = render("/dial?p={{identity}}@{{address}}", &v, escape_path).expect("renders");
        assert_eq!(
            path,
            "/dial?p=a%22b%0Ac%7B%7Baddress%7D%7D@10.0.0.1%3A26656"
        );
        assert_eq!(
            render("/x/{{identity}}", &Values::default(), escape_path),
            Err("identity".into())
        );
    }
}
