//! `quiver monitor report`: each model that made predictions in the window, against its
//! training baseline — served, latency, drift per input and of the scores, labels joined,
//! realised metrics next to the estimated ROC AUC and the test split's.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use quiver_batch::monitor::{Labels, observations, registered};
use quiver_models::Registry;
use quiver_monitor::report::{ModelReport, Settings, Window, report};

use crate::{Context, MonitorReportArgs};

/// `quiver monitor run`: the live monitor until Ctrl-C or SIGTERM.
pub(crate) async fn run_command(ctx: &Context) -> anyhow::Result<()> {
    let shutdown = quiver_ingest::Shutdown::default();
    crate::commands::stop_on_signal(shutdown.clone());
    let health = quiver_telemetry::Health::of("monitor");
    if let Some(addr) =
        crate::commands::start_admin(&ctx.config.monitor.admin_listen, &health).await?
    {
        tracing::info!(%addr, "monitor admin listener: /metrics /healthz /readyz");
    }
    let summary = spawn_monitor(ctx, shutdown, health)
        .await
        .context("monitor thread panicked")??;
    println!(
        "monitor stopped: {} predictions, {} labels, {} unreadable, {} evaluations",
        summary.predictions, summary.labels, summary.unreadable, summary.evaluations
    );
    Ok(())
}

/// Runs the live monitor on a blocking thread until `shutdown`.
pub(crate) fn spawn_monitor(
    ctx: &Context,
    shutdown: quiver_ingest::Shutdown,
    health: quiver_telemetry::Health,
) -> tokio::task::JoinHandle<quiver_monitor_run::Result<quiver_monitor_run::MonitorSummary>> {
    let (config, catalog, views) = (ctx.config.clone(), ctx.catalog.clone(), ctx.views.clone());
    tokio::task::spawn_blocking(move || {
        quiver_monitor_run::run(&config, &catalog, &views, &health, &|| {
            shutdown.is_triggered()
        })
    })
}

pub(crate) async fn report_command(ctx: &Context, args: MonitorReportArgs) -> anyhow::Result<()> {
    let window = parse_window(&args.window)?;
    let stores = quiver_batch::open(&ctx.config, &ctx.catalog, &ctx.views).await?;
    let scored = match &args.source {
        Some(name) => ctx
            .catalog
            .source(name)
            .with_context(|| format!("no source `{name}`"))?,
        None => {
            // The sources with predictions in the score store.
            let with_scores: Vec<_> = ctx
                .catalog
                .sources
                .iter()
                .filter(|s| registered(&stores, &format!("scores_{}", s.name)))
                .collect();
            match with_scores.as_slice() {
                [one] => *one,
                [] => {
                    println!("monitor: no prediction in the score store yet");
                    return Ok(());
                }
                several => bail!(
                    "several sources have predictions ({}): name one with --source",
                    several
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let labels = ctx
        .catalog
        .source(&args.labels)
        .with_context(|| format!("no source `{}` to read labels from", args.labels))?;
    let since = chrono::Utc::now().timestamp_micros()
        - i64::try_from(window.as_micros()).context("the window is too long")?;
    let label_spec = Labels {
        source: labels,
        column: args.label_column.as_deref(),
    };
    let registry = Registry::open(&ctx.config.store.dir)?;
    // A shadow decides nothing: its decisions are its scores at its own threshold.
    let shadow = registry
        .deployment()?
        .shadow
        .and_then(|id| registry.card(&id).ok().map(|c| (id, c.test.threshold)));
    let observed = observations(
        &stores,
        scored,
        &label_spec,
        since,
        shadow.as_ref().map(|(id, t)| (id.as_str(), *t)),
    )
    .await?;
    let mut by_model: BTreeMap<(String, String), Vec<quiver_monitor::Observation>> =
        BTreeMap::new();
    for o in observed {
        if args.model.as_ref().is_none_or(|m| *m == o.model_id) {
            by_model
                .entry((o.model_id, o.variant))
                .or_default()
                .push(o.observation);
        }
    }
    let settings = Settings {
        min_rows: args.min_rows,
        lifetime: ctx.views.lifetime_inputs(),
        ..Settings::default()
    };
    let mut reports = Vec::new();
    for ((model, variant), window) in by_model {
        let Ok(card) = registry.card(&model) else {
            eprintln!("monitor: {model} is not in the registry; skipped");
            continue;
        };
        let Some(baseline) = registry.baseline(&model)? else {
            eprintln!(
                "monitor: {model} has no training baseline (trained before baselines were kept); skipped"
            );
            continue;
        };
        reports.push(report(
            &model,
            &variant,
            &baseline,
            &card.test,
            &Window::of(&window),
            &settings,
        ));
    }
    let deployment = registry.deployment()?;
    let deployed_at = |r: &ModelReport| {
        deployment
            .deployed_at(&r.model_id, &r.variant)
            .map(String::from)
    };
    let timeline = deployment.timeline.clone();
    if args.json {
        // Each report with when its model entered its slot.
        let mut out = Vec::with_capacity(reports.len());
        for r in &reports {
            let mut value = serde_json::to_value(r)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("deployed_at".into(), serde_json::json!(deployed_at(r)));
            }
            out.push(value);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if reports.is_empty() {
        let by = args
            .model
            .as_ref()
            .map(|m| format!(" by {m}"))
            .unwrap_or_default();
        println!(
            "monitor: no prediction{by} to report in the last {}",
            args.window
        );
    } else {
        for r in &reports {
            print_report(r, deployed_at(r).as_deref());
        }
    }
    if !args.json && !timeline.is_empty() {
        println!("deployment timeline (latest last):");
        for c in timeline.iter().rev().take(10).rev() {
            let why = if c.reason.is_empty() {
                String::new()
            } else {
                format!(" — {}", c.reason)
            };
            println!("  {} {} {}{why}", c.at, c.action, c.model_id);
        }
    }
    Ok(())
}

/// `30s`, `10m`, `1h`, `2d`.
fn parse_window(text: &str) -> anyhow::Result<std::time::Duration> {
    let us = quiver_core::duration::parse(text)
        .with_context(|| format!("window `{text}`: expected a positive number and s, m, h or d"))?;
    Ok(std::time::Duration::from_micros(us.unsigned_abs()))
}

fn print_report(r: &ModelReport, deployed_at: Option<&str>) {
    println!(
        "{} ({}{}): {} predictions, {} positive",
        r.model_id,
        r.variant,
        deployed_at
            .map(|at| format!(" since {at}"))
            .unwrap_or_default(),
        r.served,
        r.positive_decisions
    );
    if let Some(l) = r.latency {
        println!(
            "  latency event → prediction: p50 {:.1} ms, p99 {:.1} ms",
            l.p50_ms, l.p99_ms
        );
    }
    if r.drift.is_empty() {
        println!(
            "  drift: not measured (fewer than --min-rows predictions, or no input matches the baseline)"
        );
    } else {
        println!(
            "  {:<40} {:<15} {:>10} {:>9}  drifted",
            "feature", "test", "statistic", "threshold"
        );
        for d in &r.drift {
            println!(
                "  {:<40} {:<15} {:>10.4} {:>9}  {}{}",
                d.feature,
                format!("{:?}", d.drift.test),
                d.drift.statistic,
                d.drift.threshold,
                if d.drift.drifted { "yes" } else { "no" },
                if d.in_share {
                    ""
                } else {
                    " (not in the share)"
                }
            );
        }
        if let Some(share) = r.drift_share {
            println!("  drift share: {:.0} %", share * 100.0);
        }
    }
    if let Some(d) = r.score_drift {
        println!(
            "  scores: {:?} {:.4} (threshold {}), {}",
            d.test,
            d.statistic,
            d.threshold,
            if d.drifted { "drifted" } else { "no drift" }
        );
    }
    if let Some(m) = &r.realised {
        println!(
            "  realised at threshold {:.3}: PR AUC {:.4}, log loss {:.4}, precision {:.4}, recall {:.4}",
            m.threshold, m.pr_auc, m.log_loss, m.precision, m.recall
        );
    }
    let auc = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "  ROC AUC: realised {} ({} labels joined, {} pending), estimated {}, test split {:.4}",
        auc(r.realised.as_ref().map(|m| m.roc_auc)),
        r.labels_joined,
        r.labels_pending,
        auc(r.estimated_roc_auc),
        r.test.roc_auc
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_their_unit_and_nonsense_is_refused() {
        assert_eq!(parse_window("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_window("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_window("2d").unwrap().as_secs(), 172_800);
        for bad in ["", "m", "10", "10y", "0m", "-1h", "99999999999999999d"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }
}
