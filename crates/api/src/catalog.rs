//! Model catalog (API.md §9): records, request bodies and availability, plus the GGUF facts that
//! pool-managerd reads at fetch time and orchestratord stores with the record.

use serde::{Deserialize, Serialize};

use crate::ids::{ModelId, NodeId, PoolId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ModelState {
    Active,
    Retired,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Active => "Active",
            ModelState::Retired => "Retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Active" => Some(ModelState::Active),
            "Retired" => Some(ModelState::Retired),
            _ => None,
        }
    }
}

/// Facts read from a GGUF file's header (architecture, training context, size, quantization,
/// chat template). Every field is optional: a file may lack any key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GgufInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// `<arch>.context_length`: the context the model was trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
    /// Sum of the tensors' element counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_count: Option<u64>,
    /// `general.file_type` by name, e.g. `Q4_1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// `tokenizer.chat_template` is present.
    #[serde(default)]
    pub chat_template: bool,
}

/// A catalog entry (§9.2). `metadata` is an addition to the spec's record: the GGUF facts, known
/// after the first verified fetch or load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelRecord {
    pub id: ModelId,
    #[serde(rename = "ref")]
    pub model_ref: String,
    #[schema(required = true)]
    pub digest: Option<String>,
    #[schema(required = true)]
    pub size_bytes: Option<u64>,
    pub state: ModelState,
    #[schema(required = true)]
    pub last_verified_ms: Option<u64>,
    pub locations: Vec<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<GgufInfo>,
}

/// `POST /v2/catalog/models` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ModelId>,
    #[serde(rename = "ref", default)]
    #[schema(required = true)]
    pub model_ref: String,
    /// `sha256:<64 hex>`; upper case is accepted and stored lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// `POST /v2/catalog/models/{id}/state` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetModelState {
    pub state: ModelState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelsResponse {
    pub models: Vec<ModelRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServingPool {
    pub node_id: NodeId,
    pub pool_id: PoolId,
    pub state: crate::node::PoolState,
    pub slots_free: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelAvailability {
    pub id: ModelId,
    pub state: ModelState,
    pub cached_on: Vec<NodeId>,
    pub serving: Vec<ServingPool>,
}

/// `GET /v2/catalog/availability`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AvailabilityResponse {
    pub models: Vec<ModelAvailability>,
}

/// Parses a digest (§9.2): `sha256:` and 64 hex digits in any case, returned lower case.
pub fn parse_digest(s: &str) -> Result<String, String> {
    let Some((algo, hex)) = s.split_once(':') else {
        return Err(format!("{s:?} is not <algorithm>:<hex>"));
    };
    if !algo.eq_ignore_ascii_case("sha256") {
        return Err(format!(
            "digest algorithm {algo:?} is not supported; use sha256"
        ));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a sha256 digest has 64 hex digits".into());
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Preparation step kinds and ids (§8).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_digest(&format!("SHA256:{hex}")).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert!(parse_digest(&format!("md5:{hex}"))
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_digest("sha256:abc").is_err());
        assert!(parse_digest("abc").is_err());
    }
}
