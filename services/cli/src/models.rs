//! `quiver train` and `quiver models ...`.

use anyhow::Context as _;
use quiver_models::train::{self, Kind, Params};
use quiver_models::{Canary, Deployment, Registry};

use crate::{Context, ModelsCommand, TrainArgs};

fn deployment_line(d: &Deployment) -> String {
    format!(
        "production: {}; canary: {}; shadow: {}",
        d.production.as_deref().unwrap_or("none"),
        d.canary.as_ref().map_or("none".to_string(), |c| format!(
            "{} ({:.0} %)",
            c.id,
            100.0 * c.fraction
        )),
        d.shadow.as_deref().unwrap_or("none")
    )
}

/// Trains (a grid of) candidates, registers the best, and promotes it if asked.
pub(crate) fn train(ctx: &Context, args: TrainArgs) -> anyhow::Result<()> {
    let kind = Kind::parse(&args.model)?;
    let dataset = train::load_dataset(&args.dataset)
        .with_context(|| format!("dataset {}", args.dataset.display()))?;
    let registry = Registry::open(&ctx.config.store.dir)?;
    let defaults = Params::default();
    let base = Params {
        alpha: args.alpha.unwrap_or(defaults.alpha),
        trees: args.trees.unwrap_or(defaults.trees),
        max_depth: args.max_depth.unwrap_or(defaults.max_depth),
        min_samples_leaf: defaults.min_samples_leaf,
        seed: args.seed,
    };
    let candidates = if args.grid {
        train::grid(kind, base)
    } else {
        vec![base]
    };
    eprintln!(
        "train: {} train / {} test rows, {} features, {} candidate(s) of {}",
        dataset.train.len(),
        dataset.test.len(),
        dataset.features.len(),
        candidates.len(),
        args.model
    );
    let mut best: Option<quiver_models::Trained> = None;
    for params in candidates {
        let id = registry.new_id(kind, params.seed);
        let trained = train::train(&dataset, kind, params, id)?;
        eprintln!(
            "  {:?}: test ROC AUC {:.4}, PR AUC {:.4} ({:.1} s)",
            params, trained.test.roc_auc, trained.test.pr_auc, trained.seconds
        );
        if best
            .as_ref()
            .is_none_or(|b| trained.test.roc_auc > b.test.roc_auc)
        {
            best = Some(trained);
        }
    }
    let best = best.context("no candidate trained")?;
    let card = registry.register(&best, &dataset.manifest, &args.dataset, "")?;
    let m = &card.test;
    println!(
        "registered {} ({}): test ROC AUC {:.4}, PR AUC {:.4}, log loss {:.4}, threshold {:.3} → \
         precision {:.3}, recall {:.3} (tp {} fp {} tn {} fn {})",
        card.id,
        args.model,
        m.roc_auc,
        m.pr_auc,
        m.log_loss,
        m.threshold,
        m.precision,
        m.recall,
        m.confusion.tp,
        m.confusion.fp,
        m.confusion.tn,
        m.confusion.fn_
    );
    let promote = if args.promote {
        true
    } else if args.promote_if_better {
        // Compare on this test split: the production model scores it too.
        match registry.deployment()?.production {
            None => true,
            Some(current) => {
                let model = registry.model(&current)?;
                let scores = train::score_split(&model, &dataset.features, &dataset.test)?;
                let theirs = quiver_models::metrics::roc_auc(&scores, &dataset.test.labels);
                println!(
                    "production {current} on this test split: ROC AUC {theirs:.4} (candidate {:.4})",
                    m.roc_auc
                );
                m.roc_auc > theirs
            }
        }
    } else {
        false
    };
    if promote {
        let d = registry.promote(&card.id)?;
        println!("promoted; {}", deployment_line(&d));
    }
    Ok(())
}

pub(crate) fn models(ctx: &Context, cmd: ModelsCommand) -> anyhow::Result<()> {
    let registry = Registry::open(&ctx.config.store.dir)?;
    match cmd {
        ModelsCommand::List => {
            let d = registry.deployment()?;
            println!(
                "{:<36} {:<20} {:>8} {:>8} {:>8} {:>7}  status",
                "id", "kind", "rows", "ROC AUC", "PR AUC", "secs"
            );
            for card in registry.cards()? {
                let mut status = Vec::new();
                if d.production.as_deref() == Some(card.id.as_str()) {
                    status.push("production".to_string());
                }
                if let Some(c) = d.canary.as_ref().filter(|c| c.id == card.id) {
                    status.push(format!("canary {:.0} %", 100.0 * c.fraction));
                }
                if d.shadow.as_deref() == Some(card.id.as_str()) {
                    status.push("shadow".to_string());
                }
                if status.is_empty() {
                    status.push("candidate".to_string());
                }
                println!(
                    "{:<36} {:<20} {:>8} {:>8.4} {:>8.4} {:>7.1}  {}",
                    card.id,
                    format!("{:?}", card.kind),
                    card.train.rows + card.test.rows,
                    card.test.roc_auc,
                    card.test.pr_auc,
                    card.train_seconds,
                    status.join(", ")
                );
            }
            println!("{}", deployment_line(&d));
        }
        ModelsCommand::Show { id } => {
            let card = registry.card(&id)?;
            println!("{}", serde_json::to_string_pretty(&card)?);
        }
        ModelsCommand::Promote { id } => {
            println!("{}", deployment_line(&registry.promote(&id)?));
        }
        ModelsCommand::Rollback => {
            println!("{}", deployment_line(&registry.rollback()?));
        }
        ModelsCommand::Canary {
            id,
            fraction,
            clear,
        } => {
            let canary = if clear {
                None
            } else {
                let id = id.context("name the canary model, or --clear")?;
                Some(Canary { id, fraction })
            };
            println!("{}", deployment_line(&registry.set_canary(canary)?));
        }
        ModelsCommand::Shadow { id, clear } => {
            let id = if clear {
                None
            } else {
                Some(id.context("name the shadow model, or --clear")?)
            };
            println!("{}", deployment_line(&registry.set_shadow(id)?));
        }
    }
    Ok(())
}
