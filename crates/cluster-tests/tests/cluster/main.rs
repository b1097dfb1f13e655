//! End-to-end scenarios against real processes: orchestratord, pool-managerd and a real
//! `llama-server` with a real GGUF model, all on loopback. A small harness (not libtest) so that a
//! run without the engine reports "skipped" instead of "passed": with REQUIRE_REAL_LLAMA=1 a missing
//! engine or model is a failure; without it the real-engine scenarios are skipped, visibly.

mod auth;
mod cancel;
mod catalog_cli;
mod cli;
mod faults;
mod fixtures;
mod ha;
mod happy;
mod nodes;
mod observe;
mod openai;
mod prefix;
mod provision;
mod refusals;
mod sched;
mod schema;
mod template;
mod tenants;
mod ui;
mod v2_tools;
mod worker;

use std::future::Future;
use std::pin::Pin;

type Scenario = fn(fixtures::Assets) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// (name, needs the real engine, body)
fn scenarios() -> Vec<(&'static str, bool, Scenario)> {
    vec![
        (
            "orchestratord_refuses_bad_config_listing_every_problem",
            false,
            |a| Box::pin(refusals::bad_orchestratord_config(a)),
        ),
        (
            "pool_managerd_refuses_missing_model_or_engine",
            false,
            |a| Box::pin(refusals::missing_model_or_engine(a)),
        ),
        ("e2e_haiku", true, |a| Box::pin(happy::haiku(a))),
        ("cache_aware_conversation_follows_its_history", true, |a| {
            Box::pin(prefix::conversation_follows_its_history(a))
        }),
        ("cache_aware_imbalance_guard_lets_load_win", true, |a| {
            Box::pin(prefix::imbalance_guard_lets_load_win(a))
        }),
        (
            "cache_aware_worker_tokenize_matches_the_engine",
            true,
            |a| Box::pin(prefix::worker_tokenize_matches_the_engine(a)),
        ),
        ("engine_apply_template_matches_chat_endpoint", true, |a| {
            Box::pin(template::apply_template_matches_chat(a))
        }),
        ("task_for_unserved_model_gets_typed_error", true, |a| {
            Box::pin(refusals::unserved_model(a))
        }),
        ("cancel_mid_stream_frees_the_slot", true, |a| {
            Box::pin(cancel::cancel_mid_stream(a))
        }),
        ("client_disconnect_frees_the_slot", true, |a| {
            Box::pin(cancel::client_disconnect(a))
        }),
        (
            "heartbeats_keep_node_online_and_silence_makes_it_offline",
            true,
            |a| Box::pin(nodes::heartbeat_and_offline(a)),
        ),
        ("sigterm_deregisters_and_leaves_no_engine", true, |a| {
            Box::pin(nodes::sigterm_deregisters(a))
        }),
        (
            "worker_engine_killed_mid_stream_resets_and_recovers_with_migration_off",
            true,
            |a| Box::pin(worker::engine_killed_mid_stream(a)),
        ),
        (
            "faults_engine_restart_is_waited_out_with_one_pool",
            true,
            |a| Box::pin(faults::restart_is_waited_out(a)),
        ),
        (
            "faults_engine_killed_mid_stream_migrates_like_the_twin",
            true,
            |a| Box::pin(faults::migration_matches_twin(a)),
        ),
        (
            "faults_pool_managerd_killed_mid_stream_leaves_no_engine",
            true,
            |a| Box::pin(faults::worker_killed_mid_stream(a)),
        ),
        (
            "faults_llorch_up_restarts_a_killed_orchestratord",
            true,
            |a| Box::pin(faults::up_restarts_orchestratord(a)),
        ),
        (
            "worker_dispatch_with_an_epoch_reattaches_and_replays",
            true,
            |a| Box::pin(worker::dispatch_reattaches_with_an_epoch(a)),
        ),
        ("worker_orchestratord_restart_reregisters", true, |a| {
            Box::pin(worker::orchestratord_restart_reregisters(a))
        }),
        ("cli_run_cancel_json_exit_codes", true, |a| {
            Box::pin(cli::cli(a))
        }),
        ("catalog_cli_models_commands_json_exit_codes", true, |a| {
            Box::pin(catalog_cli::catalog_cli(a))
        }),
        ("provisioning_from_hf_with_progress", true, |a| {
            Box::pin(provision::provisioning_from_hf(a))
        }),
        ("catalog_digest_mismatch_and_restart", true, |a| {
            Box::pin(provision::digest_mismatch_and_restart(a))
        }),
        ("catalog_two_pools_one_download", true, |a| {
            Box::pin(provision::two_pools_one_download(a))
        }),
        ("openai_official_client", true, |a| {
            Box::pin(openai::official_client(a))
        }),
        ("openai_tools_structured_output_logprobs", true, |a| {
            Box::pin(openai::tools_and_structured_output(a))
        }),
        ("openai_responses_api", true, |a| {
            Box::pin(openai::responses_api(a))
        }),
        ("openai_embeddings_on_an_embedding_pool", true, |a| {
            Box::pin(openai::embeddings(a))
        }),
        ("v2_tool_call_and_logprob_frames", true, |a| {
            Box::pin(v2_tools::tool_call_frames(a))
        }),
        ("v2_embedding_frames", true, |a| {
            Box::pin(v2_tools::embedding_frames(a))
        }),
        ("anthropic_messages_official_client", true, |a| {
            Box::pin(openai::anthropic_messages(a))
        }),
        ("sched_queue_order_and_aging", true, |a| {
            Box::pin(sched::queue_order_and_aging(a))
        }),
        ("sched_no_oversubscription", true, |a| {
            Box::pin(sched::no_oversubscription(a))
        }),
        ("sched_full_queue_429_and_drop_lru", true, |a| {
            Box::pin(sched::full_queue_429_and_drop_lru(a))
        }),
        ("sched_retry_before_first_token", true, |a| {
            Box::pin(sched::retry_before_first_token(a))
        }),
        ("sched_deadlines", true, |a| Box::pin(sched::deadlines(a))),
        ("sched_pin_semantics", true, |a| {
            Box::pin(sched::pin_semantics(a))
        }),
        ("sched_sessions_endpoint", true, |a| {
            Box::pin(sched::sessions_endpoint(a))
        }),
        ("sdk_retries_admission_after_retry_after", true, |a| {
            Box::pin(sched::sdk_retries_admission(a))
        }),
        ("worker_drain_and_reload", true, |a| {
            Box::pin(sched::drain_and_reload(a))
        }),
        ("worker_reload_to_new_model", true, |a| {
            Box::pin(worker::reload_to_new_model(a))
        }),
        ("worker_handoff_adoption", true, |a| {
            Box::pin(worker::handoff_adoption(a))
        }),
        ("worker_crashes_trip_the_breaker", true, |a| {
            Box::pin(sched::breaker_trips(a))
        }),
        ("schemathesis_against_openapi", true, |a| {
            Box::pin(schema::schemathesis(a))
        }),
        ("tenants_role_matrix_every_route", true, |a| {
            Box::pin(tenants::role_matrix(a))
        }),
        ("tenants_limits_retry_after_and_rotation", true, |a| {
            Box::pin(tenants::limits(a))
        }),
        ("observe_metrics_logs_cors", true, |a| {
            Box::pin(observe::metrics_logs_cors(a))
        }),
        ("auth_rules_and_token_rotation", true, |a| {
            Box::pin(auth::auth_rules_and_rotation(a))
        }),
        ("logs_hold_no_secrets", true, |a| {
            Box::pin(refusals::logs_hold_no_secrets(a))
        }),
        ("ui_dashboard_in_a_real_browser", true, |a| {
            Box::pin(ui::dashboard(a))
        }),
        ("ha_leader_killed_mid_stream", true, |a| {
            Box::pin(ha::leader_killed_mid_stream(a))
        }),
        ("ha_queue_survives", true, |a| {
            Box::pin(ha::queue_survives(a))
        }),
        ("ha_idempotent_submit_across_failover", true, |a| {
            Box::pin(ha::idempotent_submit_across_failover(a))
        }),
        ("ha_paused_leader_is_fenced", true, |a| {
            Box::pin(ha::paused_leader_is_fenced(a))
        }),
        ("ha_full_outage", true, |a| Box::pin(ha::full_outage(a))),
        ("ha_planned_failover", true, |a| {
            Box::pin(ha::planned_failover(a))
        }),
        ("ha_catalog_survives", true, |a| {
            Box::pin(ha::catalog_survives(a))
        }),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let assets = fixtures::Assets::from_env();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, real, body) in scenarios() {
        if !args.is_empty() && !args.iter().any(|a| name.contains(a.as_str())) {
            continue;
        }
        if real {
            if let Err(why) = &assets.real {
                if fixtures::require_real() {
                    println!("test {name} ... FAILED\n  REQUIRE_REAL_LLAMA=1 but {why}");
                    failed += 1;
                } else {
                    println!("test {name} ... skipped ({why}; set REQUIRE_REAL_LLAMA=1 to make this a failure)");
                    skipped += 1;
                }
                continue;
            }
        }
        let started = std::time::Instant::now();
        let result = rt.block_on(async { tokio::spawn(body(assets.clone())).await });
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(Ok(())) => {
                println!("test {name} ... ok ({secs:.1}s)");
                passed += 1;
            }
            Ok(Err(e)) => {
                println!("test {name} ... FAILED ({secs:.1}s)\n  {e:#}");
                failed += 1;
            }
            Err(panic) => {
                println!("test {name} ... FAILED ({secs:.1}s)\n  panicked: {panic}");
                failed += 1;
            }
        }
    }
    println!("\ncluster: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}
