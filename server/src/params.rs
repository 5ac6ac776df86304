//! Lenient request parameters (spec §2): JSON body and/or query string, unknown fields
//! ignored, numbers as numbers or numeric strings, booleans as bools or `"true"/"false"`,
//! `null` = absent, alternative spellings (`allow_overages` / `allowOverages`).

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{header, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The merged parameters of one request (body fields win over query fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(pub Map<String, Value>);

/// The raw body of a request, limited to [`BODY_LIMIT`] (413 JSON error beyond).
pub async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("Request body larger than {BODY_LIMIT} bytes"),
        )
    })
}

impl Params {
    /// Parses a query string (`a=1&b=x`).
    pub fn from_query(query: &str) -> Self {
        Self(form_pairs(query).map(|(k, v)| (k, Value::String(v))).collect())
    }

    /// Parses a JSON body; empty (or whitespace) = no fields.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(Self(m)),
            Ok(Value::Null) => Ok(Self::default()),
            Ok(_) => Err(ApiError::bad_request(
                "invalid_json",
                "Request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::bad_request(
                "invalid_json",
                format!("Malformed JSON body: {e}"),
            )),
        }
    }

    fn get<'a>(&'a self, names: &[&'a str]) -> Option<(&'a str, &'a Value)> {
        names
            .iter()
            .find_map(|n| self.0.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v)))
    }

    /// Optional string (numbers are accepted and rendered).
    pub fn str_opt(&self, names: &[&str]) -> Result<Option<String>, ApiError> {
        match self.get(names) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((_, Value::Number(n))) => Ok(Some(n.to_string())),
            Some((_, Value::Bool(b))) => Ok(Some(b.to_string())),
            Some((n, _)) => Err(ApiError::invalid(n, "expected a string")),
        }
    }

    /// Required non-empty string.
    pub fn str_req(&self, names: &[&str]) -> Result<String, ApiError> {
        match self.str_opt(names)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(ApiError::missing(names[0])),
        }
    }

    /// Optional integer (number or numeric string; `""` = absent).
    pub fn i64_opt(&self, names: &[&str]) -> Result<Option<i64>, ApiError> {
        match self.get(names) {
            None => Ok(None),
            Some((n, Value::Number(x))) => x
                .as_i64()
                .or_else(|| {
                    x.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                })
                .map(Some)
                .ok_or_else(|| ApiError::invalid(n, "expected an integer")),
            Some((_, Value::String(s))) if s.trim().is_empty() => Ok(None),
            Some((n, Value::String(s))) => s
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::invalid(n, "expected an integer")),
            Some((n, _)) => Err(ApiError::invalid(n, "expected an integer")),
        }
    }

    /// Optional unsigned 64-bit integer (license ids).
    pub fn u64_opt(&self, names: &[&str]) -> Result<Option<u64>, ApiError> {
        match self.get(names) {
            None => Ok(None),
            Some((n, Value::Number(x))) => x
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(n, "expected a non-negative integer")),
            Some((_, Value::String(s))) if s.trim().is_empty() => Ok(None),
            Some((n, Value::String(s))) => s
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::invalid(n, "expected a non-negative integer")),
            Some((n, _)) => Err(ApiError::invalid(n, "expected a non-negative integer")),
        }
    }

    /// Optional u32.
    pub fn u32_opt(&self, names: &[&str]) -> Result<Option<u32>, ApiError> {
        match self.u64_opt(names)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| ApiError::invalid(names[0], "too large")),
        }
    }

    /// Optional boolean (`true/false`, `"true"/"false"`, `1/0`, `"yes"/"no"`, `"on"`).
    pub fn bool_opt(&self, names: &[&str]) -> Result<Option<bool>, ApiError> {
        match self.get(names) {
            None => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(*b)),
            Some((n, Value::Number(x))) => match x.as_i64() {
                Some(0) => Ok(Some(false)),
                Some(1) => Ok(Some(true)),
                _ => Err(ApiError::invalid(n, "expected a boolean")),
            },
            Some((n, Value::String(s))) => match s.trim().to_ascii_lowercase().as_str() {
                "" => Ok(None),
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(ApiError::invalid(n, "expected a boolean")),
            },
            Some((n, _)) => Err(ApiError::invalid(n, "expected a boolean")),
        }
    }

    /// A raw value (arrays, objects), or a JSON text in a string (query parameters).
    pub fn json_opt(&self, names: &[&str]) -> Result<Option<Value>, ApiError> {
        match self.get(names) {
            None => Ok(None),
            Some((n, Value::String(s))) => serde_json::from_str(s)
                .map(Some)
                .map_err(|e| ApiError::invalid(n, format!("expected JSON: {e}"))),
            Some((_, v)) => Ok(Some(v.clone())),
        }
    }
}

/// `application/x-www-form-urlencoded` pairs (the `form_urlencoded` crate: `+` is a
/// space, a `%` not followed by two hex digits stays a `%`, bad UTF-8 is replaced).
fn form_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// What a request carries before it is typed: its query string and its body.
struct Raw {
    query: Option<String>,
    is_form: bool,
    body: axum::body::Bytes,
}

impl Raw {
    async fn of(req: Request<Body>) -> Result<Self, ApiError> {
        let query = req.uri().query().filter(|q| !q.is_empty()).map(str::to_owned);
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        let body = read_body(req.into_body()).await?;
        Ok(Self { query, is_form, body })
    }

    /// The first non-blank byte of the body.
    fn lead(&self) -> Option<u8> {
        self.body.iter().copied().find(|b| !b.is_ascii_whitespace())
    }

    /// curl -d sends JSON as form-urlencoded by default: a body that looks like JSON is JSON.
    fn body_is_json(&self) -> bool {
        !self.is_form || matches!(self.lead(), Some(b'{' | b'['))
    }

    /// Query and body merged into one map (body fields win).
    fn merged(self) -> Result<Params, ApiError> {
        let mut params = self.query.as_deref().map(Params::from_query).unwrap_or_default();
        let body = if self.body_is_json() {
            Params::from_json(&self.body)?
        } else {
            Params::from_query(&String::from_utf8_lossy(&self.body))
        };
        params.0.extend(body.0);
        Ok(params)
    }
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Self::Rejection> {
        Raw::of(req).await?.merged()
    }
}

/// A typed request: `T` decoded from the JSON body and/or the query string (body fields
/// win), with the leniency of spec §2 given by the [`lenient`] field decoders. A request
/// with only a JSON body (what the SDKs send) is decoded straight from its bytes.
#[derive(Debug, Clone, Default)]
pub struct Req<T>(pub T);

/// An invalid field: `invalid_parameters` naming it.
fn field_error(path: &serde_path_to_error::Path, e: &dyn std::fmt::Display) -> ApiError {
    let text = e.to_string();
    // serde_json appends the position; the field name says more.
    let why = text.split(" at line ").next().unwrap_or(&text);
    ApiError::invalid(&path.to_string(), why)
}

impl<T: DeserializeOwned + Default> Req<T> {
    /// Decodes a JSON object body.
    pub fn from_json(bytes: &[u8]) -> Result<T, ApiError> {
        match bytes.iter().copied().find(|b| !b.is_ascii_whitespace()) {
            None => return Ok(T::default()),
            Some(b'{') => {}
            Some(b'n') if bytes.trim_ascii() == b"null" => return Ok(T::default()),
            Some(_) => {
                return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Ok(_) => ApiError::bad_request("invalid_json", "Request body must be a JSON object"),
                    Err(e) => ApiError::bad_request("invalid_json", format!("Malformed JSON body: {e}")),
                })
            }
        }
        // The common case, without path tracking; a failure is decoded again below for a
        // message naming the field (decoding is deterministic: it fails the same way).
        let mut de = serde_json::Deserializer::from_slice(bytes);
        if let Ok(out) = T::deserialize(&mut de).and_then(|out| de.end().map(|()| out)) {
            return Ok(out);
        }
        let malformed =
            |e: &serde_json::Error| ApiError::bad_request("invalid_json", format!("Malformed JSON body: {e}"));
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let out: T = serde_path_to_error::deserialize(&mut de).map_err(|e| match e.inner().classify() {
            serde_json::error::Category::Data => field_error(e.path(), e.inner()),
            _ => malformed(e.inner()),
        })?;
        de.end().map_err(|e| malformed(&e))?;
        Ok(out)
    }

    /// Decodes merged parameters.
    pub fn from_params(p: Params) -> Result<T, ApiError> {
        serde_path_to_error::deserialize(Value::Object(p.0)).map_err(|e| field_error(e.path(), e.inner()))
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for Req<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = Raw::of(req).await?;
        if raw.query.is_none() && raw.body_is_json() {
            return Req::from_json(&raw.body).map(Req);
        }
        Req::from_params(raw.merged()?).map(Req)
    }
}

/// Field decoders for typed requests (`#[serde(default, deserialize_with = "…")]` on
/// `Option` fields): `null` = absent, numbers as numbers or numeric strings (`""` =
/// absent), booleans as bools, `0/1` or `"true"/"false"/"yes"/"no"/"on"/"off"`, strings
/// from strings, numbers or bools, JSON values inline or as a JSON text (query strings).
/// They take the same decisions as the [`Params`] accessors, which they call.
pub mod lenient {
    use std::fmt;

    use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use super::Params;
    use crate::error::ApiError;

    fn one<'de, D: Deserializer<'de>, T>(
        d: D,
        get: impl FnOnce(&Params) -> Result<Option<T>, ApiError>,
    ) -> Result<Option<T>, D::Error> {
        let v = Value::deserialize(d)?;
        let mut m = serde_json::Map::with_capacity(1);
        m.insert(String::new(), v);
        get(&Params(m)).map_err(|e| {
            // The accessor's message names the field ""; keep only why.
            let why = e.message.rsplit(": ").next().unwrap_or("invalid").to_owned();
            D::Error::custom(why)
        })
    }

    /// A string: the decisions of [`Params::str_opt`], taken on the token itself (the
    /// most common field kind, so no intermediate `Value`).
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(StringVisitor)
    }

    struct StringVisitor;

    impl<'de> Visitor<'de> for StringVisitor {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }

        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // Rendered as serde_json renders the number (`2.0`, `1e20`).
            Ok(serde_json::Number::from_f64(v).map(|n| n.to_string()))
        }

        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(A::Error::custom("expected a string"))
        }

        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(A::Error::custom("expected a string"))
        }
    }

    /// A signed integer.
    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        one(d, |p| p.i64_opt(&[""]))
    }

    /// An unsigned integer (license ids).
    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        one(d, |p| p.u64_opt(&[""]))
    }

    /// A u32.
    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        one(d, |p| p.u32_opt(&[""]))
    }

    /// A boolean.
    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        one(d, |p| p.bool_opt(&[""]))
    }

    /// Any JSON value (or a JSON text in a string).
    pub fn json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        one(d, |p| p.json_opt(&[""]))
    }
}

/// Required-field helper for typed requests.
pub trait Required<T> {
    /// The value, or `missing_parameters` naming `field` (a blank string is missing).
    fn required(self, field: &str) -> Result<T, ApiError>;
}

impl Required<String> for Option<String> {
    fn required(self, field: &str) -> Result<String, ApiError> {
        self.filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ApiError::missing(field))
    }
}

impl Required<i64> for Option<i64> {
    fn required(self, field: &str) -> Result<i64, ApiError> {
        self.ok_or_else(|| ApiError::missing(field))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Params {
        match v {
            Value::Object(m) => Params(m),
            _ => Params::default(),
        }
    }

    #[test]
    fn numbers_strings_nulls_and_spellings() {
        let x = p(json!({"consumptions":"2","n":3,"f":2.0,"allowOverages":"true","max_overages":null,"s":5}));
        assert_eq!(x.i64_opt(&["consumptions"]).unwrap(), Some(2));
        assert_eq!(x.i64_opt(&["n"]).unwrap(), Some(3));
        assert_eq!(x.i64_opt(&["f"]).unwrap(), Some(2));
        assert_eq!(x.bool_opt(&["allow_overages", "allowOverages"]).unwrap(), Some(true));
        assert_eq!(x.i64_opt(&["max_overages"]).unwrap(), None);
        assert_eq!(x.str_opt(&["s"]).unwrap(), Some("5".into()));
        assert_eq!(x.str_req(&["missing"]).unwrap_err().code, "missing_parameters");
        let bad = p(json!({"consumptions":"two","b":[1]}));
        assert_eq!(bad.i64_opt(&["consumptions"]).unwrap_err().code, "invalid_parameters");
        assert_eq!(bad.bool_opt(&["b"]).unwrap_err().code, "invalid_parameters");
    }

    #[test]
    fn query_strings_decode() {
        let q = Params::from_query("product=a%20b&licenseKey=K+1&isHWKeyReq=true&x");
        assert_eq!(q.str_opt(&["product"]).unwrap(), Some("a b".into()));
        assert_eq!(q.str_opt(&["licenseKey"]).unwrap(), Some("K 1".into()));
        assert_eq!(q.bool_opt(&["isHWKeyReq"]).unwrap(), Some(true));
        let odd = Params::from_query("a=100%&b=%zz&c=%+1&d=%41%e2%82%ac&e=%ff");
        assert_eq!(odd.str_opt(&["a"]).unwrap(), Some("100%".into()));
        assert_eq!(odd.str_opt(&["b"]).unwrap(), Some("%zz".into()));
        // The old hand-written decoder read `%+1` as the byte 0x01.
        assert_eq!(odd.str_opt(&["c"]).unwrap(), Some("% 1".into()));
        assert_eq!(odd.str_opt(&["d"]).unwrap(), Some("A€".into()));
        assert_eq!(odd.str_opt(&["e"]).unwrap(), Some("\u{fffd}".into()));
    }

    #[test]
    fn bodies() {
        assert_eq!(Params::from_json(b"").unwrap(), Params::default());
        assert_eq!(Params::from_json(b"[1]").unwrap_err().code, "invalid_json");
        assert_eq!(Params::from_json(b"{").unwrap_err().code, "invalid_json");
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default)]
    struct T {
        #[serde(deserialize_with = "lenient::string")]
        product: Option<String>,
        #[serde(deserialize_with = "lenient::u64")]
        license_id: Option<u64>,
        #[serde(deserialize_with = "lenient::i64")]
        consumptions: Option<i64>,
        #[serde(rename = "allowOverages", deserialize_with = "lenient::bool")]
        allow: Option<bool>,
    }

    #[test]
    fn the_string_field_decoder_decides_as_str_opt_does() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(default)]
        struct S {
            #[serde(deserialize_with = "lenient::string")]
            s: Option<String>,
        }
        for raw in [
            "\"a b\"",
            "\"\"",
            "5",
            "-7",
            "2.0",
            "1e20",
            "0.5",
            "true",
            "false",
            "null",
            "[1]",
            "{\"a\":1}",
        ] {
            let body = format!("{{\"s\":{raw}}}");
            let typed = Req::<S>::from_json(body.as_bytes()).map(|t| t.s);
            let by_params = Params::from_json(body.as_bytes()).unwrap().str_opt(&["s"]);
            match (typed, by_params) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{raw}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a.code, b.code, "{raw}");
                    assert_eq!(a.message, b.message, "{raw}");
                }
                (a, b) => panic!("{raw}: typed {a:?}, params {b:?}"),
            }
            // The same through merged parameters (query + body).
            let merged = Req::<S>::from_params(Params::from_json(body.as_bytes()).unwrap()).map(|t| t.s);
            assert_eq!(
                merged.ok(),
                Params::from_json(body.as_bytes()).unwrap().str_opt(&["s"]).ok(),
                "{raw}"
            );
        }
    }

    #[test]
    fn typed_requests_are_as_lenient_as_params() {
        let t: T = Req::from_json(
            br#"{"product":5,"license_id":"12","consumptions":" 3 ","allowOverages":"true","x":{"y":[1]}}"#,
        )
        .unwrap();
        assert_eq!(
            t,
            T {
                product: Some("5".into()),
                license_id: Some(12),
                consumptions: Some(3),
                allow: Some(true),
            }
        );
        let t: T = Req::from_json(br#"{"product":null,"consumptions":"","allowOverages":0}"#).unwrap();
        assert_eq!(
            t,
            T {
                allow: Some(false),
                ..T::default()
            }
        );
        assert_eq!(Req::<T>::from_json(b"  ").unwrap(), T::default());
        assert_eq!(Req::<T>::from_json(b"null").unwrap(), T::default());
        for bad in [&b"[1]"[..], b"{", b"{\"product\":", b"{} x", b"\"s\""] {
            let e = Req::<T>::from_json(bad).unwrap_err();
            assert_eq!(e.code, "invalid_json", "{}", String::from_utf8_lossy(bad));
        }
        let e = Req::<T>::from_json(br#"{"product":{"a":1}}"#).unwrap_err();
        assert_eq!(e.code, "invalid_parameters");
        assert!(e.message.contains("product"), "{}", e.message);
        let e = Req::<T>::from_json(br#"{"license_id":-1}"#).unwrap_err();
        assert!(e.message.contains("license_id"), "{}", e.message);
        // Query and body merged, body wins; query values are strings.
        let mut p = Params::from_query("product=q&license_id=7&consumptions=%2B2");
        p.0.extend(Params::from_json(br#"{"product":"b"}"#).unwrap().0);
        let t: T = Req::from_params(p).unwrap();
        assert_eq!(
            (t.product.as_deref(), t.license_id, t.consumptions),
            (Some("b"), Some(7), Some(2))
        );
    }

    proptest::proptest! {
        /// Whatever the bytes, decoding answers a value or a JSON error: no panic.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64), q in ".{0,40}") {
            let _ = Req::<T>::from_json(&bytes);
            let _ = Req::<T>::from_params(Params::from_query(&q));
        }
    }
}
