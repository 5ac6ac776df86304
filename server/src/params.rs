//! Lenient request parameters (spec §2): JSON body and/or query string, unknown fields
//! ignored, numbers as numbers or numeric strings, booleans as bools or `"true"/"false"`,
//! `null` = absent, alternative spellings (`allow_overages` / `allowOverages`).

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{header, Request, StatusCode};
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
        let mut m = Map::new();
        for (k, v) in form_pairs(query) {
            m.insert(k, Value::String(v));
        }
        Self(m)
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

/// `application/x-www-form-urlencoded` pairs.
fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Self::Rejection> {
        let mut params = Self::from_query(req.uri().query().unwrap_or(""));
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        let bytes = read_body(req.into_body()).await?;
        // curl -d sends JSON as form-urlencoded by default: a body that looks like JSON is JSON.
        let looks_json = matches!(bytes.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['));
        let body = if is_form && !looks_json {
            Self::from_query(&String::from_utf8_lossy(&bytes))
        } else {
            Self::from_json(&bytes)?
        };
        params.0.extend(body.0);
        Ok(params)
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
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn bodies() {
        assert_eq!(Params::from_json(b"").unwrap(), Params::default());
        assert_eq!(Params::from_json(b"[1]").unwrap_err().code, "invalid_json");
        assert_eq!(Params::from_json(b"{").unwrap_err().code, "invalid_json");
    }
}
