//! Tool calling and token probabilities (API.md §4.1, §5.7, §11): the tool definitions a chat
//! task may carry, the tool calls an assistant message holds, the streamed tool-call deltas, and
//! the log probabilities a token frame may carry. The same shapes serve `/v2`, the worker protocol
//! and `/v1`, so no layer translates them.

use serde::{Deserialize, Serialize};

/// A tool the model may call: `{"type": "function", "function": {name, description, parameters}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    /// `function`, the only kind.
    #[serde(rename = "type")]
    pub kind: FunctionKind,
    pub function: FunctionDef,
}

/// The one tool kind: `function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    #[default]
    Function,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    /// 1–64 characters of `a-z A-Z 0-9 _ -`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of the arguments (an object schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Accepted for OpenAI compatibility; the engine always constrains a call to its schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `auto` (the model decides), `none` (no call), `required` (at least one call), or one named
/// function (`{"type": "function", "function": {"name": …}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(ToolChoiceMode),
    Named(NamedToolChoice),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    Auto,
    None,
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: FunctionKind,
    pub function: FunctionName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionName {
    pub name: String,
}

/// What a chat task offers the model: its tools, how it must use them, and whether it may call
/// several at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Tools {
    pub tools: Vec<ToolDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
}

impl Tools {
    /// The tools and the choice as the engine takes them: it knows only the three modes, so a
    /// named choice becomes `required` over that one tool.
    pub fn for_engine(&self) -> (Vec<ToolDef>, ToolChoiceMode) {
        match &self.tool_choice {
            Some(ToolChoice::Named(n)) => (
                self.tools
                    .iter()
                    .filter(|t| t.function.name == n.function.name)
                    .cloned()
                    .collect(),
                ToolChoiceMode::Required,
            ),
            Some(ToolChoice::Mode(m)) => (self.tools.clone(), *m),
            None => (self.tools.clone(), ToolChoiceMode::Auto),
        }
    }
}

/// One call in an assistant message: `{"id", "type": "function", "function": {name, arguments}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: FunctionKind,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text, as the model wrote them.
    pub arguments: String,
}

/// A piece of a tool call as the model writes it (the `tool_call` frame, §5.7). The first piece
/// of call `index` carries its `id` and `name`; the `arguments` of all its pieces, concatenated,
/// are the call's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCallDelta {
    /// Which call of the answer (0 for the first).
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: String,
}

/// One generated token's log probability, and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
    /// The token's UTF-8 bytes (a token may hold part of a character).
    #[serde(default)]
    pub bytes: Vec<u8>,
    /// The alternatives, most likely first (as many as the request's `logprobs` asked for).
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    #[serde(default)]
    pub bytes: Vec<u8>,
}

/// Checks a tool function name: 1–64 characters of `a-z A-Z 0-9 _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_choice_reads_modes_and_named_functions() {
        let m: ToolChoice = serde_json::from_str(r#""required""#).unwrap();
        assert_eq!(m, ToolChoice::Mode(ToolChoiceMode::Required));
        let n: ToolChoice =
            serde_json::from_str(r#"{"type":"function","function":{"name":"f"}}"#).unwrap();
        assert!(matches!(n, ToolChoice::Named(ref x) if x.function.name == "f"));
        assert!(serde_json::from_str::<ToolChoice>(r#""sometimes""#).is_err());
    }

    #[test]
    fn a_named_choice_reaches_the_engine_as_required_over_that_tool() {
        let def = |name: &str| ToolDef {
            kind: FunctionKind::Function,
            function: FunctionDef {
                name: name.into(),
                description: None,
                parameters: None,
                strict: None,
            },
        };
        let t = Tools {
            tools: vec![def("a"), def("b")],
            tool_choice: Some(ToolChoice::Named(NamedToolChoice {
                kind: FunctionKind::Function,
                function: FunctionName { name: "b".into() },
            })),
            parallel_tool_calls: None,
        };
        let (tools, mode) = t.for_engine();
        assert_eq!(
            (tools.len(), tools[0].function.name.as_str(), mode),
            (1, "b", ToolChoiceMode::Required)
        );
        let auto = Tools {
            tool_choice: None,
            ..t
        };
        assert_eq!(auto.for_engine().1, ToolChoiceMode::Auto);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("get_weather-2"));
        assert!(!valid_name("") && !valid_name("a b") && !valid_name(&"x".repeat(65)));
    }
}
