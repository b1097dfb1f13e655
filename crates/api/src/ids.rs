//! Identifier newtypes. Task, session and command ids are UUIDs; node, pool and model ids match
//! `^[a-z0-9][a-z0-9._-]{0,63}$` (API.md §1); correlation ids are 1–128 visible ASCII characters
//! (§3.2); preparation step ids name what a step prepares (`model:<ref>`, `engine:llamacpp`,
//! `pool:<id>`). All are serde-transparent, so the wire carries plain strings; deserializing
//! checks the rules, so a value of one of these types is always valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

macro_rules! uuid_id {
    ($name:ident) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Serialize,
            Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| IdError(format!("{s:?} is not a UUID")))
            }
        }
    };
}

uuid_id!(TaskId);
uuid_id!(SessionId);
uuid_id!(CommandId);

/// Checks the name pattern shared by node, pool and model ids.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// `as_str`, `Display`, and parsing (`FromStr`, `Deserialize`) checked by `$valid`, for the
/// string-backed ids below; `$rule` says the rule in the error.
macro_rules! string_id_impls {
    ($name:ident, $what:literal, $valid:expr, $rule:literal) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if $valid(s) {
                    Ok(Self(s.to_string()))
                } else {
                    Err(IdError(format!(
                        concat!("invalid ", $what, " {:?}: ", $rule),
                        s
                    )))
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

macro_rules! name_id {
    ($name:ident, $what:literal) => {
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
        pub struct $name(String);

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        string_id_impls!(
            $name,
            $what,
            valid_name,
            "must match ^[a-z0-9][a-z0-9._-]{{0,63}}$"
        );
    };
}

/// The catalog id rule of API.md §9.1: the last path segment without `.gguf`, lowercased, other
/// characters replaced by `-`, at most 64 characters.
pub fn model_id_from_path(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.strip_suffix(".gguf").unwrap_or(name).to_lowercase();
    let mut id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    id.truncate(64);
    id
}

name_id!(NodeId, "node id");
name_id!(PoolId, "pool id");
name_id!(ModelId, "model id");
name_id!(TenantId, "tenant name");

/// Ids a node reports about itself rather than names the API assigns or resolves: 1–255
/// characters with no whitespace or control characters, otherwise as reported.
macro_rules! reported_id {
    ($name:ident, $what:literal) => {
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String)]
        pub struct $name(String);

        string_id_impls!(
            $name,
            $what,
            valid_reported,
            "1-255 characters, no whitespace"
        );
    };
}

/// The rule of reported ids: 1–255 characters, none of them whitespace or control characters.
fn valid_reported(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

reported_id!(MachineId, "machine id");
reported_id!(DeviceId, "device id");

impl DeviceId {
    /// A GPU by its CUDA index, as discovery numbers them.
    pub fn from_index(index: u32) -> Self {
        Self(index.to_string())
    }
}

/// A request's correlation id (API.md §3.2): the caller's `X-Correlation-Id` when valid, else a
/// new UUIDv4.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String)]
pub struct CorrelationId(String);

impl CorrelationId {
    /// A fresh id (a UUIDv4), for requests that arrive without a valid one.
    pub fn new() -> Self {
        Self(Uuid::new_v4().to_string())
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

string_id_impls!(
    CorrelationId,
    "correlation id",
    crate::valid_correlation_id,
    "1-128 visible ASCII characters"
);

/// A preparation step's id (API.md §8): what the step prepares. Steps that prepare the same thing
/// for two tasks share an id, which is how progress reaches every task waiting on it.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String)]
pub struct StepId(String);

impl StepId {
    /// Fetching the model `model_ref` onto a node.
    pub fn model(model_ref: &str) -> Self {
        Self(format!("model:{model_ref}"))
    }

    /// Building or locating the engine.
    pub fn engine() -> Self {
        Self(format!("engine:{}", crate::ENGINE_LLAMACPP))
    }

    /// Warming up pool `pool_id`.
    pub fn pool(pool_id: impl fmt::Display) -> Self {
        Self(format!("pool:{pool_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, ok: bool) {
        assert_eq!(input.parse::<PoolId>().is_ok(), ok, "{input:?}");
    }

    #[test]
    fn reported_ids_refuse_empty_and_whitespace() {
        assert!("4c4c4544004e3510".parse::<MachineId>().is_ok());
        assert!("GPU-8f0c2a".parse::<DeviceId>().is_ok());
        assert!("0".parse::<DeviceId>().is_ok());
        for bad in ["", "a b", "x\n", &"m".repeat(256)] {
            assert!(bad.parse::<MachineId>().is_err(), "{bad:?}");
            assert!(bad.parse::<DeviceId>().is_err(), "{bad:?}");
        }
        let e = serde_json::from_str::<MachineId>("\"\"").unwrap_err();
        assert!(e.to_string().contains("machine id"), "{e}");
    }

    #[test]
    fn name_rules() {
        check("gpu0", true);
        check("a.b_c-d", true);
        check("", false);
        check("Gpu0", false);
        check("-x", false);
        check(&"a".repeat(64), true);
        check(&"a".repeat(65), false);
        check("a/b", false);
    }

    #[test]
    fn string_ids_are_transparent_and_checked() {
        let p: PoolId = serde_json::from_str(r#""gpu0""#).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""gpu0""#);
        assert!(serde_json::from_str::<PoolId>(r#""Gpu0""#).is_err());
        let c: CorrelationId = serde_json::from_str(r#""abc-1""#).unwrap();
        assert_eq!(c.as_str(), "abc-1");
        assert!(serde_json::from_str::<CorrelationId>(r#""a b""#).is_err());
        assert_eq!(StepId::pool(&p).as_str(), "pool:gpu0");
    }

    #[test]
    fn uuid_ids_roundtrip() {
        let t = TaskId::new();
        assert_eq!(t.to_string().parse::<TaskId>().unwrap(), t);
        assert!("nope".parse::<TaskId>().is_err());
    }
}
