//! Cancel and client disconnect free the engine slot (API.md §5.4, §5.6, §14.3).

use std::time::Duration;

use anyhow::{ensure, Context};
use api::events::{Event, StopReason};
use api::task::TaskState;

use crate::fixtures::{self, wait_for, Assets};

/// Slot evidence from pool-managerd: it confirmed the slot free through the engine's `/slots`
/// (`engine.cancel_confirmed`), and its pool reports the slot free with nothing running.
async fn assert_slot_freed(stack: &llorch::stack::Stack, task: &str) -> anyhow::Result<()> {
    wait_for(
        "engine.cancel_confirmed in pool-managerd's log",
        Duration::from_secs(15),
        || async {
            fixtures::log_lines(&stack.pm_log)
                .iter()
                .any(|l| l["event"] == "engine.cancel_confirmed" && l["task_id"] == task)
                .then_some(())
        },
    )
    .await?;
    let pools = fixtures::worker_pools(stack).await?;
    let p = pools.first().context("no pool")?;
    ensure!(
        p.slots_free == p.slots_total && p.running.is_empty(),
        "pool still busy: {p:?}"
    );
    Ok(())
}

fn spec_with_token(a: &Assets, name: &str) -> anyhow::Result<llorch::stack::StackSpec> {
    let mut spec = a.spec(name)?;
    spec.pm_extra = format!(
        "[dispatch]\ntoken = \"{}\"\n",
        fixtures::TEST_DISPATCH_TOKEN
    );
    spec.orchd_extra = "[streams]\ndisconnect_grace_ms = 200\n".into();
    Ok(spec)
}

/// A follow-up task on the single-slot pool runs to the end: the slot really is free.
async fn follow_up_completes(client: &client::Client, model: &str) -> anyhow::Result<()> {
    let mut req = api::task::TaskRequest::new(model);
    req.prompt = Some("The capital of France is".into());
    req.max_tokens = Some(8);
    let adm = client.submit(&req).await?.body;
    let mut s = client.events(&adm.streams.sse).await?;
    while let Some(f) = tokio::time::timeout(Duration::from_secs(30), s.next())
        .await?
        .transpose()?
    {
        match f.event {
            Event::End(e) => {
                ensure!(
                    !e.canceled && e.tokens_out > 0,
                    "follow-up ended badly: {e:?}"
                );
                return Ok(());
            }
            Event::Error(e) => anyhow::bail!("follow-up failed: {e:?}"),
            _ => {}
        }
    }
    anyhow::bail!("follow-up stream closed without end")
}

pub async fn cancel_mid_stream(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(spec_with_token(&a, "cancel")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let model = stack.spec.model_id.clone();
        let adm = client.submit(&fixtures::long_request(&model)).await?.body;
        let mut s = client.events(&adm.streams.sse).await?;
        fixtures::read_tokens(&mut s, 5).await?;
        ensure!(
            client.cancel(adm.task_id).await? == 204,
            "cancel did not answer 204"
        );
        let mut after_end = 0;
        let mut end = None;
        while let Some(f) = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await?
            .transpose()?
        {
            match f.event {
                Event::End(e) => end = Some(e),
                _ if end.is_some() => after_end += 1,
                _ => {}
            }
        }
        let end = end.context("no end frame after cancel")?;
        ensure!(
            end.canceled && end.stop_reason == StopReason::Canceled,
            "end after cancel: {end:?}"
        );
        ensure!(after_end == 0, "{after_end} frames after end");
        let rec = client.task(adm.task_id).await?.body;
        ensure!(rec.state == TaskState::Canceled, "state {:?}", rec.state);
        assert_slot_freed(&stack, &adm.task_id.to_string()).await?;
        let m = client.metrics_text().await?.body;
        ensure!(
            m.lines().any(|l| l.starts_with("tasks_canceled_total{")
                && l.contains("reason=\"client\"")
                && l.ends_with(" 1")),
            "tasks_canceled_total{{reason=client}} is not 1"
        );
        follow_up_completes(&client, &model).await
    }
    .await;
    stack.shutdown().await?;
    result
}

pub async fn client_disconnect(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(spec_with_token(&a, "disconnect")?).await?;
    let result = async {
        let client = client::Client::new(&stack.orchd_url, None)?;
        let model = stack.spec.model_id.clone();
        let adm = client.submit(&fixtures::long_request(&model)).await?.body;
        {
            let mut s = client.events(&adm.streams.sse).await?;
            fixtures::read_tokens(&mut s, 3).await?;
            // Dropping the stream closes the connection: the client went away.
        }
        let rec = wait_for(
            "the task to be canceled after the disconnect grace",
            Duration::from_secs(15),
            || async {
                client
                    .task(adm.task_id)
                    .await
                    .ok()
                    .map(|r| r.body)
                    .filter(|r| r.state == TaskState::Canceled)
            },
        )
        .await?;
        ensure!(
            rec.stop_reason == Some(StopReason::Canceled),
            "stop_reason {:?}",
            rec.stop_reason
        );
        assert_slot_freed(&stack, &adm.task_id.to_string()).await?;
        let m = client.metrics_text().await?.body;
        ensure!(
            m.lines().any(|l| l.starts_with("tasks_canceled_total{")
                && l.contains("reason=\"disconnect\"")
                && l.ends_with(" 1")),
            "tasks_canceled_total{{reason=disconnect}} is not 1"
        );
        follow_up_completes(&client, &model).await
    }
    .await;
    stack.shutdown().await?;
    result
}
