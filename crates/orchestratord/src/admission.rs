//! Admission validation (API.md §3.4, §4.1): a `POST /v2/tasks` body becomes a [`ValidatedTask`] or
//! a typed `INVALID_PARAMS` envelope naming the first offending field in document order.

use api::task::{Placement, PlacementMode, Priority, Sampling, TaskRequest, Workload};
use api::worker::DispatchInput;
use api::{ErrorEnvelope, SessionId, TaskId};

use crate::config::Config;

/// Serializable so an HA leader can store it and its successor can queue it again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ValidatedTask {
    pub task_id: TaskId,
    pub session_id: SessionId,
    pub model_ref: String,
    pub workload: Workload,
    pub input: DispatchInput,
    pub max_tokens: Option<u64>,
    pub ctx: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub priority: Priority,
    pub sampling: Sampling,
    pub placement: Placement,
    /// The tenant whose token submitted it (set by the handler from the caller).
    pub tenant: api::TenantId,
    /// The client's `Idempotency-Key` (set by the handler from the header).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Parses the body strictly; `field` is the dotted path serde stopped at.
pub fn parse(body: &[u8]) -> Result<TaskRequest, ErrorEnvelope> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize::<_, TaskRequest>(de).map_err(invalid_body)
}

/// The 400 for any JSON body that does not parse: `field` is the path serde stopped at (it ends
/// at an unknown field's own name), or the name of a missing field.
pub fn invalid_body(e: serde_path_to_error::Error<serde_json::Error>) -> ErrorEnvelope {
    let path = e.path().to_string();
    let msg = e.into_inner().to_string();
    // serde names a missing field only in its message; lift it into `field`.
    let missing = msg
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let field = match (path.as_str(), missing) {
        (".", Some(name)) => Some(name.to_string()),
        (".", None) => None,
        (p, Some(name)) => Some(format!("{p}.{name}")),
        (p, None) => Some(p.to_string()),
    };
    let mut env = ErrorEnvelope::new(
        api::ErrorCode::InvalidParams,
        format!("invalid body: {msg}"),
    );
    env.field = field;
    env
}

pub fn validate(req: TaskRequest, cfg: &Config) -> Result<ValidatedTask, ErrorEnvelope> {
    let bad = |f: &str, m: &str| Err(ErrorEnvelope::invalid(f, m));
    match req.workload {
        Workload::Rerank => return bad("workload", "rerank is reserved"),
        Workload::Embedding => return validate_embedding(req, cfg),
        Workload::Completion if req.input.is_some() => {
            return bad("input", "only embedding tasks take input")
        }
        Workload::Completion => {}
    }
    if req.model_ref.trim().is_empty() {
        return bad("model_ref", "must not be empty");
    }
    if let Some(e) = &req.engine {
        if e != api::ENGINE_LLAMACPP {
            return bad("engine", "only \"llamacpp\" is supported");
        }
    }
    let input = match (&req.prompt, &req.messages) {
        (Some(_), Some(_)) => return bad("messages", "give exactly one of prompt and messages"),
        (None, None) => return bad("prompt", "give exactly one of prompt and messages"),
        (Some(p), None) if p.is_empty() => return bad("prompt", "must not be empty"),
        (Some(p), None) => DispatchInput::Prompt { prompt: p.clone() },
        (None, Some(m)) if m.is_empty() || m.len() > 256 => {
            return bad("messages", "must hold 1 to 256 messages")
        }
        (None, Some(m)) => {
            check_messages(m)?;
            DispatchInput::Messages {
                messages: m.clone(),
                tools: None,
            }
        }
    };
    let input = match input {
        DispatchInput::Messages { messages, .. } if !req.tools.is_empty() => {
            DispatchInput::Messages {
                messages,
                tools: Some(check_tools(&req)?),
            }
        }
        _ if !req.tools.is_empty() => return bad("tools", "tools need messages, not a prompt"),
        _ if req.tool_choice.is_some() => return bad("tool_choice", "needs tools"),
        _ if req.parallel_tool_calls.is_some() => return bad("parallel_tool_calls", "needs tools"),
        other => other,
    };
    let prompt_bytes = match &input {
        DispatchInput::Prompt { prompt } => prompt.len(),
        DispatchInput::Embed { .. } => 0,
        DispatchInput::Messages { messages, tools } => {
            messages
                .iter()
                .map(|m| {
                    m.content.len()
                        + m.tool_calls
                            .iter()
                            .map(|c| c.function.name.len() + c.function.arguments.len())
                            .sum::<usize>()
                })
                .sum::<usize>()
                + tools.as_ref().map_or(0, |t| {
                    serde_json::to_string(&t.tools).map_or(0, |j| j.len())
                })
        }
    };
    if prompt_bytes > cfg.max_prompt_bytes {
        let field = if matches!(input, DispatchInput::Prompt { .. }) {
            "prompt"
        } else {
            "messages"
        };
        return bad(
            field,
            &format!(
                "longer than admission.max_prompt_bytes ({} bytes)",
                cfg.max_prompt_bytes
            ),
        );
    }
    if req.max_tokens == Some(0) {
        return bad("max_tokens", "must be at least 1");
    }
    if req.ctx == Some(0) {
        return bad("ctx", "must be at least 1");
    }
    if let (Some(m), Some(c)) = (req.max_tokens, req.ctx) {
        if m > c {
            return bad("max_tokens", "must not exceed ctx");
        }
    }
    if req.deadline_ms == Some(0) {
        return bad("deadline_ms", "must be greater than 0");
    }
    if let Some(s) = req.seed {
        if s > u32::MAX as u64 {
            return bad("seed", "must be between 0 and 4294967295");
        }
    }
    check_range("temperature", req.temperature, |v| v >= 0.0)?;
    check_range("top_p", req.top_p, |v| v > 0.0 && v <= 1.0)?;
    check_range("min_p", req.min_p, |v| (0.0..=1.0).contains(&v))?;
    check_range("repeat_penalty", req.repeat_penalty, |v| v > 0.0)?;
    check_range("presence_penalty", req.presence_penalty, |v| {
        (-2.0..=2.0).contains(&v)
    })?;
    check_range("frequency_penalty", req.frequency_penalty, |v| {
        (-2.0..=2.0).contains(&v)
    })?;
    if req.logprobs.is_some_and(|n| n > 20) {
        return bad("logprobs", "at most 20 alternatives per token");
    }
    if req.logit_bias.len() > 300 {
        return bad("logit_bias", "at most 300 entries");
    }
    for (k, v) in &req.logit_bias {
        if k.parse::<u32>().is_err() {
            return bad(
                &format!("logit_bias.{k}"),
                "keys must be token ids (decimal integers)",
            );
        }
        if !v.is_finite() || !(-100.0..=100.0).contains(v) {
            return bad(
                &format!("logit_bias.{k}"),
                "bias must be between -100 and 100",
            );
        }
    }
    if req.stop.len() > 8 {
        return bad("stop", "at most 8 stop strings");
    }
    for (i, s) in req.stop.iter().enumerate() {
        if s.is_empty() || s.len() > 256 {
            return bad(
                &format!("stop[{i}]"),
                "each stop string must be 1 to 256 bytes",
            );
        }
    }
    if req.grammar.is_some() && req.json_schema.is_some() {
        return bad("json_schema", "grammar and json_schema exclude each other");
    }
    if let Some(g) = &req.grammar {
        if g.len() > cfg.max_grammar_bytes {
            return bad(
                "grammar",
                &format!(
                    "larger than admission.max_grammar_bytes ({})",
                    cfg.max_grammar_bytes
                ),
            );
        }
        if let Err(e) = api::gbnf::check(g) {
            return bad("grammar", &format!("invalid GBNF grammar: {e}"));
        }
    }
    if let Some(s) = &req.json_schema {
        if !s.is_object() {
            return bad("json_schema", "must be a JSON object");
        }
    }
    let placement = req.placement.clone().unwrap_or_default();
    validate_placement(&placement, cfg)?;
    let sampling = req.sampling();
    Ok(ValidatedTask {
        task_id: req.task_id.unwrap_or_default(),
        session_id: req.session_id.unwrap_or_default(),
        model_ref: req.model_ref,
        workload: Workload::Completion,
        input,
        max_tokens: req.max_tokens,
        ctx: req.ctx,
        deadline_ms: req.deadline_ms,
        priority: req.priority,
        sampling,
        placement,
        tenant: crate::config::anonymous(),
        idempotency_key: None,
    })
}

/// An embedding task: `input` (1 to 2048 items, none empty) and placement; no prompt, messages,
/// tools or sampling.
fn validate_embedding(req: TaskRequest, cfg: &Config) -> Result<ValidatedTask, ErrorEnvelope> {
    let bad = |f: &str, m: &str| Err(ErrorEnvelope::invalid(f, m));
    if req.model_ref.trim().is_empty() {
        return bad("model_ref", "must not be empty");
    }
    if req.prompt.is_some() || req.messages.is_some() {
        return bad(
            "input",
            "embedding tasks take input, not prompt or messages",
        );
    }
    if !req.tools.is_empty() {
        return bad("tools", "embedding tasks take no tools");
    }
    let Some(input) = &req.input else {
        return bad("input", "required for embedding tasks");
    };
    let items = input.items();
    if items.is_empty() || items.len() > 2048 {
        return bad("input", "must hold 1 to 2048 items");
    }
    let mut bytes = 0;
    for (i, it) in items.iter().enumerate() {
        let n = match it {
            api::task::EmbedItem::Text(t) => t.len(),
            api::task::EmbedItem::Tokens(t) => t.len() * 4,
        };
        if n == 0 {
            return bad(&format!("input[{i}]"), "must not be empty");
        }
        bytes += n;
    }
    if bytes > cfg.max_prompt_bytes {
        return bad(
            "input",
            &format!(
                "longer than admission.max_prompt_bytes ({} bytes)",
                cfg.max_prompt_bytes
            ),
        );
    }
    if req.deadline_ms == Some(0) {
        return bad("deadline_ms", "must be greater than 0");
    }
    let placement = req.placement.clone().unwrap_or_default();
    validate_placement(&placement, cfg)?;
    Ok(ValidatedTask {
        task_id: req.task_id.unwrap_or_default(),
        session_id: req.session_id.unwrap_or_default(),
        model_ref: req.model_ref,
        workload: Workload::Embedding,
        input: DispatchInput::Embed { input: items },
        // The engine generates nothing; one "token" keeps the dispatch's cap meaningful.
        max_tokens: Some(1),
        ctx: req.ctx,
        deadline_ms: req.deadline_ms,
        priority: req.priority,
        sampling: Default::default(),
        placement,
        tenant: crate::config::anonymous(),
        idempotency_key: None,
    })
}

/// Tool messages answer a call by id; only assistant messages carry calls.
fn check_messages(msgs: &[api::task::Message]) -> Result<(), ErrorEnvelope> {
    use api::task::Role;
    for (i, m) in msgs.iter().enumerate() {
        if m.role == Role::Tool && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
            return Err(ErrorEnvelope::invalid(
                format!("messages[{i}].tool_call_id"),
                "required on tool messages",
            ));
        }
        if m.role != Role::Tool && m.tool_call_id.is_some() {
            return Err(ErrorEnvelope::invalid(
                format!("messages[{i}].tool_call_id"),
                "only tool messages answer a call",
            ));
        }
        if m.role != Role::Assistant && !m.tool_calls.is_empty() {
            return Err(ErrorEnvelope::invalid(
                format!("messages[{i}].tool_calls"),
                "only assistant messages carry tool calls",
            ));
        }
        for (j, c) in m.tool_calls.iter().enumerate() {
            if !api::tools::valid_name(&c.function.name) {
                return Err(ErrorEnvelope::invalid(
                    format!("messages[{i}].tool_calls[{j}].function.name"),
                    "1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                ));
            }
        }
    }
    Ok(())
}

/// Tool names are valid and distinct, parameters are object schemas, a named choice names a
/// tool, and tools exclude a grammar or schema of the whole output.
fn check_tools(req: &TaskRequest) -> Result<api::tools::Tools, ErrorEnvelope> {
    use api::tools::ToolChoice;
    let bad = |f: &str, m: &str| Err(ErrorEnvelope::invalid(f, m));
    if req.tools.len() > 128 {
        return bad("tools", "at most 128 tools");
    }
    for (i, t) in req.tools.iter().enumerate() {
        if !api::tools::valid_name(&t.function.name) {
            return bad(
                &format!("tools[{i}].function.name"),
                "1 to 64 characters of a-z, A-Z, 0-9, _ and -",
            );
        }
        if req.tools[..i]
            .iter()
            .any(|o| o.function.name == t.function.name)
        {
            return bad(&format!("tools[{i}].function.name"), "duplicate tool name");
        }
        if t.function
            .parameters
            .as_ref()
            .is_some_and(|p| !p.is_object())
        {
            return bad(
                &format!("tools[{i}].function.parameters"),
                "must be a JSON Schema object",
            );
        }
    }
    if let Some(ToolChoice::Named(n)) = &req.tool_choice {
        if !req.tools.iter().any(|t| t.function.name == n.function.name) {
            return bad("tool_choice.function.name", "names no tool of tools");
        }
    }
    if req.grammar.is_some() {
        return bad("grammar", "grammar and tools exclude each other");
    }
    if req.json_schema.is_some() {
        return bad(
            "json_schema",
            "json_schema (response_format) and tools exclude each other",
        );
    }
    if req.logprobs.is_some() {
        // llama-server b11434: "logprobs is not supported with tools + stream", and engine
        // requests always stream.
        return bad(
            "logprobs",
            "the engine cannot return log probabilities with tools",
        );
    }
    Ok(api::tools::Tools {
        tools: req.tools.clone(),
        tool_choice: req.tool_choice.clone(),
        parallel_tool_calls: req.parallel_tool_calls,
    })
}

fn check_range(field: &str, v: Option<f64>, ok: impl Fn(f64) -> bool) -> Result<(), ErrorEnvelope> {
    match v {
        Some(x) if !x.is_finite() || !ok(x) => Err(ErrorEnvelope::invalid(field, "out of range")),
        _ => Ok(()),
    }
}

fn validate_placement(p: &Placement, cfg: &Config) -> Result<(), ErrorEnvelope> {
    match p.mode {
        PlacementMode::Pin if p.pin_pool_id.is_none() => Err(ErrorEnvelope::invalid(
            "placement.pin_pool_id",
            "required when placement.mode is pin",
        )),
        PlacementMode::Pin if !cfg.allow_pin => Err(ErrorEnvelope::invalid(
            "placement.mode",
            "pinning is disabled (placement.allow_pin = false)",
        )),
        PlacementMode::Auto | PlacementMode::Prefer if p.pin_pool_id.is_some() => {
            Err(ErrorEnvelope::invalid(
                "placement.pin_pool_id",
                "only allowed when placement.mode is pin",
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        crate::config::RawConfig::default()
            .validate(std::path::Path::new("/tmp"))
            .unwrap()
    }

    /// Runs a JSON body through parse + validate and checks the offending field (None = valid).
    fn check(body: &str, field: Option<&str>) {
        let result = parse(body.as_bytes()).and_then(|r| validate(r, &cfg()));
        match (result, field) {
            (Ok(_), None) => {}
            (Ok(_), Some(f)) => panic!("{body}: expected an error at {f}"),
            (Err(e), None) => panic!("{body}: unexpected {e:?}"),
            (Err(e), Some(f)) => {
                assert_eq!(e.code, api::ErrorCode::InvalidParams, "{body}");
                assert_eq!(e.field.as_deref().unwrap_or(""), f, "{body}: {e:?}");
            }
        }
    }

    #[test]
    fn valid_bodies() {
        check(r#"{"model_ref":"m","prompt":"hi"}"#, None);
        check(
            r#"{"model_ref":"m","messages":[{"role":"user","content":"x"}],"temperature":0,"seed":42,"max_tokens":160,"grammar":"root ::= \"a\""}"#,
            None,
        );
    }

    #[test]
    fn invalid_bodies_name_the_field() {
        check(
            r#"{"model_ref":"m","prompt":"hi","bogus":1}"#,
            Some("bogus"),
        );
        check(
            r#"{"model_ref":"m","prompt":"hi","placement":{"mode":"pin","x":1}}"#,
            Some("placement.x"),
        );
        check(
            r#"{"model_ref":"m","prompt":"hi","priority":"urgent"}"#,
            Some("priority"),
        );
        check(r#"{"model_ref":"m","prompt":5}"#, Some("prompt"));
        check(r#"{"model_ref":"m"}"#, Some("prompt"));
        check(r#"{"model_ref":"m","prompt":""}"#, Some("prompt"));
        check(
            r#"{"model_ref":"m","prompt":"x","max_tokens":0}"#,
            Some("max_tokens"),
        );
        check(r#"{"model_ref":"m","prompt":"x","top_p":0}"#, Some("top_p"));
        check(
            r#"{"model_ref":"m","prompt":"x","seed":4294967296}"#,
            Some("seed"),
        );
        check(
            r#"{"model_ref":"m","prompt":"x","stop":[""]}"#,
            Some("stop[0]"),
        );
        check(
            r#"{"model_ref":"m","prompt":"x","workload":"embedding"}"#,
            Some("input"),
        );
        check(
            r#"{"model_ref":"m","prompt":"x","workload":"rerank"}"#,
            Some("workload"),
        );
        check(
            r#"{"model_ref":"m","prompt":"x","input":"y"}"#,
            Some("input"),
        );
        check(
            r#"{"model_ref":"m","workload":"embedding","input":["a",""]}"#,
            Some("input[1]"),
        );
        check(
            r#"{"model_ref":"m","workload":"embedding","input":[[1,2],[3]]}"#,
            None,
        );
        check(
            r#"{"model_ref":"m","prompt":"x","engine":"vllm"}"#,
            Some("engine"),
        );
        check(
            r#"{"model_ref":"m","prompt":"x","placement":{"mode":"pin"}}"#,
            Some("placement.pin_pool_id"),
        );
        check(
            r#"{"model_ref":"m","messages":[{"role":"robot","content":"x"}]}"#,
            Some("messages[0].role"),
        );
        check(r#"not json"#, Some(""));
        check(r#"{"prompt":"x"}"#, Some("model_ref"));
        check(
            r#"{"model_ref":"m","messages":[{"role":"tool","content":"18"}]}"#,
            Some("messages[0].tool_call_id"),
        );
        check(
            r#"{"model_ref":"m","messages":[{"role":"user","content":"x","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{}"}}]}]}"#,
            Some("messages[0].tool_calls"),
        );
        let tool = r#"{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}"#;
        check(
            &format!(r#"{{"model_ref":"m","prompt":"x","tools":[{tool}]}}"#),
            Some("tools"),
        );
        check(
            &format!(
                r#"{{"model_ref":"m","messages":[{{"role":"user","content":"x"}}],"tools":[{tool},{tool}]}}"#
            ),
            Some("tools[1].function.name"),
        );
        check(
            &format!(
                r#"{{"model_ref":"m","messages":[{{"role":"user","content":"x"}}],"tools":[{tool}],"tool_choice":{{"type":"function","function":{{"name":"g"}}}}}}"#
            ),
            Some("tool_choice.function.name"),
        );
        check(
            &format!(
                r#"{{"model_ref":"m","messages":[{{"role":"user","content":"x"}}],"tools":[{tool}],"json_schema":{{"type":"object"}}}}"#
            ),
            Some("json_schema"),
        );
        check(
            r#"{"model_ref":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}"#,
            Some("tool_choice"),
        );
        check(
            r#"{"model_ref":"m","prompt":"x","logprobs":21}"#,
            Some("logprobs"),
        );
        check(
            r#"{"model_ref":"m","prompt":"x","presence_penalty":3}"#,
            Some("presence_penalty"),
        );
        check(
            r#"{"model_ref":"m","prompt":"x","logit_bias":{"abc":1}}"#,
            Some("logit_bias.abc"),
        );
        check(
            r#"{"model_ref":"m","prompt":"x","logit_bias":{"15":101}}"#,
            Some("logit_bias.15"),
        );
        check(
            &format!(
                r#"{{"model_ref":"m","messages":[{{"role":"user","content":"x"}}],"tools":[{tool}],"tool_choice":"required","logit_bias":{{"15":-100}}}}"#
            ),
            None,
        );
        check(
            &format!(
                r#"{{"model_ref":"m","messages":[{{"role":"user","content":"x"}}],"tools":[{tool}],"logprobs":2}}"#
            ),
            Some("logprobs"),
        );
        let long = format!(
            r#"{{"model_ref":"m","prompt":"{}"}}"#,
            "x".repeat(1_048_577)
        );
        check(&long, Some("prompt"));
    }

    #[test]
    fn broken_grammars_are_refused_with_their_position() {
        let with = |g: &str| {
            let body = serde_json::json!({"model_ref": "m", "prompt": "x", "grammar": g});
            parse(body.to_string().as_bytes()).and_then(|r| validate(r, &cfg()))
        };
        let e = with("root ::= greeting\n").expect_err("undefined rule");
        assert_eq!(
            (e.code, e.field.as_deref(), e.message.as_str()),
            (
                api::ErrorCode::InvalidParams,
                Some("grammar"),
                "invalid GBNF grammar: rule `root`, line 1, column 10 (byte 9): rule `greeting` is referenced but not defined"
            )
        );
        let e = with("root ::= (\"a\" | \"b\"\n").expect_err("unclosed group");
        assert!(e.message.contains("line 2, column 1"), "{}", e.message);
        assert!(with("# the word root and ::= alone are not a grammar\n").is_err());
        assert!(with("root ::= [a-z]+ (\" \" [a-z]+)*\n").is_ok());
    }
}
